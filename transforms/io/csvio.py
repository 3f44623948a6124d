"""Reading CSV files with a header into RowBatches; malformed rows become dead letters.

The clean path is one typed pyarrow read. When a value does not convert (a word
in a number column, an id that is not an integer), the file is read again as
text from where the typed read stopped, and :func:`~beamml.transforms.io.rows.to_points`
refuses the bad rows.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from beamml.transforms.io.errors import BeammlError, dead_letter
from beamml.transforms.io.layout import HEAD_BYTES, Layout
from beamml.transforms.io.rows import RowBatch

__all__ = ['csv_head', 'read_csv']

_BLOCK_BYTES = 8 << 20


def csv_head(f) -> pa.Table:
    """The first rows (about :data:`HEAD_BYTES`) of the open file ``f``, types inferred."""
    reader = pcsv.open_csv(
        f, read_options=pcsv.ReadOptions(block_size=HEAD_BYTES, use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: 'skip'))
    try:
        first = reader.read_next_batch()
    except StopIteration:
        return reader.schema.empty_table()
    return pa.Table.from_batches([first])


def read_csv(f, path: str, layout: Layout) -> Iterator[RowBatch | dict]:
    """RowBatches of the layout's columns and dead letters of malformed rows, in file order."""
    progress = [2]  # physical line of the next row not yet handed out
    try:
        yield from _read_csv_typed(f, path, layout, as_strings=False, progress=progress)
    except _CsvConversionError:
        f.seek(0)
        yield from _read_csv_typed(f, path, layout, as_strings=True, progress=progress)


class _CsvConversionError(Exception):
    pass


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
            read_options=pcsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
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
                yield dead_letter(path, ln - 2, ln, reason, text)
        if n and lines[-1] >= resume:
            keep = int(np.searchsorted(lines, resume))
            b = batch.slice(keep) if keep else batch
            progress[0] = next_line
            yield RowBatch(b, lines[keep:] - 2, lines[keep:])
    for ln, text, reason in pending:
        if ln >= resume:
            yield dead_letter(path, ln - 2, ln, reason, text)
