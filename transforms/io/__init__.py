"""Reading and writing point clouds and tables as pyarrow RecordBatches, with dead letters.

Sources yield ``pyarrow.RecordBatch``es, never single rows. ``ReadPoints`` gives
batches with two columns, ``id`` (int64 or string) and ``features``
(``fixed_size_list<float64>[d]``); ``ReadTable`` gives the file's own columns.
Parquet, CSV with a header, JSON lines and ``.npy`` are parsed by pyarrow / numpy
readers a block at a time; Python touches single rows only when a row is bad.

Every refused row becomes a dead letter, a dict::

    {"file": path, "row": data row (0 = first data row), "line": physical line
     (CSV / JSON lines, else null), "reason": why, "record": the raw row}

on the ``errors`` output, and the counters ``beamml/records_read``,
``records_ok`` and ``records_refused`` keep ``read == ok + refused``.

The layout of the data (format, id column and type, feature columns,
dimension) is decided once, before the graph runs, by looking at the head of
the first file (:func:`inspect_input`): a missing input, an empty file or an
unreadable format is an error then, not a stack trace from a worker.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import re
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beamml.transforms.io.types import (INT_RE as _INT_RE, NUMBER_RE as _NUMBER_RE,
                                        SOURCE_COLUMNS, is_list_type as _is_list_type,
                                        is_numeric_type as _is_numeric_type)

_LOG = logging.getLogger('beamml')

__all__ = [
    'BeammlError', 'COUNTER_NAMESPACE', 'ERRORS', 'INPUT_FORMATS', 'OUTPUT_FORMATS',
    'Layout', 'inspect_input', 'match_input', 'read_file_batches', 'to_points',
    'points_batch', 'features_matrix', 'ReadPoints', 'ReadTable', 'WriteTable',
    'WriteDeadLetters', 'read_table_files', 'plan_reads', 'RecordCounters', 'RecordBatchCoder',
    'dead_letter', 'RowBatch', 'RowReasons',
]

COUNTER_NAMESPACE = 'beamml'
ERRORS = 'errors'
INPUT_FORMATS = ('parquet', 'csv', 'jsonl', 'npy')
OUTPUT_FORMATS = ('parquet', 'csv', 'jsonl')
_EXTENSIONS = {
    '.parquet': 'parquet', '.pq': 'parquet', '.csv': 'csv', '.jsonl': 'jsonl',
    '.json': 'jsonl', '.ndjson': 'jsonl', '.npy': 'npy',
}
BATCH_ROWS = 65536
_JSON_CHUNK_BYTES = 16 << 20
_PEEK_BYTES = 1 << 20


class BeammlError(ValueError):
    """An error in the user's input or parameters; its message says what to do.

    A transform names its own parameters (``dimension``), never command-line
    flags; ``parameters`` lists the names the message uses, so that the command
    line can word them as its flags (:meth:`for_cli`: ``--dimension``).
    """

    def __init__(self, message: str = '', *, parameters: Sequence[str] = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)

    def __reduce__(self):  # pickles (from a worker) with its parameters
        return (_beamml_error, (type(self), str(self), self.parameters))

    def for_cli(self) -> str:
        """The message with each named parameter written as its flag."""
        text = str(self)
        for name in self.parameters:
            text = re.sub(rf'(?<![\w-]){re.escape(name)}(?!\w)', '--' + name, text)
        return text


def _beamml_error(cls, message, parameters):
    return cls(message, parameters=parameters)


# ----------------------------------------------------------------------------- layout

@dataclasses.dataclass(frozen=True)
class Layout:
    """How rows of the input become points; decided before the graph is built."""
    input_format: str
    columns: tuple[str, ...]          # columns of the first file ('features' for npy)
    id_column: str | None             # None: ids are '<file name>:<row>'
    id_type: str                      # 'int64' or 'string'
    feature_columns: tuple[str, ...]  # scalar numeric columns, or one list column
    list_features: bool               # True: feature_columns[0] holds a list per row
    dimension: int
    # Column types as read from the head of the first file (None for .npy).
    head_schema: pa.Schema | None = dataclasses.field(default=None, compare=False)

    @property
    def id_arrow_type(self) -> pa.DataType:
        return pa.int64() if self.id_type == 'int64' else pa.string()

    def points_schema(self) -> pa.Schema:
        return pa.schema([('id', self.id_arrow_type),
                          ('features', pa.list_(pa.float64(), self.dimension))])

    def read_columns(self) -> list[str] | None:
        """Columns to read; None (every column) for a table read without features."""
        if not self.feature_columns:
            return None
        cols = list(self.feature_columns)
        if self.id_column:
            cols.insert(0, self.id_column)
        return cols


def _format_of(path: str, input_format: str | None) -> str:
    if input_format:
        if input_format not in INPUT_FORMATS:
            raise BeammlError(f'unknown input format {input_format!r}; one of {INPUT_FORMATS}')
        return input_format
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise BeammlError(
            f'cannot tell the format of {path} from its extension {ext or "(none)"!r}; '
            f'pass --input_format, one of {", ".join(INPUT_FORMATS)}')
    return _EXTENSIONS[ext]


def match_input(file_pattern: str) -> list[tuple[str, int]]:
    """(path, size) of every file matching the pattern, in path order.

    Raises BeammlError when nothing matches or a matched file is empty.
    """
    try:
        results = FileSystems.match([file_pattern])
    except Exception as e:  # BeamIOError: the pattern itself is unreadable
        raise BeammlError(f'cannot list input {file_pattern}: {e}') from e
    files = sorted((m.path, m.size_in_bytes) for r in results for m in r.metadata_list)
    files = [f for f in files if not f[0].endswith('/')]
    if not files:
        raise BeammlError(f'no input file matches {file_pattern}')
    empty = [p for p, size in files if size == 0]
    if empty:
        raise BeammlError(f'input file {empty[0]} is empty (0 bytes)'
                          + (f', and {len(empty) - 1} more' if len(empty) > 1 else ''))
    return files


def _head_table(path: str, fmt: str) -> pa.Table:
    """A table of the first rows of a file (about 1 MB), every column as its reader infers."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if fmt == 'parquet':
            pf = pq.ParquetFile(f)
            if pf.metadata.num_rows == 0:
                return pf.schema_arrow.empty_table()
            return pa.Table.from_batches([next(pf.iter_batches(batch_size=4096))])
        if fmt == 'csv':
            reader = pcsv.open_csv(
                f, read_options=pcsv.ReadOptions(block_size=_PEEK_BYTES, use_threads=False),
                parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: 'skip'))
            try:
                first = reader.read_next_batch()
            except StopIteration:
                return reader.schema.empty_table()
            return pa.Table.from_batches([first])
        if fmt == 'jsonl':
            head = f.read(_PEEK_BYTES)
            if len(head) == _PEEK_BYTES and b'\n' in head:
                head = head[:head.rindex(b'\n') + 1]
            lines = [ln for ln in head.split(b'\n') if ln.strip()]
            parsed = []
            for ln in lines[:2000]:  # the head only, to decide the layout
                try:
                    parsed.append(json.loads(ln))
                except ValueError:
                    continue
            if lines and not parsed:
                raise BeammlError(f'{path}: no line of the first {len(lines)} is a JSON object')
            parsed = [p for p in parsed if isinstance(p, dict)]
            return _json_head_table(parsed)
        raise AssertionError(fmt)


