"""ParsePredictionLogs: prediction-log batches -> typed log rows, the unusable rows refused
as dead letters with their file, row and line (the parsers of
:mod:`beamml.transforms.metrics.parsing`, applied per batch).
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.io import RowReasons
from beamml.transforms.metrics.parsing import (RANKING_INPUTS, ROW_INPUTS, _check_id_type, _np,
                                               parse_binary, parse_query_ids, parse_rank,
                                               parse_relevance)

__all__ = ['ParsePredictionLogs']


def _batch_path(batch) -> str | None:
    """The file a batch was read from (its ``_file`` column), if it says."""
    if '_file' not in batch.schema.names:
        return None
    col = batch.column('_file')
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if len(col) == 0:
        return None
    return col[0].as_py()


def _source_lines(batch) -> np.ndarray | None:
    """The physical line of each row of a batch (its ``_line`` column), None when unknown
    (no such column, or a binary format: all null)."""
    if '_line' not in batch.schema.names:
        return None
    col = batch.column('_line')
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count == len(col):
        return None
    if col.null_count:  # not a reader's batch (those come from one file): rare
        return np.array(col.to_pylist(), dtype=object)
    return _np(col)


#: formats whose files have one set of columns (a header or a schema): a column absent
#: from a batch is absent from its whole file
_WHOLE_FILE_FORMATS = ('csv', 'parquet')


class _ParseLogsFn(beam.DoFn):
    """Log batch -> canonical typed batch (the parsers above), refused rows as dead letters.

    A column may be absent from a batch although the first file has it (inspection
    checked that): a JSON lines block whose objects all lack the key, or a later
    file without the column. Its values are then missing: the rows are refused
    (``missing <name> ('<column>')``, with ``: the file has no such column`` for a
    CSV or Parquet file). An absent ``slice_by`` column is null in a JSON lines
    block (the slice ``col=null``, as for an object without the key in a block
    that has it), and refuses the rows of a CSV or Parquet file.
    """

    def __init__(self, task: str, columns: dict[str, str], slice_by: Sequence[str],
                 id_type: str, input_format: str | None = None):
        self.task, self.columns = task, dict(columns)
        self.slice_by, self.id_type = tuple(slice_by), id_type
        self.whole_files = input_format in _WHOLE_FILE_FORMATS
        self.counters = RecordCounters()

    def process(self, batch):
        n = batch.num_rows
        if n == 0:
            return
        src = self.columns
        names = batch.schema.names
        why = RowReasons(n)
        out = {}

        def column(name):
            """The log column of canonical ``name`` (all null when the batch lacks it)
            and the reason of a missing value."""
            c = src[name]
            absent = c not in names
            text = f'missing {name} ({c!r})'
            if absent and self.whole_files:
                text += ': the file has no such column'
            return (pa.nulls(n) if absent else batch.column(c)), text

        if self.task == 'classification':
            for name in ROW_INPUTS:
                values, missing_text = column(name)
                labels, missing, invalid = parse_binary(values)
                why.mark(missing, missing_text)
                why.mark(invalid, f'{name} ({src[name]!r}) is not a binary label '
                                  '(0/1, true/false, T/F)')
                out[name] = pa.array(labels)
        else:
            values, missing_text = column('q_id')
            ids, missing, invalid = parse_query_ids(values, self.id_type)
            why.mark(missing, missing_text)
            if self.id_type == 'int64':
                why.mark(invalid, f'q_id ({src["q_id"]!r}) is not an integer (the first '
                                  "file's query ids are integers)")
            else:
                why.mark(invalid, f'empty q_id ({src["q_id"]!r})')
            values, missing_text = column('predicted_rank')
            rank, missing, invalid = parse_rank(values)
            why.mark(missing, missing_text)
            why.mark(invalid, f'predicted_rank ({src["predicted_rank"]!r}) is not an '
                              'integer >= 0')
            values, missing_text = column('truth_relevance')
            rel, missing, invalid = parse_relevance(values)
            why.mark(missing, missing_text)
            why.mark(invalid, f'truth_relevance ({src["truth_relevance"]!r}) is not a '
                              'finite number or true/false')
            out.update(q_id=ids, predicted_rank=pa.array(rank), truth_relevance=pa.array(rel))
        for c in self.slice_by:
            if c in names:
                out[c] = batch.column(c)
                continue
            if self.whole_files:
                why.mark(np.ones(n, bool), f'missing slice column {c!r}: the file has no '
                                           'such column')
            out[c] = pa.nulls(n, pa.string())
        for c in SOURCE_COLUMNS:
            if c in names:
                out[c] = batch.column(c)
        parsed = pa.RecordBatch.from_arrays(list(out.values()), names=list(out))
        if why.refused.any():
            rows = _np(batch.column('_row')) if '_row' in names else None
            lines = _source_lines(batch)
            keep_cols = [c for c in names if c not in SOURCE_COLUMNS]
            dead = why.dead_letters(batch.select(keep_cols), _batch_path(batch), rows, lines)
            for letter in dead:
                yield beam.pvalue.TaggedOutput(ERRORS, letter)
            self.counters.refuse_accepted(len(dead))
            keep = np.flatnonzero(~why.refused)
            if not len(keep):
                return
            parsed = parsed.take(pa.array(keep))
        yield parsed


class ParsePredictionLogs(beam.PTransform):
    """Turn log batches (the files' own columns) into canonical, typed batches.

    ``columns`` maps the canonical names (``truth, prediction`` for
    classification; ``q_id, predicted_rank, truth_relevance`` for ranking) to the
    log's column names. The output ``rows`` batches hold the canonical columns
    (bool labels; int64 or string q_id, int64 rank, float64 relevance), the
    ``slice_by`` columns and the source columns ``_file`` / ``_row`` / ``_line``
    when present; a row with a missing or unusable value is a dead letter on
    ``errors`` (and moved from records_ok to records_refused), with the file, row
    and line of those columns. ``input_format`` (the reader's) tells whether a
    column absent from a batch is absent from its whole file (CSV, Parquet: the
    reason says so, and an absent ``slice_by`` column refuses the rows) or from a
    JSON lines block only (see :class:`_ParseLogsFn`).
    """

    def __init__(self, task: str, columns: dict[str, str] | None = None,
                 slice_by: Sequence[str] = (), id_type: str = 'int64',
                 input_format: str | None = None, label: str | None = None):
        super().__init__(label)
        if task not in ('classification', 'ranking'):
            raise BeammlError(f"task must be 'classification' or 'ranking', got {task!r}",
                              parameters=('task',))
        _check_id_type(id_type)
        names = ROW_INPUTS if task == 'classification' else RANKING_INPUTS
        self.task = task
        self.columns = {n: n for n in names}
        self.columns.update(columns or {})
        self.slice_by, self.id_type = tuple(slice_by or ()), id_type
        self.input_format = input_format

    def expand(self, batches):
        return batches | 'ParseLogRows' >> beam.ParDo(_ParseLogsFn(
            self.task, self.columns, self.slice_by, self.id_type, self.input_format)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='rows')
