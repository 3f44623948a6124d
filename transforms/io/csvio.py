"""Reading CSV files with a header into RowBatches; malformed rows become dead letters.

A file is read in blocks of whole records (about 8 MB). numpy frames each block
first: newline positions and quote parity (a cumulative count) give where each
record starts and its physical line (1-based, the header is line 1; blank lines
and newlines inside quoted fields count), and one UTF-8 decode of the block, in
C, finds the records that are not valid UTF-8: each is a dead letter ("invalid
UTF-8 at byte N" of the record), and pyarrow never sees it. pyarrow then parses
the block with the layout's types; when a value does not convert (a word in a
number column, an id that is not an integer, any ``ArrowInvalid``), that block
is parsed again as text, and :func:`~beamml.transforms.io.rows.to_points`
refuses the bad rows.
"""
from __future__ import annotations

import codecs
import io
import re
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from beamml.transforms.core.errors import BeammlError, dead_letter
from beamml.transforms.io.layout import HEAD_BYTES, Layout, printable
from beamml.transforms.io.casts import int64_or_null
from beamml.transforms.io.rows import BATCH_ROWS, RawRecords, RowBatch
from beamml.transforms.core.types import INT_RE, is_string_type, value_type

__all__ = ['csv_head', 'read_csv']

_BLOCK_BYTES = 8 << 20
_NL, _CR, _QUOTE, _DELIM = 10, 13, 34, 44
_CONTROL = re.compile(rb'[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]')


# ----------------------------------------------------------------------------- framing

class _Frame(NamedTuple):
    """The non-empty records of a chunk of bytes (offsets into it)."""
    starts: np.ndarray   # first byte of each record
    ends: np.ndarray     # end of its content (its line end excluded)
    lines: np.ndarray    # line ends before it in the chunk (0: on the chunk's first line)
    cut: int             # bytes [cut:] are an incomplete record, carried to the next chunk
    n_lines: int         # line ends in [0, cut)


