"""Writing results: sharded Parquet / CSV / JSON lines tables and the dead-letter files.

Shards are written through Beam's FileSystems (local paths and gs://) under one
naming rule, :func:`shard_prefix`. JSON lines follow beamml's one JSON policy
(:mod:`~beamml.transforms.core.documents`): a non-finite float is the string
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and ``null`` is a missing value.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os

import apache_beam as beam
from apache_beam import coders
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.core.documents import NON_FINITE_TEXT, dumps, json_float
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.objects import in_run_temporary
from beamml.transforms.core.types import is_list_type, is_string_type

__all__ = ['OUTPUT_FORMATS', 'ROW_GROUP_ROWS', 'shard_prefix', 'to_json_lines', 'ShardWriter',
           'WriteTable', 'WriteDeadLetters', 'remove_stale_shards', 'RemoveStaleShards']

OUTPUT_FORMATS = ('parquet', 'csv', 'jsonl')
ROW_GROUP_ROWS = 1 << 20  # rows gathered per Parquet row group (and per write)

_LOG = logging.getLogger('beamml')

_NAN, _INF, _NEG_INF = (json.dumps(json_float(x)) for x in (math.nan, math.inf, -math.inf))


def shard_prefix(prefix: str, name: str | None = None) -> str:
    """The file-name prefix of the shards written at ``prefix`` (the shards add
    ``-SSSSS-of-NNNNN.<format>``).

    A prefix ending in ``/`` is a directory: its shards are ``<prefix><name>``,
    ``<prefix>part`` without a name. Any other prefix starts the file names:
    ``<prefix>``, or ``<prefix>-<name>``. So ``WriteTable('out/')`` writes
    ``out/part-00000-of-00001.parquet`` and ``WriteDeadLetters('out/norms')``
    ``out/norms-errors-00000-of-00001.jsonl``.
    """
    if prefix.endswith('/'):
        return prefix + (name or 'part')
    return f'{prefix}-{name}' if name else prefix


# ----------------------------------------------------------------------------- kernels

def _csv_ready(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """Spread fixed-size list columns into scalar columns ``<name>_0..<name>_{d-1}``."""
    if not any(is_list_type(f.type) for f in table.schema):
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
        elif is_list_type(t):
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            strs = pa.ListArray.from_arrays(col.offsets, pc.cast(col.flatten(), pa.string()))
            arrays.append(pc.binary_join(strs, ';'))
            names.append(name)
        else:
            arrays.append(col)
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _json_text(arr: pa.Array) -> pa.Array:
    """JSON strings of a string column (quoted and escaped)."""
    s = pc.replace_substring(arr, '\\', '\\\\')
    s = pc.replace_substring(s, '"', '\\"')
    s = pc.replace_substring(s, '\n', '\\n')
    s = pc.replace_substring(s, '\r', '\\r')
    s = pc.replace_substring(s, '\t', '\\t')
    out = pc.binary_join_element_wise('"', s, '"', '')
    if pc.any(pc.is_in(arr, value_set=pa.array(list(NON_FINITE_TEXT)))).as_py():
        for word, text in NON_FINITE_TEXT.items():  # text, not a float, to beamml's reader
            out = pc.if_else(pc.fill_null(pc.equal(arr, word), False), text, out)
    return out


def _json_floats(col: pa.Array) -> pa.Array:
    """JSON numbers of a float column; NaN and +-inf as "NaN", "Infinity", "-Infinity"."""
    out = pc.cast(col, pa.string())
    finite = pc.is_finite(col)
    if pc.all(finite).as_py() is False:
        non_finite = pc.if_else(pc.is_nan(col), _NAN,
                                pc.if_else(pc.greater(col, 0), _INF, _NEG_INF))
        out = pc.if_else(finite, out, non_finite)
    return out


def _json_values(col) -> pa.Array:
    """JSON text for each value of a column, vectorised; a null value is ``null``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if is_string_type(t):
        out = _json_text(col)
    elif pa.types.is_floating(t):
        out = _json_floats(col)
    elif pa.types.is_integer(t):
        out = pc.cast(col, pa.string())
    elif pa.types.is_boolean(t):
        out = pc.if_else(col, 'true', 'false')
    elif is_list_type(t):
        values = _json_values(col.flatten())
        offsets = (pa.array(np.arange(len(col) + 1, dtype=np.int32) * t.list_size)
                   if pa.types.is_fixed_size_list(t) else col.offsets)
        lists = pa.ListArray.from_arrays(offsets, values)
        out = pc.binary_join_element_wise('[', pc.binary_join(lists, ','), ']', '')
        out = pc.if_else(col.is_null(), pa.scalar(None, pa.string()), out)
    else:
        out = _json_text(pc.cast(col, pa.string()))
    return pc.fill_null(out, 'null')


def to_json_lines(table: pa.Table | pa.RecordBatch) -> bytes:
    """Serialise a table as JSON lines without a Python loop over rows.

    Non-finite floats are written ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (the
    spelling BigQuery's JSON loader and beamml's readers take for a float), a
    null value ``null``; text spelled like one of those words is escaped so that
    it reads back as text.
    """
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


