"""Metrics in Beam: CombineFns of any list of metrics, overall and per slice; ComputeMetrics.

:class:`ComputeMetrics` computes them all in one pass over log batches. The
CombineFns know a metric only by its interface (``name``, ``level``, ``state``,
``value``, ``can_be_undefined``; see
:class:`~beamml.transforms.metrics.definitions.Metric`), whose state does the
arithmetic on numpy columns.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.core.errors import ERRORS
from beamml.transforms.core.types import is_string_type
from beamml.transforms.metrics.parsing import SLICE_COLUMN, _np, slice_keys
from beamml.transforms.metrics.ranking import QueryStats, _check_n_buckets

__all__ = ['MetricsCombineFn', 'MetricCombineFn', 'merge_results', 'ComputeMetrics']


# ----------------------------------------------------------------------------- columns

def _columns(batch, names) -> dict[str, np.ndarray]:
    """The named columns as numpy arrays (strings, dictionaries and nullable ones stay Arrow)."""
    out = {}
    for name in names:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_boolean(col.type) and col.null_count == 0:
            out[name] = _np(col).astype(bool)
        elif pa.types.is_fixed_size_list(col.type):   # one row of R values: (n, R)
            out[name] = _np(col.flatten()).reshape(len(col), col.type.list_size)
        else:
            out[name] = col if (is_string_type(col.type) or pa.types.is_dictionary(col.type)
                                or col.null_count) else _np(col)
    return out


def _take(cols: dict, idx: np.ndarray) -> dict:
    """The rows ``idx`` of every column of :func:`_columns`."""
    return {k: (v.take(pa.array(idx)) if isinstance(v, pa.Array) else v[idx])
            for k, v in cols.items()}


def _groups(keys: pa.Array) -> Iterator[tuple[str | None, np.ndarray]]:
    """(key, row indices) of each distinct key (null -> None)."""
    enc = keys.dictionary_encode()
    codes = _np(pc.fill_null(enc.indices, -1)).astype(np.int64)
    names = enc.dictionary.to_pylist()
    order = np.argsort(codes, kind='stable')
    bounds = np.searchsorted(codes[order], np.arange(-1, len(names) + 1))
    for j in range(-1, len(names)):
        lo, hi = bounds[j + 1], bounds[j + 2]
        if hi > lo:
            yield (None if j < 0 else names[j]), order[lo:hi]


def _check_metrics(metrics: list) -> None:
    if not metrics:
        raise ValueError('no metric to compute')
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f'metric names must be unique, got {names}')


# ----------------------------------------------------------------------------- CombineFns

@beam.typehints.with_input_types(pa.RecordBatch)
@beam.typehints.with_output_types(dict[str, Any])
class MetricsCombineFn(beam.CombineFn):
    """Any list of metrics of one level, overall and per slice, over RecordBatches.

    Rows-level metrics (classification) read batches with columns ``truth`` and
    ``prediction`` and slice them by the values of ``slice_by``; query-level
    metrics (ranking) read per-query statistics batches and slice them by their
    ``_slice`` column (null = overall). The accumulator is a dict
    ``{slice key (None = overall): [one small array per distinct state]}``;
    merges add into the first accumulator and copy a slice it does not have yet,
    never keeping another accumulator's arrays (Beam may reuse them).

    The output is ``{'overall': section, 'slices': {key: section}}``, a section
    being ``{metric name: value, ..., 'undefined': {metric name: n}}``, and
    ``'confidence_intervals': {metric name: {lower, upper, standard_error}}`` when
    metrics carry bootstrap replicates (a metric's ``intervals``; a metric with
    ``intervals_only``, ``QueryIntervals``, gives other metrics' intervals and no value).
    """

    def __init__(self, metrics: Sequence, slice_by: Sequence[str] = ()):
        metrics = list(metrics)
        _check_metrics(metrics)
        levels = {m.level for m in metrics}
        if len(levels) != 1:
            raise ValueError('MetricsCombineFn takes metrics of one level; '
                             'use ComputeMetrics to mix classification and ranking')
        self.level = levels.pop()
        self.metrics = metrics
        self.slice_by = tuple(slice_by or ())
        self.states = list(dict.fromkeys(m.state for m in metrics))
        self._state_of = [self.states.index(m.state) for m in metrics]
        self.inputs = tuple(dict.fromkeys(c for s in self.states for c in s.inputs))

    def create_accumulator(self):
        return {None: [s.create() for s in self.states]}

    def _add_cols(self, acc, key, cols):
        accs = acc.get(key)
        if accs is None:
            accs = acc[key] = [s.create() for s in self.states]
        for i, s in enumerate(self.states):
            accs[i] = s.add(accs[i], cols)

    def add_input(self, acc, batch):
        if batch.num_rows == 0:
            return acc
        cols = _columns(batch, self.inputs)
        if self.level == 'rows':
            self._add_cols(acc, None, cols)
            if self.slice_by:
                for key, idx in _groups(slice_keys(batch, self.slice_by)):
                    self._add_cols(acc, key, _take(cols, idx))
        elif SLICE_COLUMN in batch.schema.names:
            col = batch.column(SLICE_COLUMN)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            if col.null_count == len(col):  # overall rows only
                self._add_cols(acc, None, cols)
            else:
                for key, idx in _groups(col):
                    self._add_cols(acc, key, _take(cols, idx))
        else:
            self._add_cols(acc, None, cols)
        return acc

    def merge_accumulators(self, accumulators):
        return merge_into_first(accumulators, self._merge_slices)

    def _merge_slices(self, first: dict, a: dict) -> None:
        for key, accs in a.items():
            mine = first.get(key)
            if mine is None:  # a slice new to first: merged into fresh states, a copy
                mine = first[key] = [s.create() for s in self.states]
            for i, s in enumerate(self.states):
                mine[i] = s.merge(mine[i], accs[i])

    def _section(self, accs) -> dict:
        out, undefined, intervals = {}, {}, {}
        for m, i in zip(self.metrics, self._state_of):
            if getattr(m, 'intervals_only', False):   # QueryIntervals: other metrics' intervals
                intervals.update(m.intervals(accs[i]) or {})
                continue
            value, n_undefined = m.value(accs[i])
            out[m.name] = value
            if m.can_be_undefined:
                undefined[m.name] = int(n_undefined)
            ci = m.intervals(accs[i]) if hasattr(m, 'intervals') else None
            if ci is not None:   # bootstrap replicates (classification.py)
                intervals[m.name] = ci
        out['undefined'] = undefined
        if intervals:
            out['confidence_intervals'] = intervals
        return out

    def extract_output(self, acc):
        return {'overall': self._section(acc[None]),
                'slices': {k: self._section(acc[k]) for k in sorted(k for k in acc if k)}}


# the input is MetricsCombineFn's; the output is one metric's value (a float, a count...)
@beam.typehints.with_output_types(Any)
class MetricCombineFn(MetricsCombineFn):
    """One metric as a CombineFn (``metric.combine_fn()``); its output is the overall value."""

    def __init__(self, metric):
        super().__init__([metric])
        self.metric = metric

    def extract_output(self, acc):
        return self.metric.value(acc[None][0])[0]


def merge_results(results: Iterable[dict]) -> dict:
    """Merge the outputs of several MetricsCombineFns (disjoint metric names)."""
    out = {'overall': {'undefined': {}}, 'slices': {}}

    def merge_section(dst, src):
        dst['undefined'].update(src.get('undefined', {}))
        dst.update({k: v for k, v in src.items() if k != 'undefined'})

    for r in results:
        merge_section(out['overall'], r['overall'])
        for key, section in r['slices'].items():
            merge_section(out['slices'].setdefault(key, {'undefined': {}}), section)
    out['slices'] = dict(sorted(out['slices'].items()))
    return out


# ----------------------------------------------------------------------------- composite

class ComputeMetrics(beam.PTransform):
    """Any list of metrics, overall and per slice, in one pass over canonical log batches.

    Classification metrics are one ``CombineGlobally`` over the row batches;
    ranking metrics go through :class:`QueryStats` and one ``CombineGlobally``
    over the per-query batches. Returns a dict of PCollections: ``metrics`` (one
    element, see :class:`MetricsCombineFn`), ``query_stats`` (per-query
    batches, empty without ranking metrics) and ``errors`` (dead letters of
    duplicate ranking rows). ``ks`` adds ``n_relevant_at_<k>`` columns to the
    per-query statistics beyond those the metrics need.

    With ``defaults=False`` and metrics of one level, ``metrics`` is empty when
    there is no row (no query for ranking) instead of holding the metrics of
    nothing, which :meth:`empty_result` gives; this spares Beam's default-value
    branch (an extra stage and a side input).
    """

    def __init__(self, metrics: Sequence, slice_by: Sequence[str] | None = None,
                 *, ks: Sequence[int] = (), n_buckets: int = 32, defaults: bool = True,
                 label: str | None = None):
        super().__init__(label)
        self.defaults = defaults
        self.metrics = list(metrics)
        _check_metrics(self.metrics)
        self.slice_by = tuple(slice_by or ())
        self.rows_metrics = [m for m in self.metrics if m.level == 'rows']
        self.query_metrics = [m for m in self.metrics if m.level == 'queries']
        self.ks = tuple(sorted(set(ks) | {k for m in self.query_metrics
                                          for k in getattr(m, 'ks', ())}))
        if self.query_metrics or self.ks:  # the ranking path is built
            _check_n_buckets(n_buckets)
        self.n_buckets = n_buckets

    def _combine_fns(self) -> list[MetricsCombineFn]:
        return ([MetricsCombineFn(self.rows_metrics, self.slice_by)] if self.rows_metrics
                else []) + ([MetricsCombineFn(self.query_metrics)] if self.query_metrics
                            else [])

    def empty_result(self) -> dict:
        """The ``metrics`` element of an input without rows."""
        results = [fn.extract_output(fn.create_accumulator()) for fn in self._combine_fns()]
        return results[0] if len(results) == 1 else merge_results(results)

    def expand(self, rows):
        parts = []
        stats = errors = None
        fns = self._combine_fns()

        def combine(fn):
            c = beam.CombineGlobally(fn)
            return c if self.defaults or len(fns) > 1 else c.without_defaults()
        if self.rows_metrics:
            parts.append(rows | 'CombineRowMetrics' >> combine(fns[0]))
        if self.query_metrics or self.ks:
            qs = rows | 'QueryStats' >> QueryStats(self.ks, self.slice_by, self.n_buckets)
            stats, errors = qs.stats, qs[ERRORS]
            if self.query_metrics:
                parts.append(stats | 'CombineQueryMetrics' >> combine(fns[-1]))
        if len(parts) == 1:
            metrics = parts[0]
        else:
            metrics = (parts | 'FlattenMetricParts' >> beam.Flatten()
                       | 'MetricParts' >> beam.combiners.ToList()
                       | 'MergeMetricParts' >> beam.Map(merge_results))
        if stats is None:
            stats = rows.pipeline | 'NoQueryStats' >> beam.Create([])
            errors = rows.pipeline | 'NoDuplicateErrors' >> beam.Create([])
        return {'metrics': metrics, 'query_stats': stats, 'errors': errors}
