"""Reading JSON lines files into RowBatches; a line that does not parse is a dead letter.

A file is parsed by pyarrow in chunks of about 16 MB. Feature fields have a fixed
type (ints read as floats); every other field, the id included, is inferred per
chunk, so that a string id among integer ids costs that line only (the chunk is
bisected) and a table read keeps every field.

The JSON strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` in a value
position are read as the floats they name: they are how beamml (and BigQuery)
write non-finite floats, so beamml's JSON lines output reads back unchanged.
The id field is the exception: an id ``"NaN"`` stays a string, and so does such a
value of a column of text in a table read (the first file's head holds text there).
Text is text: where pyarrow would read a string that looks like a date as a
timestamp, the chunk is read again with that field as text (and a list whose first
items are null, which pyarrow's inference gets wrong, with its type given). A UTF-8
byte order mark at the start of the file is not part of the first line, and a line
may be of any length (pyarrow's block is the whole chunk).
"""
from __future__ import annotations

import io
import json
import re
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.json as pjson

from beamml.transforms.core.documents import NON_FINITE, NON_FINITE_TEXT
from beamml.transforms.core.errors import BeammlError, dead_letter
from beamml.transforms.io.layout import HEAD_BYTES, Layout
from beamml.transforms.io.rows import BATCH_ROWS, RowBatch
from beamml.transforms.core.types import is_string_type, value_type

__all__ = ['jsonl_head', 'read_jsonl', 'BOM']

_CHUNK_BYTES = 16 << 20
BOM = b'\xef\xbb\xbf'   # the UTF-8 byte order mark
_HEAD_LINES = 2000  # lines of the head that decide the layout
_WORDS = b'|'.join(re.escape(w.encode()) for w in NON_FINITE)
# A non-finite word as a value: after ':', '[' or ',' and before ',', ']' or '}' (a key
# is followed by ':'); group 1 keeps what precedes it, group 2 is the word.
_VALUE_WORD = re.compile(rb'([:\[,][ \t]*)"(' + _WORDS + rb')"(?=[ \t]*[,\]}])')
_AS_TEXT = {w.encode(): t.encode() for w, t in NON_FINITE_TEXT.items()}


def _non_finite_reader(text_keys: Sequence[str]) -> Callable[[bytes], bytes]:
    """A function that rewrites the non-finite words of a chunk of JSON lines as the
    bare tokens ``NaN``, ``Infinity``, ``-Infinity`` (which pyarrow's and Python's JSON
    parsers read as floats), except as the value of a key of ``text_keys`` (the id; in
    a table read, the columns of text), which is kept as text (written as
    :data:`~beamml.transforms.core.documents.NON_FINITE_TEXT`).

    A chunk without such a word (the usual case) is returned as it is, after a
    substring search; else regular-expression substitutions, C loops over the
    chunk, rewrite it. Lines and their order are kept.
    """
    text_word = None
    if text_keys:
        keys = b'|'.join(re.escape(json.dumps(k, ensure_ascii=False).encode())
                         for k in text_keys)
        text_word = re.compile(rb'((?:' + keys + rb')[ \t]*:[ \t]*)"(' + _WORDS + rb')"')

    def rewrite(chunk: bytes) -> bytes:
        if b'NaN"' not in chunk and b'Infinity"' not in chunk:
            return chunk
        if text_word is not None:  # a call per text value spelled like a float only
            chunk = text_word.sub(lambda m: m.group(1) + _AS_TEXT[m.group(2)], chunk)
        return _VALUE_WORD.sub(rb'\1\2', chunk)
    return rewrite


def _read_options(payload: bytes) -> pjson.ReadOptions:
    """One pyarrow block for the whole payload: a line of any length parses (pyarrow's
    default block of 1 MB refuses a longer line as 'straddling')."""
    return pjson.ReadOptions(use_threads=False,
                             block_size=min(max(len(payload) + 1, 1 << 20), 2 ** 31 - 1))