# ----------------------------------------------------------------------------- Beam

def _is_full(e: BaseException) -> bool:
    """ENOSPC, also as pyarrow re-raises it (an OSError whose text says so)."""
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or
                                       'No space left on device' in str(e))


@contextlib.contextmanager
def _space_for(path: str):
    """A write to ``path``: a full disk (ENOSPC) is one BeammlError naming the file."""
    try:
        yield
    except OSError as e:
        if not _is_full(e):
            raise
        raise BeammlError(f'no space left on device writing {path}') from e


class ShardWriter:
    """Writes one output file; batches are gathered into ~1M-row tables before writing.

    Small batches would make small Parquet row groups, which pyarrow writes several
    times slower and readers read slower. Float columns skip dictionary encoding
    (it never pays for them).
    """

    def __init__(self, fh, output_format: str, schema: pa.Schema | None,
                 rows: int = ROW_GROUP_ROWS, path: str | None = None):
        self.fh, self.format, self.schema = fh, output_format, schema
        self.rows = rows
        self.path = path or getattr(fh, 'name', None) or 'an output file'
        self.writer = None
        self.parts: list = []
        self.n = 0

    def _open(self, schema):
        if self.format == 'parquet':
            dictionary = [f.name for f in schema
                          if not (pa.types.is_floating(f.type) or is_list_type(f.type))]
            self.writer = pq.ParquetWriter(self.fh, schema, use_dictionary=dictionary)
        elif self.format == 'csv':
            self.writer = pcsv.CSVWriter(self.fh, _csv_ready(schema.empty_table()).schema)
        else:
            self.writer = True

    def write(self, batch):
        self.parts.append(batch)
        self.n += batch.num_rows
        if self.n >= self.rows:
            with _space_for(self.path):
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
        with _space_for(self.path):
            self._flush()
            if self.writer is None and self.schema is not None:
                self._open(self.schema)
            if self.writer is not None and self.writer is not True:
                self.writer.close()
            self.fh.close()


def _failed_object(e: BaseException, default: str) -> tuple[str, BaseException]:
    """(the object, the error) of the first failure a batch file operation's BeamIOError
    reports (``{path or (source, destination): error}``, nested for a match of a
    listing); ``default`` and ``e`` when it names none."""
    from apache_beam.io.filesystem import BeamIOError
    where = default
    for _ in range(5):
        details = getattr(e, 'exception_details', None)
        if not isinstance(e, BeamIOError) or not isinstance(details, dict) or not details:
            break
        key, value = next(iter(details.items()))
        where = key[-1] if isinstance(key, tuple) else str(key)
        if not isinstance(value, BaseException):
            break
        e = value
    return where, e


@contextlib.contextmanager
def _storage_answers(prefix: str):
    """A sink's own Cloud Storage calls (the moves of its shards into place): a store that
    did not answer is one BeammlError naming the object, not Beam's BeamIOError."""
    if not prefix.startswith('gs://'):
        yield
        return
    try:
        yield
    except BeammlError:
        raise
    except Exception as e:
        from beamml.transforms.core.objects import _first_line, _storage_error
        if not _storage_error(e, unanswered=True):
            raise
        where, cause = _failed_object(e, prefix + '*')
        raise BeammlError(f'{where}: Cloud Storage did not answer: {_first_line(cause)}') from e


class _EveryShard:
    """Mixin for a FileBasedSink: ``finalize_write`` returns the final name of every
    shard of this run. Beam's returns only the files it renamed, and skips a shard
    whose final file already holds the same bytes (a rerun), which would then look
    like an earlier run's file to :func:`remove_stale_shards`. Cloud Storage not
    answering while the shards are moved is one line naming the object."""

    def pre_finalize(self, init_result, writer_results):
        with _storage_answers(self.file_path_prefix.get()):
            return super().pre_finalize(init_result, writer_results)

    def finalize_write(self, init_result, writer_results, pre_finalize_results):
        with _storage_answers(self.file_path_prefix.get()):
            for _ in super().finalize_write(init_result, writer_results,
                                            pre_finalize_results):
                pass
        n = len(writer_results)
        return [self._get_final_name(i, n) for i in range(n)]


