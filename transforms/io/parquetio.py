"""Reading Parquet files, split at row groups, into RowBatches of the layout's columns."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.io.layout import Layout
from beamml.transforms.io.rows import RowBatch

__all__ = ['parquet_head', 'plan_parquet', 'read_parquet']


def _open(f, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except Exception as e:
        raise BeammlError(f'{path} is not a readable parquet file: {e}') from e


def parquet_head(f) -> pa.Table:
    """The first rows (one batch of up to 4096) of the open file ``f``, every column."""
    pf = pq.ParquetFile(f)
    if pf.metadata.num_rows == 0:
        return pf.schema_arrow.empty_table()
    return pa.Table.from_batches([next(pf.iter_batches(batch_size=4096))])


def plan_parquet(f, path: str, split_rows: int) -> list[tuple[str, tuple | None]]:
    """Work items ``(path, (first row, end row, first group, end group))`` of whole row
    groups, about ``split_rows`` rows each; one item ``(path, None)`` for a small file."""
    meta = _open(f, path).metadata
    items, first_group, first_row, rows = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= split_rows or g == meta.num_row_groups - 1:
            items.append((path, (first_row, first_row + rows, first_group, g + 1)))
            first_group, first_row, rows = g + 1, first_row + rows, 0
    return items if len(items) > 1 else [(path, None)]


def read_parquet(f, path: str, layout: Layout, batch_rows: int,
                 part: tuple | None = None) -> Iterator[RowBatch]:
    """RowBatches of the layout's columns of the row groups ``part`` (all when None)."""
    pf = _open(f, path)
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
    batches = pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols,
                              use_threads=False)
    while True:
        try:
            b = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:   # damaged pages past a good footer
            first = first_line(e)
            raise BeammlError(f'{path} is not a readable parquet file (a damaged page '
                              f'in its data): {first}') from e
        yield RowBatch(b, np.arange(start, start + b.num_rows, dtype=np.int64), None)
        start += b.num_rows