def read_head_bytes(f) -> bytes:
    """The first :data:`HEAD_BYTES` of the open file ``f`` (more when the first line is
    longer: it is read whole), cut after the last whole line, without a byte order mark."""
    head = f.read(HEAD_BYTES)
    eof = len(head) < HEAD_BYTES
    while not eof and b'\n' not in head:
        more = f.read(HEAD_BYTES)
        eof = len(more) < HEAD_BYTES
        head += more
    if head.startswith(BOM):
        head = head[len(BOM):]
    if not eof and b'\n' in head:
        head = head[:head.rindex(b'\n') + 1]
    return head


def jsonl_head(f, path: str, id_column: str | None) -> pa.Table:
    """The first lines (about :data:`HEAD_BYTES`) of the open file ``f`` as a table,
    each key typed by the majority of its values (see :func:`_json_head_table`)."""
    head = read_head_bytes(f)
    head = _non_finite_reader([id_column] if id_column else [])(head)
    lines = [ln for ln in head.split(b'\n') if ln.strip()]
    parsed = []
    for ln in lines[:_HEAD_LINES]:  # the head only, to decide the layout
        try:
            parsed.append(json.loads(ln))
        except ValueError:
            continue
    if lines and not parsed:
        raise BeammlError(f'{path}: no line of the first {len(lines)} is a JSON object')
    return _json_head_table([p for p in parsed if isinstance(p, dict)], id_column)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _head_ids(vals: list) -> pa.Array:
    """The id column of the head: int64 when its ids are numbers (an integral float is
    an integer; nulls, blank strings, booleans, lists and objects aside: they are
    refused whatever the type), else strings when one is a string."""
    texts = [v for v in vals if isinstance(v, str) and v.strip()]
    if texts or not any(map(_is_num, vals)):
        return pa.array([v if isinstance(v, str) else None for v in vals], pa.string())
    return pa.array([int(v) if _is_num(v) and v == v and abs(v) != float('inf') and
                     int(v) == v and -2 ** 63 <= v < 2 ** 63 else None for v in vals],
                    pa.int64())