class _TableSink(_EveryShard, filebasedsink.FileBasedSink):
    def __init__(self, prefix, output_format, num_shards, schema, shard_name_template):
        super().__init__(prefix, coder=None, file_name_suffix='.' + output_format,
                         num_shards=num_shards, shard_name_template=shard_name_template,
                         mime_type='application/octet-stream',
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.output_format = output_format
        self.schema = schema

    def open(self, temp_path):
        with _space_for(temp_path):
            fh = super().open(temp_path)
        return ShardWriter(fh, self.output_format, self.schema, path=temp_path)

    def write_record(self, writer, value):
        writer.write(value)

    def close(self, writer):
        writer.close()


def remove_stale_shards(written: list[str], prefix: str, suffixes=OUTPUT_FORMATS) -> list[str]:
    """Delete the ``<prefix>-SSSSS-of-NNNNN.<suffix>`` files that this run did not write
    (an earlier run's, with another shard count or format), so ``<prefix>-*`` holds
    this run's shards only; log what was removed. Returns ``written``, sorted."""
    def same(path):
        return path if '://' in path else os.path.abspath(path)
    keep = {same(p) for p in written}
    patterns = [f'{prefix}-?????-of-?????.{s}' for s in suffixes]
    with _storage_answers(prefix):
        stale = sorted(m.path for r in FileSystems.match(patterns) for m in r.metadata_list
                       if same(m.path) not in keep)
        if stale:
            FileSystems.delete(stale)
    if stale:
        _LOG.info('removed %d shard(s) of an earlier run with the same prefix: %s',
                  len(stale), ', '.join(stale))
    return sorted(written)


class RemoveStaleShards(beam.PTransform):
    """``written_paths | RemoveStaleShards(prefix)``: once every shard is written,
    delete the files of an earlier run under the same prefix
    (:func:`remove_stale_shards`); a PCollection of the sorted list of paths.

    A prefix in a dated run's own temporary folder (:func:`in_run_temporary`, where every
    ``beamml`` command writes) holds nothing of an earlier run: the paths pass through as
    they are, with no gathering and no listing (a combine's three stages fewer per sink)."""

    def __init__(self, prefix: str, suffixes=OUTPUT_FORMATS, label: str | None = None):
        super().__init__(label)
        self.prefix, self.suffixes = prefix, tuple(suffixes)

    def expand(self, written):
        if in_run_temporary(self.prefix):
            return written
        return (written
                | 'ListShards' >> beam.combiners.ToList()
                | 'RemoveStale' >> beam.Map(remove_stale_shards, self.prefix, self.suffixes))


class _LinesSink(_EveryShard, filebasedsink.FileBasedSink):
    """Text lines (bytes) to ``<prefix>-SSSSS-of-NNNNN.jsonl``, one per record."""

    def __init__(self, prefix):
        super().__init__(prefix, coder=coders.BytesCoder(), file_name_suffix='.jsonl',
                         num_shards=0, shard_name_template=None, mime_type='text/plain',
                         compression_type=CompressionTypes.UNCOMPRESSED)

    def open(self, temp_path):
        with _space_for(temp_path):
            return _PathHandle(super().open(temp_path), temp_path)

    def write_encoded_record(self, file_handle, encoded_value):
        with _space_for(file_handle.path):
            file_handle.write(encoded_value + b'\n')

    def close(self, file_handle):
        with _space_for(file_handle.path):
            super().close(file_handle)


class _PathHandle:
    """A shard's file handle that knows its path (for the one-line error of a full disk)."""

    def __init__(self, fh, path: str):
        self.fh, self.path = fh, path

    def write(self, data):
        return self.fh.write(data)

    def flush(self):
        return self.fh.flush()

    def close(self):
        return self.fh.close()


class WriteTable(beam.PTransform):
    """Write RecordBatches (or Tables) as sharded Parquet, CSV or JSON lines files.

    Files are ``<prefix>-SSSSS-of-NNNNN.<format>`` (``<prefix>part-SSSSS-...`` when
    ``prefix`` ends in ``/``, see :func:`shard_prefix`); once they are written, an
    earlier run's shards under the same prefix are deleted (:class:`RemoveStaleShards`),
    so ``<prefix>-*`` never mixes two runs. Written through Beam's
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
        prefix = shard_prefix(self.prefix)
        written = pcoll | 'WriteShards' >> beam.io.Write(_TableSink(
            prefix, self.output_format, self.num_shards, self.schema,
            self.shard_name_template))
        if self.shard_name_template is not None:   # another naming: nothing to compare
            return written
        return written | 'RemoveStaleShards' >> RemoveStaleShards(prefix)


class WriteDeadLetters(beam.PTransform):
    """Write dead-letter dicts as JSON lines to ``<prefix>-errors-SSSSS-of-NNNNN.jsonl``
    (``<prefix>errors-SSSSS-...`` when ``prefix`` ends in ``/``, see :func:`shard_prefix`);
    an earlier run's error shards under that prefix are deleted (:class:`RemoveStaleShards`)."""

    def __init__(self, prefix: str, label: str | None = None):
        super().__init__(label)
        self.prefix = prefix

    @staticmethod
    def glob(prefix: str) -> str:
        """The pattern that matches the files written for ``prefix``."""
        return shard_prefix(prefix, 'errors') + '-*.jsonl'

    def expand(self, errors):
        prefix = shard_prefix(self.prefix, 'errors')
        return (errors
                | 'ToJson' >> beam.Map(lambda d: dumps(d, sort_keys=True).encode('utf-8'))
                | 'WriteErrors' >> beam.io.Write(_LinesSink(prefix))
                | 'RemoveStaleShards' >> RemoveStaleShards(prefix, ('jsonl',)))
