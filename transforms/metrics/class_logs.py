"""ParseClassificationLogs: log batches -> multiclass / weighted / scored classification rows
(the columns of :mod:`beamml.transforms.metrics.classification`), unusable rows refused as
dead letters with their file, row and line.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.io import RowReasons
from beamml.transforms.metrics.bootstrap import poisson_weights, row_keys
from beamml.transforms.metrics.classification import WEIGHTS
from beamml.transforms.metrics.logs import _WHOLE_FILE_FORMATS, _batch_path, _source_lines
from beamml.transforms.metrics.parsing import (_np, parse_binary, parse_classes, parse_score,
                                               parse_weight)

__all__ = ['ClassificationColumns', 'ParseClassificationLogs']


@dataclass(frozen=True)
class ClassificationColumns:
    """Where the rows' values are, and how to read labels.

    ``labels``: 'binary' reads labels as today's binary ones (0/1, true/false, T/F),
    as the classes '1' and '0'; 'classes' reads them as class names
    (:func:`~beamml.transforms.metrics.parsing.parse_classes`). ``prediction`` None:
    no predicted class (score metrics only). ``probabilities``: (class, column) pairs.
    ``num_bootstrap`` > 0 adds that many Poisson(1) weights per row, keyed by
    ``random_state`` and, with ``keys='file'``, the row's file and row number (files:
    the same rows get the same weights however they are batched); with ``keys='content'``
    the batch's content and the row's place in it (Pub/Sub messages, whose ``_file`` is
    the subscription and ``_row`` the place in the message, which repeat).
    """
    truth: str = 'truth'
    prediction: str | None = 'prediction'
    labels: str = 'binary'
    weight: str | None = None
    score: str | None = None
    probabilities: tuple[tuple[str, str], ...] = ()
    num_bootstrap: int = 0
    random_state: int = 0
    keys: str = 'file'
    slice_by: tuple[str, ...] = field(default=())

    @property
    def columns(self) -> list[str]:
        """Every log column read (the slice columns aside)."""
        cols = [self.truth] + [c for c in (self.prediction, self.weight, self.score) if c]
        return cols + [c for _, c in self.probabilities]


def _batch_key_base(batch: pa.RecordBatch) -> str:
    """A stand-in for a file name when a batch has none (a message): its content's hash."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return 'batch:' + hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


class _ParseClassificationFn(beam.DoFn):
    """Log batch -> rows ``truth, prediction, _weights, score...``, slice and source
    columns; refused rows as dead letters (see :class:`ParseClassificationLogs`)."""

    def __init__(self, spec: ClassificationColumns, input_format: str | None = None):
        self.spec = spec
        self.whole_files = input_format in _WHOLE_FILE_FORMATS
        self.counters = RecordCounters()

    def _labels(self, values, name, column, why):
        if self.spec.labels == 'binary':
            labels, missing, invalid = parse_binary(values)
            text = pc.if_else(pa.array(labels), '1', '0')
            why.mark(missing, f'missing {name} ({column!r})')
            why.mark(invalid, f'{name} ({column!r}) is not a binary label (0/1, true/false, T/F)')
            return text
        labels, missing, invalid = parse_classes(values)
        why.mark(missing, f'missing {name} ({column!r})')
        why.mark(invalid, f'{name} ({column!r}) is not a class label (an integer or a text)')
        return labels

    def _weights(self, batch, n, why) -> np.ndarray:
        spec = self.spec
        if spec.weight:
            w, missing, invalid = parse_weight(self._column(batch, spec.weight, n))
            why.mark(missing, f'missing sample weight ({spec.weight!r})')
            why.mark(invalid, f'sample weight ({spec.weight!r}) is not a finite number >= 0')
        else:
            w = np.ones(n)
        if not spec.num_bootstrap:
            return w[:, None]
        names = batch.schema.names
        path = _batch_path(batch)
        rows = _np(batch.column('_row')) if '_row' in names else None
        if spec.keys != 'file' or path is None or rows is None or rows.dtype == object:
            path, rows = _batch_key_base(batch), np.arange(n)
        keys = row_keys(path, np.asarray(rows, np.int64))
        return np.concatenate(
            [w[:, None], w[:, None] * poisson_weights(keys, spec.num_bootstrap,
                                                      spec.random_state)], axis=1)

    def _column(self, batch, column, n):
        return batch.column(column) if column in batch.schema.names else pa.nulls(n)

    def process(self, batch):
        n = batch.num_rows
        if n == 0:
            return
        spec = self.spec
        names = batch.schema.names
        why = RowReasons(n)
        for c in spec.columns:
            if c not in names and self.whole_files:
                why.mark(np.ones(n, bool), f'missing column {c!r}: the file has no such column')
        out = {'truth': self._labels(self._column(batch, spec.truth, n), 'truth', spec.truth, why)}
        if spec.prediction:
            out['prediction'] = self._labels(self._column(batch, spec.prediction, n),
                                             'prediction', spec.prediction, why)
        weights = self._weights(batch, n, why)
        if spec.score:
            s, missing, invalid = parse_score(self._column(batch, spec.score, n))
            why.mark(missing, f'missing score ({spec.score!r})')
            why.mark(invalid, f'score ({spec.score!r}) is not a finite number')
            out['score'] = pa.array(s)
        if spec.probabilities:
            classes = pa.array([c for c, _ in spec.probabilities])
            for i, (cls, col) in enumerate(spec.probabilities):
                p, missing, invalid = parse_score(self._column(batch, col, n))
                why.mark(missing, f'missing probability of class {cls!r} ({col!r})')
                why.mark(invalid | (p < 0) | (p > 1),
                         f'probability of class {cls!r} ({col!r}) is not a number in [0, 1]')
                out[f'score_{i}'] = pa.array(p)
            known = _np(pc.fill_null(pc.is_in(out['truth'], value_set=classes), False))
            why.mark(~known, f'truth ({spec.truth!r}) is not one of the classes of the '
                             'probability columns')
        out[WEIGHTS] = pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)),
                                                         weights.shape[1])
        for c in spec.slice_by:
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
            keep_cols = [c for c in names if c not in SOURCE_COLUMNS]
            dead = why.dead_letters(batch.select(keep_cols), _batch_path(batch), rows,
                                    _source_lines(batch))
            for letter in dead:
                yield beam.pvalue.TaggedOutput(ERRORS, letter)
            self.counters.refuse_accepted(len(dead))
            keep = np.flatnonzero(~why.refused)
            if not len(keep):
                return
            parsed = parsed.take(pa.array(keep))
        yield parsed


class ParseClassificationLogs(beam.PTransform):
    """Log batches -> classification rows for the metrics of
    :mod:`~beamml.transforms.metrics.classification` (outputs ``rows`` and ``errors``).

    A row with a missing or unusable label, weight (not a finite number >= 0),
    score (not finite), probability (not in [0, 1]) or a truth that is not one of
    the probability columns' classes is a dead letter. The bootstrap weights of a
    row depend on its file and row number only (messages without them: on the
    message's content), so a rerun draws the same replicates.
    """

    def __init__(self, spec: ClassificationColumns, input_format: str | None = None,
                 label: str | None = None):
        super().__init__(label)
        if spec.labels not in ('binary', 'classes'):
            raise BeammlError(f"labels must be 'binary' or 'classes', got {spec.labels!r}")
        self.spec, self.input_format = spec, input_format

    def expand(self, batches):
        return batches | 'ParseClassificationRows' >> beam.ParDo(_ParseClassificationFn(
            self.spec, self.input_format)).with_output_types(pa.RecordBatch).with_outputs(
            ERRORS, main='rows')