def _json_head_table(rows: list[dict]) -> pa.Table:
    """The layout-deciding table of the first JSON lines: each key typed by its majority."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out = {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        present = [v for v in vals if v is not None]
        n_list = sum(isinstance(v, list) for v in present)
        if present and n_list * 2 >= len(present):
            out[k] = pa.array([v if isinstance(v, list) and all(map(is_num, v)) else None
                               for v in vals], pa.list_(pa.float64()))
        elif present and all(isinstance(v, int) and not isinstance(v, bool) or
                             (isinstance(v, str) and not v.strip()) for v in present) and \
                any(isinstance(v, int) for v in present):
            vals = [v if isinstance(v, int) else None for v in vals]  # '' ids are refused later
            out[k] = pa.array(vals, pa.int64())
        elif present and sum(map(is_num, present)) * 2 >= len(present):
            out[k] = pa.array([float(v) if is_num(v) else None for v in vals], pa.float64())
        else:
            out[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    return pa.table(out) if out else pa.table({})


def _numeric_share(arr: pa.ChunkedArray | pa.Array) -> float:
    """Share of the non-null values of a string column that parse as numbers."""
    arr = pc.drop_null(arr)
    if len(arr) == 0:
        return 0.0
    return pc.sum(pc.match_substring_regex(arr, _NUMBER_RE, ignore_case=True)).as_py() / len(arr)


def _mode_length(arr) -> int | None:
    lengths = pc.drop_null(pc.list_value_length(arr)).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return None
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[np.argmax(counts)])


def inspect_input(file_pattern: str, *, input_format: str | None = None,
                  id_column: str | None = None,
                  feature_columns: Sequence[str] | None = None,
                  dimension: int | None = None,
                  need_features: bool = True) -> tuple[list[str], Layout]:
    """Match the input and decide its :class:`Layout` from the head of the first file.

    Returns the matched paths (in path order) and the layout. Every problem a
    user can fix is a :class:`BeammlError` naming the file and what exists.
    """
    files = match_input(file_pattern)
    paths = [p for p, _ in files]
    fmt = _format_of(paths[0], input_format)
    for p in paths[1:]:
        if input_format is None and _format_of(p, None) != fmt:
            raise BeammlError(f'{file_pattern} mixes formats ({paths[0]} is {fmt}, {p} is '
                              f'{_format_of(p, None)}); read them separately')
    if dimension is not None and dimension < 1:
        raise BeammlError(f'--dimension must be >= 1, got {dimension}')

    if fmt == 'npy':
        if id_column:
            raise BeammlError('.npy input has no columns; drop --id_column '
                              '(ids are <file name>:<row>)')
        shape, _, _ = _npy_header(paths[0])
        d = shape[1] if len(shape) == 2 else None
        if d is None:
            raise BeammlError(f'{paths[0]}: expected a 2-D (n, d) array, got shape {shape}')
        if dimension is not None and dimension != d:
            raise BeammlError(f'{paths[0]} has {d} features, --dimension says {dimension}')
        return paths, Layout('npy', ('features',), None, 'string', ('features',), True, d)

    try:
        head = _head_table(paths[0], fmt)
    except BeammlError:
        raise
    except Exception as e:
        raise BeammlError(f'{paths[0]} is not a readable {fmt} file: {e}') from e
    columns = tuple(head.column_names)
    if not columns:
        raise BeammlError(f'{paths[0]} has no columns')
    schema = head.schema

    if id_column is None and 'id' in columns:
        id_column = 'id'
    if id_column is not None and id_column not in columns:
        raise BeammlError(f'{paths[0]} has no id column {id_column!r}; '
                          f'its columns are {", ".join(columns)}')
    id_type = 'string'
    if id_column is not None and pa.types.is_integer(schema.field(id_column).type):
        id_type = 'int64'

    if not need_features:
        return paths, Layout(fmt, columns, id_column, id_type, (), False, 0, schema)

    if feature_columns:
        feature_columns = tuple(c.strip() for c in feature_columns)
        missing = [c for c in feature_columns if c not in columns]
        if missing:
            raise BeammlError(f'{paths[0]} has no column {", ".join(map(repr, missing))}; '
                              f'its columns are {", ".join(columns)}')
        list_cols = [c for c in feature_columns if _is_list_type(schema.field(c).type)]
        if list_cols and len(feature_columns) > 1:
            raise BeammlError(f'feature column {list_cols[0]!r} holds lists; give it alone '
                              'or give scalar columns')
        list_features = bool(list_cols)
    else:
        candidates = [c for c in columns if c != id_column]
        numeric = []
        for c in candidates:
            t = schema.field(c).type
            if _is_numeric_type(t):
                numeric.append(c)
            elif (pa.types.is_string(t) or pa.types.is_large_string(t)) and \
                    _numeric_share(head.column(c)) >= 0.5:
                numeric.append(c)  # numbers with a few bad values: bad rows are refused later
        lists = [c for c in candidates if _is_list_type(schema.field(c).type)]
        if 'features' in lists:
            feature_columns, list_features = ('features',), True
        elif numeric:
            feature_columns, list_features = tuple(numeric), False
        elif len(lists) == 1:
            feature_columns, list_features = (lists[0],), True
        else:
            raise BeammlError(f'{paths[0]} has no numeric column to use as features; its '
                              f'columns are {", ".join(columns)}; pass --feature_columns')

    if list_features:
        t = schema.field(feature_columns[0]).type
        d = t.list_size if pa.types.is_fixed_size_list(t) else _mode_length(
            head.column(feature_columns[0]))
    else:
        d = len(feature_columns)
    if dimension is not None:
        if not list_features and dimension != d:
            raise BeammlError(f'{len(feature_columns)} feature columns '
                              f'({", ".join(feature_columns)}) but --dimension is {dimension}')
        d = dimension
    if not d:
        raise BeammlError(f'cannot tell the dimension of {paths[0]}: its first rows have no '
                          f'features; pass --dimension')
    return paths, Layout(fmt, columns, id_column, id_type, tuple(feature_columns),
                         list_features, int(d), schema)


# ----------------------------------------------------------------------------- readers

def _npy_header(path: str):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return _read_npy_header(f, path)


def _read_npy_header(f, path):
    try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
    except Exception as e:
        raise BeammlError(f'{path} is not a readable .npy file: {e}') from e
    if dtype.kind not in 'iufb':
        raise BeammlError(f'{path}: .npy dtype {dtype} is not numeric')
    return shape, fortran, dtype


class RowBatch:
    """A block of rows read from one file: the table and each row's place in the file."""
    __slots__ = ('table', 'rows', 'lines')

    def __init__(self, table: pa.RecordBatch, rows: np.ndarray, lines: np.ndarray | None):
        self.table, self.rows, self.lines = table, rows, lines