def _quote_toggles(arr: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Positions of the quotes that open or close a quoted field, as pyarrow reads them.

    The clean path is parity: every quote toggles. That is exact unless a quote
    stands inside an unquoted field (``ab"c``, ``"a"b"``), which pyarrow keeps as a
    character; then a loop over the quotes (not the bytes) follows pyarrow's rules.
    """
    if not len(q):
        return q
    prev = arr[np.maximum(q - 1, 0)]
    field_start = (q == 0) | (prev == _DELIM) | (prev == _NL) | (prev == _CR)
    outside = np.arange(len(q)) % 2 == 0
    if not (outside & ~field_start & ~((q > 0) & (prev == _QUOTE))).any():
        return q
    out, inside, skip, n = [], False, -1, len(arr)
    for p in q.tolist():   # a loop over the quotes of an unusual block only
        if p == skip:
            continue
        if inside:
            if p + 1 < n and arr[p + 1] == _QUOTE:
                skip = p + 1            # "" inside a quoted field: one quote character
            else:
                inside = False
                out.append(p)
        elif p == 0 or arr[p - 1] in (_DELIM, _NL, _CR):
            inside = True
            out.append(p)
    return np.asarray(out, dtype=np.int64)


def _frame(data: bytes, final: bool) -> _Frame:
    """Frame ``data`` into records: line ends are ``\\n``, ``\\r\\n`` and a lone ``\\r``
    (as pyarrow reads them); one outside quotes ends a record; an empty record (a
    blank line) is not a row. With ``final`` the last record may lack its line end."""
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    nl = np.flatnonzero(arr == _NL)
    ends = nl
    has_cr = b'\r' in data
    if has_cr:   # one-byte searches (memchr) spare the clean path numpy passes
        cr = np.flatnonzero(arr == _CR)
        after = arr[np.minimum(cr + 1, n - 1)]
        cr = cr[np.where(cr + 1 < n, after != _NL, final)]
        if len(cr):
            ends = np.union1d(nl, cr)
    term = ends
    if b'"' in data:
        toggles = _quote_toggles(arr, np.flatnonzero(arr == _QUOTE))
        if len(toggles):
            term = ends[np.searchsorted(toggles, ends) % 2 == 0]
    if final:
        cut = n
        last = [n] if not len(term) or term[-1] + 1 < n else []
        stops = np.concatenate([term, np.asarray(last, dtype=np.int64)])
    else:
        cut = int(term[-1]) + 1 if len(term) else 0
        stops = term
    starts = np.concatenate([[0], stops[:-1] + 1]).astype(np.int64)[:len(stops)]
    content_end = stops
    if has_cr:
        content_end = stops.copy()
        crlf = (stops < n) & (stops > starts)
        crlf[crlf] = (arr[stops[crlf]] == _NL) & (arr[stops[crlf] - 1] == _CR)
        content_end[crlf] -= 1
    # line ends before each record: its index when every line end ends a record
    lines = (np.arange(len(stops), dtype=np.int64) if len(term) == len(ends)
             else np.searchsorted(ends, starts))
    keep = content_end > starts
    if not keep.all():
        starts, content_end, lines = starts[keep], content_end[keep], lines[keep]
    n_lines = int(np.searchsorted(ends, cut))
    return _Frame(starts, content_end, lines, cut, n_lines)


def _invalid_utf8(data: bytes, starts: np.ndarray, stop: int) -> list[tuple[int, int]]:
    """(record index, byte in the record) of each record of ``data[starts[0]:stop]``
    that is not UTF-8: one decode in C, and one more per bad record."""
    bad, pos, view = [], int(starts[0]) if len(starts) else stop, memoryview(data)
    while pos < stop:
        try:
            codecs.utf_8_decode(view[pos:stop], 'strict', True)
            break
        except UnicodeDecodeError as e:
            at = pos + e.start
            i = int(np.searchsorted(starts, at, side='right')) - 1
            bad.append((i, at - int(starts[i])))
            pos = int(starts[i + 1]) if i + 1 < len(starts) else stop
    return bad


def _check_header(path: str, raw: bytes, partial: bool = False) -> None:
    """A BeammlError when the header record is not text (the file is binary);
    ``partial``: ``raw`` is the start of a header, maybe cut inside a character."""
    try:
        codecs.utf_8_decode(raw, 'strict', not partial)
    except UnicodeDecodeError as e:
        raise BeammlError(f'{path} is not a text CSV file (invalid UTF-8 in its header at '
                          f'byte {e.start})') from None
    if b'\x00' in raw:
        raise BeammlError(f'{path} is not a text CSV file (NUL bytes in its header)')
    m = _CONTROL.search(raw)
    if m:
        raise BeammlError(f'{path} is not a text CSV file (control byte 0x{m.group()[0]:02x} '
                          f'in its header at byte {m.start()})')


class _Block(NamedTuple):
    """Whole records of a file, ready for pyarrow: the header, then the good records."""
    payload: bytes
    rows: np.ndarray     # data row (0-based, in the file) of each good record
    lines: np.ndarray    # physical line (1-based) of each good record
    dead: list           # dead letters of the records that are not UTF-8
    starts: np.ndarray   # where each good record starts in the payload
    ends: np.ndarray     # and ends (its line end excluded)
    header: bytes = b''


def _blocks(f, path: str, block_bytes: int, limit: int | None = None
            ) -> Iterator[tuple[list[str], _Block]]:
    """(header names, block) for each block of whole records of the open file ``f``
    (one block of no rows for a file of a header only); the header is checked
    first. ``limit``: stop after the records of about that many bytes (read past the
    header: a header longer than ``limit`` still gets rows)."""
    header = names = None
    line_base = row_base = read = head_at = 0
    rest = b''
    empty = np.zeros(0, dtype=np.int64)
    yielded = False
    while True:
        chunk = f.read(block_bytes)
        read += len(chunk)
        final = not chunk
        data = rest + chunk if rest else chunk
        if not data:
            break
        fr = _frame(data, final)
        if header is None and len(fr.starts) == 0 and not final:
            _check_header(path, data[:HEAD_BYTES], partial=True)   # a binary file fails early
            rest = data
            continue
        starts, ends, lines = fr.starts, fr.ends, fr.lines + line_base + 1
        if header is None and len(starts):
            header = data[starts[0]:ends[0]]
            _check_header(path, header)
            names = _header_names(path, header)
            starts, ends, lines = starts[1:], ends[1:], lines[1:]
            head_at = read
        rest = data[fr.cut:]
        line_base += fr.n_lines
        n = len(starts)
        rows = np.arange(row_base, row_base + n, dtype=np.int64)
        row_base += n
        if n:
            bad = _invalid_utf8(data, starts, fr.cut)
            dead = [dead_letter(path, rows[i], lines[i], f'invalid UTF-8 at byte {b}',
                                data[starts[i]:ends[i]]) for i, b in bad]
            # where each record lands in the payload: after the header, less the bad
            # records cut out before it
            shift = len(header) + 1 - int(starts[0])
            if bad:
                cuts = [i for i, _ in bad]
                pieces, pos = [], int(starts[0])
                removed = np.zeros(n, dtype=np.int64)
                for i in cuts:   # a loop over the bad records only
                    pieces.append(data[pos:starts[i]])
                    pos = int(starts[i + 1]) if i + 1 < n else fr.cut
                    removed[i] = pos - int(starts[i])
                pieces.append(data[pos:fr.cut])
                body = b''.join(pieces)
                shift = shift - (np.cumsum(removed) - removed)
                good = np.ones(n, dtype=bool)
                good[cuts] = False
                rows, lines = rows[good], lines[good]
                starts, ends, shift = starts[good], ends[good], shift[good]
            else:
                body = data[starts[0]:fr.cut]
            yielded = True
            yield names, _Block(header + b'\n' + body, rows, lines, dead, starts + shift,
                                ends + shift, header)
        if final or (limit is not None and header is not None and read >= limit and
                     (yielded or read - head_at >= limit)):
            break
    if header is None:
        raise BeammlError(f'{path} is not a text CSV file (no header)')
    if not yielded:
        yield names, _Block(header + b'\n', empty, empty, [], empty, empty, header)


def _read_options(payload: bytes) -> pcsv.ReadOptions:
    """One pyarrow block for the whole payload, however long a record (a header of
    12 MB is read, not 'empty')."""
    return pcsv.ReadOptions(use_threads=False, block_size=max(len(payload) + 1, 1 << 16))


def _header_names(path: str, header: bytes) -> list[str]:
    try:
        return pcsv.read_csv(io.BytesIO(header + b'\n'),
                             read_options=_read_options(header + b'\n')).column_names
    except pa.ArrowInvalid as e:
        raise BeammlError(f'{path}: cannot read its header: {printable(str(e))}') from e


# ----------------------------------------------------------------------------- parsing

def _parse(path: str, block: _Block, types: dict, include: list[str] | None
           ) -> tuple[pa.Table, list[int], list[str], list[str]]:
    """pyarrow's parse of a block: (table, bad record indexes, their texts, reasons)."""
    bad, texts, reasons = [], [], []

    def on_invalid(row):
        bad.append(row.number - 2)   # the header is record 1
        texts.append(row.text)
        reasons.append(f'expected {row.expected_columns} fields, got {row.actual_columns}')
        return 'skip'

    table = pcsv.read_csv(
        io.BytesIO(block.payload), read_options=_read_options(block.payload),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid,
                                        newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=types, include_columns=include or [],
            null_values=[''], strings_can_be_null=True, quoted_strings_can_be_null=False))
    if table.num_rows + len(bad) != len(block.rows) or any(b < 0 for b in bad):
        raise BeammlError(f'{path}: cannot tell the rows of this CSV file apart '
                          f'({table.num_rows + len(bad)} parsed, {len(block.rows)} framed)')
    return table, bad, texts, reasons