def _json_head_table(rows: list[dict], id_column: str | None = None) -> pa.Table:
    """The layout-deciding table of the first JSON lines: each key typed by its majority
    (lists, objects, booleans, integers, numbers, else text); the id as :func:`_head_ids`."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))

    out = {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        present = [v for v in vals if v is not None]
        n_list = sum(isinstance(v, list) for v in present)
        if k == id_column:
            out[k] = _head_ids(vals)
        elif present and n_list * 2 >= len(present):
            out[k] = pa.array([v if isinstance(v, list) and all(map(_is_num, v)) else None
                               for v in vals], pa.list_(pa.float64()))
        elif present and sum(isinstance(v, dict) for v in present) * 2 >= len(present):
            out[k] = pa.nulls(len(vals), pa.struct([]))   # objects: the kind is what counts
        elif present and all(isinstance(v, bool) for v in present):
            out[k] = pa.array(vals, pa.bool_())
        elif present and all(isinstance(v, int) and not isinstance(v, bool) or
                             (isinstance(v, str) and not v.strip()) for v in present) and \
                any(isinstance(v, int) for v in present):
            # '' ids, and ints beyond int64 (pyarrow reads them as floats), are refused later
            vals = [v if isinstance(v, int) and -2 ** 63 <= v < 2 ** 63 else None for v in vals]
            out[k] = pa.array(vals, pa.int64())
        elif present and sum(map(_is_num, present)) * 2 >= len(present):
            out[k] = pa.array([float(v) if _is_num(v) else None for v in vals], pa.float64())
        else:
            out[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    return pa.table(out) if out else pa.table({})


def read_jsonl(f, path: str, layout: Layout) -> Iterator[RowBatch | dict]:
    """RowBatches of every field and dead letters of the lines that do not parse."""
    if layout.list_features:
        fields = [(layout.feature_columns[0], pa.list_(pa.float64()))]
    else:
        fields = [(c, pa.float64()) for c in layout.feature_columns]
    parse = pjson.ParseOptions(explicit_schema=pa.schema(fields),
                               unexpected_field_behavior='infer')
    text = [layout.id_column] if layout.id_column else []
    if not layout.feature_columns and layout.head_schema is not None:   # a table read
        text += [f.name for f in layout.head_schema if f.name != layout.id_column and
                 is_string_type(value_type(f.type))]
    numbers = _non_finite_reader(text)
    line0 = 1   # physical line number of the chunk's first line
    row0 = 0    # data rows (non-blank lines) before the chunk
    rest = b''
    first = True
    while True:
        block = f.read(_CHUNK_BYTES)
        if first and block.startswith(BOM):   # not part of the first line
            block = block[len(BOM):]
        first = False
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
            yield from _parse_json_chunk(chunk, numbers(chunk), path, parse, line0, row0)
            n_lines = chunk.count(b'\n') + (0 if chunk.endswith(b'\n') else 1)
            row0 += n_lines - _blank_lines(chunk)
            line0 += n_lines
        if not block:
            break


_BLANK_LINE = re.compile(rb'^[ \t\r]*\n', re.M)


def _blank_lines(chunk: bytes) -> int:
    """The number of lines of ``chunk`` that hold only whitespace (searched in C first)."""
    last = chunk.rsplit(b'\n', 1)[-1]
    if not _BLANK_LINE.search(chunk) and (last.strip() or not last):
        return 0
    return sum(1 for ln in chunk.split(b'\n')[:-1 if chunk.endswith(b'\n') else None]
               if not ln.strip())


def _lines(chunk: bytes) -> list[bytes]:
    lines = chunk.split(b'\n')
    if chunk.endswith(b'\n'):
        lines.pop()
    return lines


# A line that is not blank and does not start with '{': not a JSON object. pyarrow
# must never see one: with an explicit schema it reads a `null` line as a row of
# nulls, and a payload whose first line is `null` crashes the process (SIGSEGV).
_NOT_OBJECT = re.compile(rb'^[ \t\r]*[^{ \t\r\n]', re.M)


def _suspect(chunk: bytes) -> bool:
    """Whether a chunk needs the line-by-line path: a non-object line, or bytes that
    are not UTF-8 (both searched in C; the usual chunk has neither). pyarrow must see
    neither: on bytes that are not UTF-8 it either raises UnicodeDecodeError or
    keeps them in a string column that breaks later compute functions."""
    if _NOT_OBJECT.search(chunk):
        return True
    try:
        chunk.decode('utf-8')
    except UnicodeDecodeError:
        return True
    return False


def _line_problem(line: bytes) -> str | None:
    """Why a non-blank line cannot go to pyarrow, or None."""
    if not line.lstrip(b' \t\r').startswith(b'{'):
        return 'invalid JSON line: line is not a JSON object'
    try:
        line.decode('utf-8')
    except UnicodeDecodeError as e:
        return f'invalid JSON line: invalid UTF-8 at byte {e.start}'
    return None


class _Lines:
    """:class:`~beamml.transforms.io.rows.RawRecords` of JSON lines: row ``i`` is line
    ``index[i]`` of ``data`` (a chunk as read), found only when a row is refused."""
    __slots__ = ('data', 'index', 'spans')

    def __init__(self, data: bytes, index: np.ndarray, spans: list | None = None):
        self.data, self.index = data, index
        self.spans = spans if spans is not None else []   # shared by the batches of a chunk

    def take(self, selection) -> '_Lines':
        return _Lines(self.data, self.index[selection], self.spans)

    def records(self, positions: np.ndarray) -> list | None:
        if not self.spans:
            ends = np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == 10)
            if not len(ends) or ends[-1] != len(self.data) - 1:
                ends = np.append(ends, len(self.data))
            self.spans[:] = [np.concatenate([[0], ends[:-1] + 1]), ends]
        starts, ends = self.spans
        out = []
        for k in self.index[positions].tolist():   # the refused rows only
            try:
                out.append(json.loads(self.data[starts[k]:ends[k]]))
            except (ValueError, RecursionError):
                return None
        return out


def _read_json(payload: bytes, parse: pjson.ParseOptions) -> pa.Table:
    """pyarrow's parse of whole JSON lines, read again with some fields' types given when
    its inference is wrong: a field read as a timestamp (text that looks like one) is
    read as the text it is; a list whose first items are null comes out of pyarrow 25's
    inference invalid (items lost, a crash later), and is read with the type inferred."""
    table = pjson.read_json(io.BytesIO(payload), parse_options=parse,
                            read_options=_read_options(payload))
    given = set(parse.explicit_schema.names)
    fix = [pa.field(f.name, pa.string()) for f in table.schema
           if pa.types.is_temporal(f.type) and f.name not in given]
    try:
        table.validate()
    except pa.ArrowInvalid:
        fix += [f for f in table.schema if pa.types.is_nested(f.type) and f.name not in given]
    if fix:
        schema = parse.explicit_schema
        for field in fix:
            schema = schema.append(field)
        table = pjson.read_json(
            io.BytesIO(payload), read_options=_read_options(payload),
            parse_options=pjson.ParseOptions(explicit_schema=schema,
                                             unexpected_field_behavior='infer'))
        table.validate()   # else ArrowInvalid: the caller reads the lines apart
    return table


def _parse_json_chunk(raw, chunk, path, parse, line0, row0):
    """Parse ``chunk`` (``raw`` with its non-finite words as numbers): whole when it
    parses and has no blank line, else by bisection; dead letters quote ``raw``."""
    blanks = _blank_lines(chunk)
    table = None
    if not _suspect(chunk):
        try:
            table = _read_json(chunk, parse)
        except pa.ArrowInvalid:
            table = None
    if table is not None and blanks == 0:
        rows = np.arange(row0, row0 + table.num_rows, dtype=np.int64)
        raws = _Lines(raw, rows - row0)
        for b in table.to_batches(max_chunksize=BATCH_ROWS):
            n = b.num_rows
            yield RowBatch(b, rows[:n], rows[:n] - row0 + line0, raws.take(slice(0, n)))
            rows, raws = rows[n:], raws.take(slice(n, None))
        return
    # Slow path: a line that does not parse, or blank lines. Split into lines and
    # bisect with pyarrow, so only the bad lines are handled one by one.
    lines = _lines(chunk)
    raw_lines = lines if raw is chunk else _lines(raw)
    idx = [i for i, ln in enumerate(lines) if ln.strip()]
    data_row = {i: row0 + k for k, i in enumerate(idx)}
    good, dead = [], []
    for i in idx:   # Python per line only in a chunk that has a bad line
        problem = _line_problem(lines[i])
        if problem is None:
            good.append(i)
        else:
            dead.append(dead_letter(path, data_row[i], i + line0, problem, raw_lines[i]))
    raws = _Lines(raw, np.zeros(0, dtype=np.int64))
    items = dead + list(_bisect_json(lines, raw_lines, good, data_row, path, parse, line0,
                                     raws))
    # in the file's order, as the bisection alone gives them
    yield from sorted(items, key=lambda it: it['line'] if isinstance(it, dict)
                      else int(it.lines[0]))


def _bisect_json(lines, raw_lines, idx, data_row, path, parse, line0, raws):
    if not idx:
        return
    payload = b'\n'.join(lines[i] for i in idx) + b'\n'
    try:
        table = _read_json(payload, parse)
        err = None
    except pa.ArrowInvalid as e:
        table, err = None, e
    if table is not None and table.num_rows == len(idx):
        rows = np.asarray([data_row[i] for i in idx], dtype=np.int64)
        lns = np.asarray(idx, dtype=np.int64)
        for b in table.to_batches(max_chunksize=BATCH_ROWS):
            n = b.num_rows
            yield RowBatch(b, rows[:n], lns[:n] + line0, _Lines(raws.data, lns[:n], raws.spans))
            rows, lns = rows[n:], lns[n:]
        return
    if len(idx) == 1:
        i = idx[0]
        reason = str(err) if err is not None else 'not one JSON object'
        reason = re.sub(r'\s*in row \d+$', '', reason)
        yield dead_letter(path, data_row[i], i + line0, f'invalid JSON line: {reason}',
                          raw_lines[i])
        return
    mid = len(idx) // 2
    yield from _bisect_json(lines, raw_lines, idx[:mid], data_row, path, parse, line0, raws)
    yield from _bisect_json(lines, raw_lines, idx[mid:], data_row, path, parse, line0, raws)