def _dead(path, row, line, reason, record) -> dict:
    return {'file': path, 'row': None if row is None else int(row),
            'line': None if line is None else int(line), 'reason': reason,
            'record': _jsonable(record)}


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return v.decode('utf-8', 'replace')
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


SPLIT_ROWS = 1 << 20  # rows per work item when a Parquet or .npy file is split


def plan_reads(path: str, layout: Layout,
               split_rows: int | None = None) -> list[tuple[str, tuple | None]]:
    """Work items ``(path, part)`` for one file: a large Parquet file is split at row
    groups and a large ``.npy`` file at rows (about ``split_rows`` rows each), so
    several workers read it; CSV and JSON lines files are read whole (``part=None``).
    """
    fmt = layout.input_format
    split_rows = split_rows or SPLIT_ROWS
    if fmt not in ('parquet', 'npy'):
        return [(path, None)]
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if fmt == 'npy':
            shape, fortran, _ = _read_npy_header(f, path)
            n = shape[0] if shape else 0
            if fortran or n <= split_rows:
                return [(path, None)]
            return [(path, (s, min(s + split_rows, n))) for s in range(0, n, split_rows)]
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:
            raise BeammlError(f'{path} is not a readable parquet file: {e}') from e
    items, first_group, first_row, rows = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= split_rows or g == meta.num_row_groups - 1:
            items.append((path, (first_row, first_row + rows, first_group, g + 1)))
            first_group, first_row, rows = g + 1, first_row + rows, 0
    return items if len(items) > 1 else [(path, None)]


def read_file_batches(path: str, layout: Layout, batch_rows: int = BATCH_ROWS,
                      part: tuple | None = None) -> Iterator[RowBatch | dict]:
    """Yield RowBatches (and dead-letter dicts for unparseable rows) of one file.

    ``part`` (from :func:`plan_reads`) restricts the read to a range of rows. The
    clean path is pyarrow's / numpy's readers only. A CSV row with the wrong
    number of fields and a JSON line that does not parse come out as dead letters.
    """
    fmt = layout.input_format
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if fmt == 'parquet':
            yield from _read_parquet(f, path, layout, batch_rows, part)
        elif fmt == 'csv':
            yield from _read_csv(f, path, layout, batch_rows)
        elif fmt == 'jsonl':
            yield from _read_jsonl(f, path, layout)
        elif fmt == 'npy':
            yield from _read_npy(f, path, batch_rows, part)
        else:
            raise AssertionError(fmt)


def _read_parquet(f, path, layout, batch_rows, part=None):
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:
        raise BeammlError(f'{path} is not a readable parquet file: {e}') from e
    names = pf.schema_arrow.names
    cols = layout.read_columns()
    missing = [c for c in (cols or []) if c not in names]
    if missing:
        raise BeammlError(f'{path} has no column {", ".join(map(repr, missing))}; its '
                          f'columns are {", ".join(names)}')
    start, groups = 0, None
    if part is not None:
        start, _, g0, g1 = part
        groups = range(g0, g1)
    for b in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols,
                             use_threads=False):
        yield RowBatch(b, np.arange(start, start + b.num_rows, dtype=np.int64), None)
        start += b.num_rows


def _csv_types(layout: Layout, as_strings: bool) -> dict[str, pa.DataType]:
    if as_strings and not layout.feature_columns:
        return {c: pa.string() for c in layout.columns}  # a table: every column as text
    types = {}
    if layout.id_column:
        types[layout.id_column] = pa.string() if as_strings else layout.id_arrow_type
    if not layout.list_features:
        for c in layout.feature_columns:
            types[c] = pa.string() if as_strings else pa.float64()
    return types