def _head_types(layout: Layout) -> dict:
    """A table's column types, for every file: those of the first file's head (a column
    empty there is text), so that one column keeps one type across the input."""
    types = {}
    for field in layout.head_schema or ():
        t = value_type(field.type)
        types[field.name] = pa.string() if pa.types.is_null(t) else t
    if layout.id_column:
        types[layout.id_column] = layout.id_arrow_type
    return types


def _types(layout: Layout, names: list[str], as_strings: bool) -> dict:
    if not layout.feature_columns:   # a table: every column
        if as_strings:
            return {c: pa.string() for c in names}
        return _head_types(layout)
    types = {}
    if layout.id_column:
        types[layout.id_column] = pa.string() if as_strings else layout.id_arrow_type
    if not layout.list_features:
        for c in layout.feature_columns:
            types[c] = pa.string() if as_strings else pa.float64()
    if layout.weight_column:
        types[layout.weight_column] = pa.string() if as_strings else pa.float64()
    return types


def _overflows(table: pa.Table) -> bool:
    """Whether a float column of a table read holds inf: the text may be a number beyond
    float64 (``1e400``), which the table must not hold as inf; the block is then read
    as text, where the value is told from ``inf``."""
    return any(pa.types.is_floating(c.type) and c.null_count < len(c) and
               pc.any(pc.is_inf(c)).as_py() for c in table.columns)


