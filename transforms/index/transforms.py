"""The Beam side of the dense id index: DoFns and CombineFns over the kernels, and the composites.

How the graph numbers ids without gathering rows: every batch is reduced to its
distinct ids with the smallest source key they appear with (``_FirstKeysFn``);
:class:`MinKeyPerIdFn` merges those per-batch tables and
:func:`~beamml.transforms.index.kernels.number_ids` ranks the result. The rows
themselves never leave their workers: the id2idx table goes back to them as a
side input (:class:`EncodeIds`).

Limitation: the final merge and the ranking hold every *distinct* id (not every
row) on one worker, about 16 bytes per int64 id (more for strings): tens of
millions of distinct ids fit in a few GB; beyond that the numbering needs a
distributed sort.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.index.kernels import (MAX_FILES, ORDERS, file_ranks, first_keys,
                                             first_keys_schema, merge_first_keys, normalise_ids,
                                             number_ids, source_keys)
from beamml.transforms.index.lookup import IdIndex
from beamml.transforms.index.schemas import (add_schema, conform_batch, conform_to_input,
                                             schema_without_source, unified_schema)
from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters, dead_letter
from beamml.transforms.io import RowReasons
from beamml.transforms.io.rows import source_of

__all__ = ['MinKeyPerIdFn', 'UnifySchemasFn', 'ConformToInputFn', 'BuildIdIndex', 'EncodeIds',
           'IndexIds', 'table_batches']


# ----------------------------------------------------------------------------- adapters

class _FirstKeysFn(beam.DoFn):
    """Batch (with ``_file``, ``_row``) -> table of its distinct ids and first source key."""

    def __init__(self, id_column: str, paths: Sequence[str]):
        self.id_column = id_column
        self.rank = {p: i for i, p in enumerate(paths)}
        if len(self.rank) >= MAX_FILES:
            raise BeammlError(f'{len(paths)} input files; at most {MAX_FILES - 1}')

    def process(self, batch: pa.RecordBatch):
        if batch.num_rows == 0:
            return
        keys = source_keys(file_ranks(batch.column('_file'), self.rank),
                           batch.column('_row').to_numpy(zero_copy_only=False))
        yield first_keys(batch.column(self.id_column), keys)


# not RecordBatches: the (id, key) tables of first_keys, one per batch
@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(pa.Table)
class MinKeyPerIdFn(beam.CombineFn):
    """Tables ``(id, key)`` -> one table with each distinct id once and its smallest key.

    The accumulator is a list of tables, the first compacted; the others are
    compacted into it (:func:`~beamml.transforms.index.kernels.merge_first_keys`:
    concatenate, then a group-by keeping the minimum) once they hold as many rows
    as it, so each row is re-merged O(log n) times. It holds distinct ids, never rows.
    """

    def __init__(self, id_type: pa.DataType = pa.int64(), compact_rows: int = 1 << 16):
        self.schema = first_keys_schema(id_type)
        self.compact_rows = compact_rows

    def create_accumulator(self):
        return [self.schema.empty_table()]

    def _maybe_compact(self, acc):
        pending = sum(t.num_rows for t in acc[1:])
        if pending >= max(acc[0].num_rows, self.compact_rows):
            acc[:] = [merge_first_keys(acc, self.schema)]
        return acc

    def add_input(self, acc, table):
        acc.append(table)
        return self._maybe_compact(acc)

    def merge_accumulators(self, accumulators):
        return self._maybe_compact(merge_into_first(accumulators, list.extend))

    def compact(self, acc):
        return [merge_first_keys(acc, self.schema)]

    def extract_output(self, acc):
        return merge_first_keys(acc, self.schema)


# not RecordBatches: their schemas (schema_without_source)
@beam.typehints.with_input_types(pa.Schema)
@beam.typehints.with_output_types(pa.Schema)
class UnifySchemasFn(beam.CombineFn):
    """Batch schemas -> the one schema every batch is written with
    (:func:`~beamml.transforms.index.schemas.promote_types`).

    Columns come in ``columns`` order (the first file's), then any others by name.
    """

    def __init__(self, columns: Sequence[str] = ()):
        self.columns = tuple(columns)

    def create_accumulator(self):
        return {}

    def add_input(self, acc, schema: pa.Schema):
        return add_schema(acc, schema)

    def merge_accumulators(self, accumulators):
        return merge_into_first(accumulators,
                                lambda first, acc: add_schema(first, pa.schema(list(acc.items()))))

    def extract_output(self, acc):
        return unified_schema(acc, self.columns)


class ConformToInputFn(beam.DoFn):
    """Batch (with ``_file``, ``_row``, ``_line``) -> the batch with each column of
    ``types`` as that type (:func:`~beamml.transforms.index.schemas.conform_to_input`);
    a row with a value that is not is a dead letter on ``ERRORS``, moved from the
    records accepted to the refused (:class:`RecordCounters`)."""

    def __init__(self, types: dict, text: bool):
        self.types, self.text = dict(types), text
        self.counters = RecordCounters()

    def process(self, batch: pa.RecordBatch):
        why = RowReasons(batch.num_rows)
        out = conform_to_input(batch, self.types, self.text, why)
        bad = np.flatnonzero(why.refused)
        if len(bad):
            self.counters.refuse_accepted(len(bad))
            values = schema_without_source(batch).names
            records = batch.select(values).take(pa.array(bad)).to_pylist()
            for (path, row, line), i, record in zip(source_of(batch, bad), bad, records):
                yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                    path, row, line, why.texts[why.code[i]], record))   # refused rows only
            out = out.filter(pa.array(~why.refused))
        if out.num_rows:
            yield out


class _EncodeFn(beam.DoFn):
    """Append ``idx`` to a batch (its id column looked up in the id2idx side input)."""

    def __init__(self, id_column: str, idx_column: str = 'idx'):
        self.id_column, self.idx_column = id_column, idx_column
        self._table = None
        self._index = None

    def _index_of(self, table: pa.Table) -> IdIndex:
        # The side input is decoded again for some bundles: rebuild only when it changed.
        if self._table is None or (self._table is not table and not self._table.equals(table)):
            self._index, self._table = IdIndex(table), table
        return self._index

    def process(self, batch: pa.RecordBatch, id2idx: pa.Table, schema: pa.Schema):
        index = self._index_of(id2idx)
        batch = conform_batch(batch, schema)
        idx = index.get_users_idx(batch.column(self.id_column))
        yield batch.append_column(self.idx_column, pa.array(idx))


# ----------------------------------------------------------------------------- composites

def table_batches(table: pa.Table, max_rows: int = 1 << 16) -> Iterable[pa.RecordBatch]:
    """A table (e.g. the id2idx table) as RecordBatches of at most ``max_rows`` rows."""
    return table.to_batches(max_chunksize=max_rows)


class BuildIdIndex(beam.PTransform):
    """Batches with ``_file`` and ``_row`` -> a PCollection of one id2idx table ``id, idx``.

    Parameters
    ----------
    id_column : the column holding the ids (already of type ``id_type``)
    paths : the input files in path order (``ReadTable(...).paths``): a row's
        first-seen position is (its file's place in this list, its row)
    order : 'first_seen' or 'sorted'
    """

    def __init__(self, id_column: str, paths: Sequence[str], *, order: str = 'first_seen',
                 id_type: pa.DataType = pa.int64(), label: str | None = None):
        super().__init__(label)
        if order not in ORDERS:
            raise BeammlError(f'unknown order {order!r}; one of {", ".join(ORDERS)}',
                              parameters=('order',))
        self.id_column, self.paths = id_column, list(paths)
        self.order, self.id_type = order, id_type

    def expand(self, batches):
        return (batches
                | 'FirstKeysPerBatch' >> beam.ParDo(_FirstKeysFn(self.id_column, self.paths))
                | 'FirstKeysGlobally' >> beam.CombineGlobally(MinKeyPerIdFn(self.id_type))
                | 'NumberIds' >> beam.Map(number_ids, order=self.order))


class EncodeIds(beam.PTransform):
    """Batches -> the same rows with an ``idx`` column, looked up in an id2idx side input.

    ``_file`` and ``_row`` are dropped; every batch is cast to one schema (a CSV
    file read as text and another read as numbers meet as text, ints and floats
    as floats), so the output shards agree.
    """

    def __init__(self, id_column: str, id2idx, *, columns: Sequence[str] = (),
                 label: str | None = None):
        super().__init__(label)
        self.id_column, self.id2idx, self.columns = id_column, id2idx, tuple(columns)

    def expand(self, batches):
        schema = (batches
                  | 'BatchSchemas' >> beam.Map(schema_without_source)
                  | 'UnifySchemas' >> beam.CombineGlobally(UnifySchemasFn(self.columns)))
        return batches | 'AppendIdx' >> beam.ParDo(
            _EncodeFn(self.id_column), beam.pvalue.AsSingleton(self.id2idx),
            beam.pvalue.AsSingleton(schema))


class IndexIds(beam.PTransform):
    """Batches of ``ReadTable(..., id_column=C, source_columns=True)`` -> id2idx and encoded.

    ``input_types`` ({column: type}, :func:`~beamml.transforms.index.schemas.input_types`
    of the read's layout): each such column keeps that type in every batch, and a row
    whose value is not of it is refused (``text``: the input is CSV, whose blocks may
    come as text). Returns ``{'id2idx': PCollection of one pa.Table (id, idx),
    'encoded': PCollection of RecordBatches (the input columns + idx), 'errors': the
    dead letters of the rows refused here}``.
    """

    def __init__(self, id_column: str, paths: Sequence[str], *, order: str = 'first_seen',
                 id_type: pa.DataType = pa.int64(), columns: Sequence[str] = (),
                 input_types: dict | None = None, text: bool = False,
                 label: str | None = None):
        super().__init__(label)
        self.id_column, self.paths, self.order = id_column, list(paths), order
        self.id_type, self.columns = id_type, tuple(columns)
        self.input_types, self.text = dict(input_types or {}), text

    def expand(self, batches):
        checked = batches | 'ConformToInput' >> beam.ParDo(
            ConformToInputFn(self.input_types, self.text)).with_outputs(ERRORS, main='batches')
        ids = checked.batches | 'NormaliseIds' >> beam.Map(self._normalise, self.id_column,
                                                            self.id_type)
        id2idx = ids | 'BuildIdIndex' >> BuildIdIndex(
            self.id_column, self.paths, order=self.order, id_type=self.id_type)
        encoded = ids | 'EncodeIds' >> EncodeIds(self.id_column, id2idx, columns=self.columns)
        return {'id2idx': id2idx, 'encoded': encoded, 'errors': checked[ERRORS]}

    @staticmethod
    def _normalise(batch: pa.RecordBatch, id_column: str, id_type: pa.DataType):
        i = batch.schema.get_field_index(id_column)
        return batch.set_column(i, id_column, normalise_ids(batch.column(i), id_type))