def _read_csv(f, path, layout, batch_rows):
    progress = [2]  # physical line of the next row not yet handed out
    try:
        yield from _read_csv_typed(f, path, layout, as_strings=False, progress=progress)
    except _CsvConversionError:
        # A value that is not a number (or an id that is not an integer) somewhere:
        # read the file again with those columns as text, from where the typed read
        # stopped; to_points refuses the bad rows.
        f.seek(0)
        yield from _read_csv_typed(f, path, layout, as_strings=True, progress=progress)


class _CsvConversionError(Exception):
    pass


def _read_csv_typed(f, path, layout, as_strings, progress):
    """Stream a CSV file; rows and dead letters before line ``progress[0]`` are skipped."""
    resume = progress[0]
    bad_lines: list[int] = []
    pending: list[tuple[int, str, str]] = []

    def on_invalid(row):
        bad_lines.append(row.number)
        pending.append((row.number, row.text,
                        f'expected {row.expected_columns} fields, got {row.actual_columns}'))
        return 'skip'

    def conversion_error(e):
        if 'conversion error' in str(e) and not as_strings:
            return _CsvConversionError(str(e))
        return BeammlError(f'{path} is not a readable CSV file: {e}')

    try:
        reader = pcsv.open_csv(
            f,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=8 << 20),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types=_csv_types(layout, as_strings),
                include_columns=layout.read_columns() or [],
                null_values=[''], strings_can_be_null=True,
                quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        if 'include' in str(e) or 'not exist' in str(e).lower():
            raise BeammlError(f'{path}: {e}; the columns were taken from the first file '
                              f'({", ".join(layout.columns)})') from e
        raise conversion_error(e) from e

    next_line = 2  # line 1 is the header
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as e:
            raise conversion_error(e) from e
        n = batch.num_rows
        # Lines of this batch's rows: the next n line numbers the parser did not refuse.
        bad = np.asarray(bad_lines, dtype=np.int64)
        span = np.arange(next_line, next_line + n + len(bad), dtype=np.int64)
        lines = span[~np.isin(span, bad)][:n] if len(bad) else span[:n]
        if n:
            next_line = int(lines[-1]) + 1
        bad_lines[:] = [b for b in bad_lines if b >= next_line]
        while pending and pending[0][0] < next_line:
            ln, text, reason = pending.pop(0)
            if ln >= resume:
                yield _dead(path, ln - 2, ln, reason, text)
        if n and lines[-1] >= resume:
            keep = int(np.searchsorted(lines, resume))
            b = batch.slice(keep) if keep else batch
            progress[0] = next_line
            yield RowBatch(b, lines[keep:] - 2, lines[keep:])
    for ln, text, reason in pending:
        if ln >= resume:
            yield _dead(path, ln - 2, ln, reason, text)


def _read_jsonl(f, path, layout):
    # Features have a fixed type (ints read as floats); every other field, the id
    # included, is inferred per block, so that a string id among integer ids costs
    # that line only (the block is bisected), and a table read keeps every field.
    if layout.list_features:
        fields = [(layout.feature_columns[0], pa.list_(pa.float64()))]
    else:
        fields = [(c, pa.float64()) for c in layout.feature_columns]
    parse = pjson.ParseOptions(explicit_schema=pa.schema(fields),
                               unexpected_field_behavior='infer')
    line0 = 1   # physical line number of the chunk's first line
    row0 = 0    # data rows (non-blank lines) before the chunk
    rest = b''
    while True:
        block = f.read(_JSON_CHUNK_BYTES)
        data = rest + block
        if not block:
            chunk, rest = data, b''
        else:
            cut = data.rfind(b'\n')
            if cut < 0:
                rest = data
                continue
            chunk, rest = data[:cut + 1], data[cut + 1:]
        if chunk:
            yield from _parse_json_chunk(chunk, path, parse, line0, row0)
            n_lines = chunk.count(b'\n') + (0 if chunk.endswith(b'\n') else 1)
            row0 += n_lines - _blank_lines(chunk)
            line0 += n_lines
        if not block:
            break


def _blank_lines(chunk: bytes) -> int:
    if b'\n\n' not in chunk and not chunk.startswith(b'\n') and b'\r\n\r\n' not in chunk \
            and b'\n ' not in chunk and b'\n\t' not in chunk:
        return 0
    return sum(1 for ln in chunk.split(b'\n')[:-1 if chunk.endswith(b'\n') else None]
               if not ln.strip())


def _parse_json_chunk(chunk, path, parse, line0, row0):
    blanks = _blank_lines(chunk)
    try:
        table = pjson.read_json(io.BytesIO(chunk), parse_options=parse,
                                read_options=pjson.ReadOptions(use_threads=False))
    except pa.ArrowInvalid:
        table = None
    if table is not None and blanks == 0:
        rows = np.arange(row0, row0 + table.num_rows, dtype=np.int64)
        for b in table.to_batches(max_chunksize=BATCH_ROWS):
            n = b.num_rows
            yield RowBatch(b, rows[:n], rows[:n] - row0 + line0)
            rows = rows[n:]
        return
    # Slow path: a line that does not parse, or blank lines. Split into lines and
    # bisect with pyarrow, so only the bad lines are handled one by one.
    lines = chunk.split(b'\n')
    if chunk.endswith(b'\n'):
        lines.pop()
    idx = [i for i, ln in enumerate(lines) if ln.strip()]
    data_row = {i: row0 + k for k, i in enumerate(idx)}
    yield from _bisect_json(lines, idx, data_row, path, parse, line0)


def _bisect_json(lines, idx, data_row, path, parse, line0):
    if not idx:
        return
    payload = b'\n'.join(lines[i] for i in idx) + b'\n'
    try:
        table = pjson.read_json(io.BytesIO(payload), parse_options=parse,
                                read_options=pjson.ReadOptions(use_threads=False))
        err = None
    except pa.ArrowInvalid as e:
        table, err = None, e
    if table is not None and table.num_rows == len(idx):
        rows = np.asarray([data_row[i] for i in idx], dtype=np.int64)
        lns = np.asarray(idx, dtype=np.int64) + line0
        for b in table.to_batches(max_chunksize=BATCH_ROWS):
            n = b.num_rows
            yield RowBatch(b, rows[:n], lns[:n])
            rows, lns = rows[n:], lns[n:]
        return
    if len(idx) == 1:
        i = idx[0]
        reason = str(err) if err is not None else 'not one JSON object'
        reason = re.sub(r'\s*in row \d+$', '', reason)
        yield _dead(path, data_row[i], i + line0, f'invalid JSON line: {reason}',
                    lines[i].decode('utf-8', 'replace'))
        return
    mid = len(idx) // 2
    yield from _bisect_json(lines, idx[:mid], data_row, path, parse, line0)
    yield from _bisect_json(lines, idx[mid:], data_row, path, parse, line0)