def read_csv(f, path: str, layout: Layout) -> Iterator[RowBatch | dict]:
    """RowBatches of the layout's columns and dead letters of malformed rows, in file order.

    A table read (no feature columns) types every column as the first file's head
    does; a block where a value does not convert is read as text (the rows are then
    checked against those types by the step that needs them, e.g. index_ids).
    """
    include = layout.read_columns()
    for names, block in _blocks(f, path, _BLOCK_BYTES):
        missing = [c for c in include or [] if c not in names]
        if missing:
            raise BeammlError(f'{path} has no column {", ".join(map(repr, missing))}; its '
                              f'columns are {", ".join(names)} (the columns were taken '
                              f'from the first file: {", ".join(layout.columns)})')
        try:
            table, bad, texts, reasons = _parse(
                path, block, _types(layout, names, False), include)
            if not layout.feature_columns and _overflows(table):
                raise pa.ArrowInvalid('a number beyond float64')
        except pa.ArrowInvalid:
            try:   # a value that does not convert: this block as text
                table, bad, texts, reasons = _parse(
                    path, block, _types(layout, names, True), include)
            except pa.ArrowInvalid as e:
                raise BeammlError(f'{path} is not a readable CSV file: '
                                  f'{printable(str(e))}') from e
        yield from _emit(path, table, block, bad, texts, reasons)


def _text_records(header: bytes, columns: list[str]):
    """A decoder of raw records (:class:`RawRecords`): each record's fields as the text
    the file holds (an empty field is null, as the reader reads it)."""
    def decode(raws: list[bytes]) -> list[dict] | None:
        payload = header + b'\n' + b'\n'.join(raws) + b'\n'
        try:
            t = pcsv.read_csv(
                io.BytesIO(payload), read_options=_read_options(payload),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns}, include_columns=columns,
                    null_values=[''], strings_can_be_null=True,
                    quoted_strings_can_be_null=False))
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return None
        return t.to_pylist() if t.num_rows == len(raws) else None
    return decode


def _emit(path, table, block, bad, texts, reasons):
    """The block's batches, each after the dead letters of the rows before its end."""
    dead = list(block.dead)
    dead += [dead_letter(path, block.rows[j], block.lines[j], r, t)
             for j, t, r in zip(bad, texts, reasons)]
    dead.sort(key=lambda d: d['row'])
    rows, lines, starts, ends = block.rows, block.lines, block.starts, block.ends
    if bad:
        keep = np.ones(len(rows), dtype=bool)
        keep[bad] = False
        rows, lines, starts, ends = rows[keep], lines[keep], starts[keep], ends[keep]
    raw = RawRecords(block.payload, starts, ends, _text_records(block.header,
                                                                table.column_names))
    k = 0
    start = 0
    for b in table.combine_chunks().to_batches(max_chunksize=BATCH_ROWS):
        n = b.num_rows
        last = rows[start + n - 1] if n else -1
        while k < len(dead) and dead[k]['row'] <= last:
            yield dead[k]
            k += 1
        part = slice(start, start + n)
        yield RowBatch(b, rows[part], lines[part], raw.take(part))
        start += n
    yield from dead[k:]


# ----------------------------------------------------------------------------- head

def csv_head(f, path: str, id_column: str | None = None) -> tuple[pa.Table, int]:
    """The first rows (about :data:`HEAD_BYTES`) of the open file ``f``, types inferred,
    and how many data records the head holds (refused ones included).

    Records that are not UTF-8 are left out, so that a column is typed by its
    other values. The id column is int64 when every id of the head that is not blank
    is an integer (``INT_RE``; one beyond int64 is null there, refused later), else
    the text as written: CSV holds text, and ``1.0`` or ``true`` is an id of text.
    """
    for names, block in _blocks(f, path, HEAD_BYTES, limit=HEAD_BYTES):
        n_records = len(block.rows) + len(block.dead)
        options = dict(read_options=_read_options(block.payload),
                       parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: 'skip',
                                                       newlines_in_values=True))
        table = pcsv.read_csv(io.BytesIO(block.payload), **options)
        if id_column in table.column_names:
            text = pcsv.read_csv(io.BytesIO(block.payload), convert_options=pcsv.ConvertOptions(
                include_columns=[id_column], column_types={id_column: pa.string()},
                null_values=[''], strings_can_be_null=True), **options).column(0)
            text = text.combine_chunks()
            present = pc.drop_null(text)
            present = present.filter(pc.not_equal(pc.utf8_trim_whitespace(present), ''))
            i = table.column_names.index(id_column)
            if len(present) and pc.all(pc.match_substring_regex(present, INT_RE)).as_py():
                ids, _ = int64_or_null(pc.if_else(
                    pc.match_substring_regex(text, INT_RE), text, pa.scalar(None, pa.string())))
                table = table.set_column(i, id_column, ids)
            elif not is_string_type(table.schema.field(i).type):
                table = table.set_column(i, id_column, text)
        return table, n_records
    raise AssertionError('unreachable: _blocks yields a block or raises')