def _read_npy(f, path, batch_rows, part=None):
    shape, fortran, dtype = _read_npy_header(f, path)
    if len(shape) != 2:
        raise BeammlError(f'{path}: expected a 2-D (n, d) array, got shape {shape}')
    n, d = shape
    if fortran:
        arr = np.frombuffer(f.read(), dtype=dtype, count=n * d).reshape((n, d), order='F')
        chunks = ((s, np.ascontiguousarray(arr[s:s + batch_rows])) for s in range(0, n, batch_rows))
    else:
        row_bytes = d * dtype.itemsize
        lo, hi = part if part is not None else (0, n)
        if lo:
            f.seek(f.tell() + lo * row_bytes)

        def gen():
            for s in range(lo, hi, batch_rows):
                m = min(batch_rows, hi - s)
                buf = f.read(m * row_bytes)
                if len(buf) < m * row_bytes:
                    raise BeammlError(f'{path}: truncated .npy file (expected {n} rows)')
                yield s, np.frombuffer(buf, dtype=dtype).reshape(m, d)
        chunks = gen()
    for s, block in chunks:
        X = np.ascontiguousarray(block, dtype=np.float64)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d)
        b = pa.RecordBatch.from_arrays([feats], names=['features'])
        yield RowBatch(b, np.arange(s, s + len(X), dtype=np.int64), None)


# ----------------------------------------------------------------------------- to points

def _string_to_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad) of a string column: bad where a present value is not a number."""
    ok = pc.fill_null(pc.match_substring_regex(arr, _NUMBER_RE, ignore_case=True), True)
    okn = ok.to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string()))
    vals = pc.cast(cleaned, pa.float64())
    return vals, ~okn


def _column_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, non-numeric mask) of one scalar column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    bad = np.zeros(len(arr), dtype=bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr, bad = _string_to_float(arr)
    elif pa.types.is_null(arr.type):
        arr = pa.nulls(len(arr), pa.float64())
    elif not _is_numeric_type(arr.type) and not pa.types.is_boolean(arr.type):
        return (np.full(len(arr), np.nan), np.zeros(len(arr), bool), np.ones(len(arr), bool))
    missing = arr.is_null().to_numpy(zero_copy_only=False) & ~bad
    values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    return values, missing, bad


def features_matrix(batch: pa.RecordBatch, column: str = 'features') -> np.ndarray:
    """Zero-copy (n, d) float64 view of a fixed_size_list<float64> column."""
    arr = batch.column(column)
    d = arr.type.list_size
    if arr.offset == 0 and arr.values.offset == 0 and arr.null_count == 0:
        flat = arr.values
    else:
        flat = arr.flatten()
    return flat.to_numpy(zero_copy_only=False).reshape(len(arr), d)


def points_batch(ids: pa.Array, X: np.ndarray, **columns) -> pa.RecordBatch:
    """A points RecordBatch: id, features (fixed_size_list<float64>[d]) and extra columns."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    arrays, names = [ids, feats], ['id', 'features']
    for k, v in columns.items():
        arrays.append(v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v))
        names.append(k)
    return pa.RecordBatch.from_arrays(arrays, names=names)


class RowReasons:
    """Why each row of a batch is refused: a small int code per row, first reason wins."""
    __slots__ = ('code', 'texts')

    def __init__(self, n: int):
        self.code = np.zeros(n, dtype=np.int16)
        self.texts: list[str | None] = [None]

    def mark(self, mask: np.ndarray, text: str) -> None:
        """Refuse the rows of ``mask`` not refused yet, for ``text``."""
        m = mask & (self.code == 0)
        if m.any():
            self.texts.append(text)
            self.code[m] = len(self.texts) - 1

    @property
    def refused(self) -> np.ndarray:
        return self.code != 0

    def dead_letters(self, table, path: str | None, rows=None, lines=None) -> list[dict]:
        """Dead letters of the refused rows of ``table``; ``rows`` / ``lines`` give each
        row's place in its file (None: unknown)."""
        bad_idx = np.flatnonzero(self.code)
        if not len(bad_idx):
            return []
        records = table.take(pa.array(bad_idx)).to_pylist()
        return [_dead(path, None if rows is None else rows[i],
                      None if lines is None else lines[i], self.texts[self.code[i]], rec)
                for i, rec in zip(bad_idx, records)]  # a loop over bad rows only


def _ids(rb: RowBatch, layout: Layout, path: str, why: RowReasons) -> pa.Array:
    """The ids of a RowBatch as ``layout.id_type``; bad ids are marked in ``why``."""
    n = rb.table.num_rows
    if not layout.id_column:
        name = posixpath.basename(path.rstrip('/')) + ':'
        return pc.binary_join_element_wise(
            pa.scalar(name), pc.cast(pa.array(rb.rows), pa.string()), '')
    if layout.id_column not in rb.table.column_names:  # a JSON block without the key
        why.mark(np.ones(n, bool), 'missing id')
        return pa.nulls(n, layout.id_arrow_type)
    arr = rb.table.column(layout.id_column)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type):
        arr = pa.nulls(n, layout.id_arrow_type)
    if arr.null_count:
        why.mark(arr.is_null().to_numpy(zero_copy_only=False), 'missing id')
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        why.mark(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ''), False)
                 .to_numpy(zero_copy_only=False), 'empty id')
        if layout.id_type == 'int64':
            ok = pc.fill_null(pc.match_substring_regex(arr, _INT_RE), True)
            why.mark(~ok.to_numpy(zero_copy_only=False), 'id is not an integer')
            arr = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(arr),
                                     pa.scalar(None, pa.string())), pa.int64())
        return arr
    if layout.id_type == 'string':
        return pc.cast(arr, pa.string())
    if not pa.types.is_integer(arr.type):
        why.mark(np.ones(n, bool), 'id is not an integer')
        return pa.nulls(n, pa.int64())
    return pc.cast(arr, pa.int64())


def _list_features(arr, col: str, d: int, why: RowReasons) -> np.ndarray:
    n = len(arr)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not _is_list_type(arr.type):
        why.mark(np.ones(n, bool), f'column {col!r} does not hold lists')
        return np.zeros((n, d))
    values = pc.list_flatten(arr)
    if arr.null_count == 0 and values.null_count == 0 and len(values) == n * d and (
            pa.types.is_fixed_size_list(arr.type) or
            bool(pc.all(pc.equal(pc.list_value_length(arr), d)).as_py() if n else True)):
        vals, _, bad = _column_values(values)
        if not bad.any():
            return vals.reshape(n, d)  # the clean path: one reshape
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    vals, missing, bad = _column_values(values)
    why.mark(lengths < 0, f'missing value in {col!r}')
    row_bad = np.zeros(n, bool)
    row_bad[parents[bad]] = True
    why.mark(row_bad, f'value in {col!r} is not a number')
    row_missing = np.zeros(n, bool)
    row_missing[parents[missing]] = True
    why.mark(row_missing, f'missing value in {col!r}')
    for L in np.unique(lengths[(lengths != d) & (lengths >= 0)]):
        why.mark(lengths == L, f'dimension {int(L)}, expected {d}')
    X = np.zeros((n, d))
    good = lengths == d
    if good.any():
        X[good] = vals[good[parents]].reshape(-1, d)
    return X


def to_points(rb: RowBatch, layout: Layout, path: str, allow_nan: bool = False
              ) -> tuple[pa.RecordBatch | None, list[dict]]:
    """Turn one RowBatch into a points batch and the dead letters of its bad rows.

    A row is refused with the first reason that applies: a missing or empty id,
    an id that is not an integer (in an integer id column), a value that is not
    a number, a missing value, a dimension other than the layout's, NaN or inf
    (unless ``allow_nan``).
    """
    t = rb.table
    n = t.num_rows
    d = layout.dimension
    why = RowReasons(n)
    ids = _ids(rb, layout, path, why)
    if layout.input_format == 'npy':
        X = features_matrix(t)
    elif layout.list_features:
        col = layout.feature_columns[0]
        arr = (t.column(col) if col in t.column_names
               else pa.nulls(n, pa.list_(pa.float64())))
        X = _list_features(arr, col, d, why)
    else:
        X = np.empty((n, d), dtype=np.float64)
        for j, c in enumerate(layout.feature_columns):
            arr = t.column(c) if c in t.column_names else pa.nulls(n, pa.float64())
            vals, missing, bad = _column_values(arr)
            X[:, j] = vals
            if bad.any():
                why.mark(bad, f'value in {c!r} is not a number')
            if missing.any():
                why.mark(missing, f'missing value in {c!r}')
    if not allow_nan:
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            nan = np.isnan(X).any(axis=1)
            why.mark(~finite & nan, 'NaN feature value')
            why.mark(~finite, 'infinite feature value')
    dead = why.dead_letters(rb.table, path, rb.rows, rb.lines)
    if dead:
        keep = np.flatnonzero(~why.refused)
        if len(keep) == 0:
            return None, dead
        ids = ids.take(pa.array(keep))
        X = X[keep]
    return points_batch(pc.cast(ids, layout.id_arrow_type), X), dead




def _table_checks(rb: RowBatch, layout: Layout, path: str, source_columns: bool):
    """ReadTable's check: the id column, when there is one, holds no missing or empty id.

    With ``source_columns`` the batch gets ``_file`` (dictionary-encoded) and
    ``_row`` (data row in the file), so later steps can write dead letters too.
    """
    t, rows, dead = rb.table, rb.rows, []
    if layout.id_column:
        why = RowReasons(t.num_rows)
        _ids(rb, layout, path, why)
        dead = why.dead_letters(rb.table, path, rb.rows, rb.lines)
        if dead:
            keep = np.flatnonzero(~why.refused)
            if not len(keep):
                return None, dead
            t, rows = t.take(pa.array(keep)), rows[keep]
    if source_columns:
        n = t.num_rows
        t = t.append_column('_file', pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([path])))
        t = t.append_column('_row', pa.array(rows, pa.int64()))
    return t, dead


# ----------------------------------------------------------------------------- Beam

class RecordBatchCoder(beam.coders.Coder):
    """A RecordBatch as one Arrow IPC stream; its size estimate is ``nbytes``.

    Beam estimates the size of sampled elements of every PCollection; with the
    default (pickling) coder that copies whole batches. PCollections typed
    ``pyarrow.RecordBatch`` (the sources' batches among them) use this coder,
    registered for that type on import.
    """

    def encode(self, batch: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> pa.RecordBatch:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()

    def estimate_size(self, batch) -> int:
        return int(batch.nbytes)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.RecordBatch

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)



class RecordCounters:
    """The Beam counters behind ``records_read == records_ok + records_refused``.

    Sources count every row they read as read and as ok or refused. A later step
    that refuses rows the source accepted calls :meth:`refuse_accepted`, which
    moves them from ok to refused, so the identity holds at the end of the run.
    """

    def __init__(self):
        self.read = Metrics.counter(COUNTER_NAMESPACE, 'records_read')
        self.ok = Metrics.counter(COUNTER_NAMESPACE, 'records_ok')
        self.refused = Metrics.counter(COUNTER_NAMESPACE, 'records_refused')

    def refuse_accepted(self, n: int) -> None:
        if n:
            self.ok.dec(n)
            self.refused.inc(n)


def dead_letter(path: str | None, row: int | None, line: int | None, reason: str,
                record: Any) -> dict:
    """A dead-letter record (the one shape every source and step uses)."""
    return _dead(path, row, line, reason, record)


class _ReadFileFn(beam.DoFn):
    """Read whole files (given by path) into batches; refused rows go to ERRORS."""

    def __init__(self, layout: Layout, points: bool, allow_nan: bool, batch_rows: int,
                 source_columns: bool = False):
        self.layout, self.points = layout, points
        self.allow_nan, self.batch_rows = allow_nan, batch_rows
        self.source_columns = source_columns
        counters = RecordCounters()
        self.read, self.ok, self.refused = counters.read, counters.ok, counters.refused

    def process(self, work: str | tuple):
        path, part = (work, None) if isinstance(work, str) else work
        n_ok = n_refused = 0
        for item in read_file_batches(path, self.layout, self.batch_rows, part):
            if isinstance(item, dict):
                self.read.inc()
                self.refused.inc()
                n_refused += 1
                yield beam.pvalue.TaggedOutput(ERRORS, item)
                continue
            self.read.inc(item.table.num_rows)
            if self.points:
                out, dead = to_points(item, self.layout, path, self.allow_nan)
            else:
                out, dead = _table_checks(item, self.layout, path, self.source_columns)
            if dead:
                self.refused.inc(len(dead))
                n_refused += len(dead)
                for dl in dead:
                    yield beam.pvalue.TaggedOutput(ERRORS, dl)
            if out is not None and out.num_rows:
                self.ok.inc(out.num_rows)
                n_ok += out.num_rows
                yield out
        where = f' rows {part[0]}..{part[1] - 1}' if part else ''
        _LOG.info('read %s%s: %d rows accepted, %d refused', path, where, n_ok, n_refused)


class _ReadBase(beam.PTransform):
    _points = True

    def __init__(self, file_pattern: str, *, input_format: str | None = None,
                 id_column: str | None = None, feature_columns: Sequence[str] | None = None,
                 dimension: int | None = None, allow_nan: bool = False,
                 batch_rows: int = BATCH_ROWS, source_columns: bool = False,
                 label: str | None = None):
        super().__init__(label)
        self.file_pattern = file_pattern
        self.source_columns = source_columns
        self.allow_nan = allow_nan
        self.batch_rows = batch_rows
        # Decided now, before the graph runs: errors a user can fix surface here.
        self.paths, self.layout = inspect_input(
            file_pattern, input_format=input_format, id_column=id_column,
            feature_columns=feature_columns, dimension=dimension, need_features=self._points)

    @property
    def schema(self) -> pa.Schema:
        return self.layout.points_schema()

    def expand(self, pbegin):
        files = (pbegin
                 | 'MatchedFiles' >> beam.Create(self.paths)
                 | 'PlanReads' >> beam.FlatMap(plan_reads, self.layout)
                 | 'SpreadFiles' >> beam.Reshuffle())
        return files | 'ParseFiles' >> beam.ParDo(
            _ReadFileFn(self.layout, self._points, self.allow_nan, self.batch_rows,
                        self.source_columns)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='batches')


class ReadPoints(_ReadBase):
    """Read a point cloud into RecordBatches ``(id, features)`` plus dead letters.

    ``p | ReadPoints('data/*.csv')`` returns a tuple-like result: ``result.batches``
    (or ``result['batches']``) holds the RecordBatches, ``result.errors`` the
    dead-letter dicts. The files are matched and the first one inspected when the
    transform is constructed (see :func:`inspect_input`); ``.layout`` and ``.schema``
    tell what was decided.
    """
    _points = True


class ReadTable(_ReadBase):
    """Read tabular files into RecordBatches of their own columns plus dead letters.

    Only structural problems are refused (a CSV row with the wrong number of
    fields, a JSON line that does not parse) and, when an id column is named or
    present, rows whose id is missing or empty. ``source_columns=True`` appends
    ``_file`` and ``_row`` so later steps can refuse rows with their origin (and
    must then call ``RecordCounters().refuse_accepted(n)``).
    """
    _points = False

    @property
    def schema(self):
        raise AttributeError('ReadTable keeps the files\' own columns')


def read_table_files(file_pattern: str, **kwargs) -> tuple[pa.Table, list[dict]]:
    """Read a whole (small) point cloud in this process: (points table, dead letters).

    For loading side data such as initial centres; the same parsing and checks as
    ReadPoints, without Beam.
    """
    allow_nan = kwargs.pop('allow_nan', False)
    paths, layout = inspect_input(file_pattern, **kwargs)
    batches, dead = [], []
    for path in paths:
        for item in read_file_batches(path, layout):
            if isinstance(item, dict):
                dead.append(item)
                continue
            out, dl = to_points(item, layout, path, allow_nan)
            dead.extend(dl)
            if out is not None:
                batches.append(out)
    return pa.Table.from_batches(batches, schema=layout.points_schema()), dead


# ----------------------------------------------------------------------------- writing

def _csv_ready(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """Spread fixed-size list columns into scalar columns ``<name>_0..<name>_{d-1}``."""
    if not any(_is_list_type(f.type) for f in table.schema):
        return table
    arrays, names = [], []
    for name, col in zip(table.schema.names, table.columns):
        t = col.type
        if pa.types.is_fixed_size_list(t):
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), t.list_size)
            for j in range(t.list_size):
                arrays.append(pa.array(flat[:, j]))
                names.append(f'{name}_{j}')
        elif _is_list_type(t):
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            strs = pa.ListArray.from_arrays(col.offsets, pc.cast(col.flatten(), pa.string()))
            arrays.append(pc.binary_join(strs, ';'))
            names.append(name)
        else:
            arrays.append(col)
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _json_escape(arr: pa.Array) -> pa.Array:
    s = pc.replace_substring(arr, '\\', '\\\\')
    s = pc.replace_substring(s, '"', '\\"')
    s = pc.replace_substring(s, '\n', '\\n')
    s = pc.replace_substring(s, '\r', '\\r')
    s = pc.replace_substring(s, '\t', '\\t')
    return pc.binary_join_element_wise('"', s, '"', '')


def _json_values(col) -> pa.Array:
    """JSON text for each value of a column, vectorised; NaN / inf become null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = _json_escape(col)
    elif pa.types.is_floating(t):
        finite = pc.is_finite(col)
        out = pc.if_else(finite, pc.cast(col, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_integer(t):
        out = pc.cast(col, pa.string())
    elif pa.types.is_boolean(t):
        out = pc.if_else(col, 'true', 'false')
    elif _is_list_type(t):
        values = _json_values(col.flatten())
        values = pc.fill_null(values, 'null')
        offsets = (pa.array(np.arange(len(col) + 1, dtype=np.int32) * t.list_size)
                   if pa.types.is_fixed_size_list(t) else col.offsets)
        lists = pa.ListArray.from_arrays(offsets, values)
        out = pc.binary_join_element_wise('[', pc.binary_join(lists, ','), ']', '')
        out = pc.if_else(col.is_null(), pa.scalar(None, pa.string()), out)
    else:
        out = _json_escape(pc.cast(col, pa.string()))
    return pc.fill_null(out, 'null')


def to_json_lines(table: pa.Table | pa.RecordBatch) -> bytes:
    """Serialise a table as JSON lines without a Python loop over rows."""
    if table.num_rows == 0:
        return b''
    parts = []
    for i, (name, col) in enumerate(zip(table.schema.names, table.columns)):
        key = json.dumps(name)
        parts.append(('{' if i == 0 else ', ') + key + ': ')
        parts.append(_json_values(col))
    parts.append('}\n')
    lines = pc.cast(pc.binary_join_element_wise(*parts, ''), pa.large_string())
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    # The lines' character data, end to end, is the file's text: take it whole.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return lines.buffers()[2].to_pybytes()[start:end]


ROW_GROUP_ROWS = 1 << 20


class _ShardWriter:
    """Writes one output file; batches are gathered into ~1M-row tables before writing.

    Small batches would make small Parquet row groups, which pyarrow writes several
    times slower and readers read slower. Float columns skip dictionary encoding
    (it never pays for them).
    """

    def __init__(self, fh, output_format: str, schema: pa.Schema | None,
                 rows: int = ROW_GROUP_ROWS):
        self.fh, self.format, self.schema = fh, output_format, schema
        self.rows = rows
        self.writer = None
        self.parts: list = []
        self.n = 0

    def _open(self, schema):
        if self.format == 'parquet':
            dictionary = [f.name for f in schema
                          if not (pa.types.is_floating(f.type) or _is_list_type(f.type))]
            self.writer = pq.ParquetWriter(self.fh, schema, use_dictionary=dictionary)
        elif self.format == 'csv':
            self.writer = pcsv.CSVWriter(self.fh, _csv_ready(schema.empty_table()).schema)
        else:
            self.writer = True

    def write(self, batch):
        self.parts.append(batch)
        self.n += batch.num_rows
        if self.n >= self.rows:
            self._flush()

    def _flush(self):
        if not self.parts:
            return
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                  for b in self.parts]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        self.parts, self.n = [], 0
        if self.writer is None:
            self._open(table.schema)
        if self.format == 'parquet':
            self.writer.write_table(table)
        elif self.format == 'csv':
            self.writer.write_table(_csv_ready(table))
        else:
            self.fh.write(to_json_lines(table))

    def close(self):
        self._flush()
        if self.writer is None and self.schema is not None:
            self._open(self.schema)
        if self.writer is not None and self.writer is not True:
            self.writer.close()
        self.fh.close()


class _TableSink(filebasedsink.FileBasedSink):
    def __init__(self, prefix, output_format, num_shards, schema, shard_name_template):
        super().__init__(prefix, coder=None, file_name_suffix='.' + output_format,
                         num_shards=num_shards, shard_name_template=shard_name_template,
                         mime_type='application/octet-stream',
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.output_format = output_format
        self.schema = schema

    def open(self, temp_path):
        return _ShardWriter(super().open(temp_path), self.output_format, self.schema)

    def write_record(self, writer, value):
        writer.write(value)

    def close(self, writer):
        writer.close()


class WriteTable(beam.PTransform):
    """Write RecordBatches (or Tables) as sharded Parquet, CSV or JSON lines files.

    Files are ``<prefix>-SSSSS-of-NNNNN.<format>``, written through Beam's
    FileSystems (local paths and gs://). CSV spreads fixed-size list columns into
    ``<name>_0 .. <name>_{d-1}``; JSON lines keeps them as arrays. ``schema`` lets
    an empty output still carry its columns.
    """

    def __init__(self, prefix: str, output_format: str = 'parquet', *, num_shards: int = 0,
                 schema: pa.Schema | None = None, shard_name_template: str | None = None,
                 label: str | None = None):
        super().__init__(label)
        if output_format not in OUTPUT_FORMATS:
            raise BeammlError(f'unknown output format {output_format!r}; one of {OUTPUT_FORMATS}')
        self.prefix, self.output_format = prefix, output_format
        self.num_shards, self.schema = num_shards, schema
        self.shard_name_template = shard_name_template

    def expand(self, pcoll):
        return pcoll | 'WriteShards' >> beam.io.Write(_TableSink(
            self.prefix, self.output_format, self.num_shards, self.schema,
            self.shard_name_template))


class WriteDeadLetters(beam.PTransform):
    """Write dead-letter dicts as JSON lines to ``<prefix>-errors-SSSSS-of-NNNNN.jsonl``."""

    def __init__(self, prefix: str, label: str | None = None):
        super().__init__(label)
        self.prefix = prefix

    @staticmethod
    def glob(prefix: str) -> str:
        return f'{prefix}-errors-*.jsonl'

    def expand(self, errors):
        return (errors
                | 'ToJson' >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
                | 'WriteErrors' >> beam.io.WriteToText(
                    self.prefix + '-errors', file_name_suffix='.jsonl'))
