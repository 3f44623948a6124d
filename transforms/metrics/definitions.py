"""Metric definitions: each metric's accumulator state and its value, on numpy arrays.

A :class:`Metric` is called on numpy arrays with keyword arguments and ignores the
keywords it does not use, so one dict of arrays feeds any list of metrics::

    arrays = dict(truth=t, prediction=p)
    {m.name: m(**arrays) for m in (Precision(), Recall(), F1())}

    QueryPrecision()(q_id=q, predicted_rank=r, truth_relevance=rel)

``m.combine_fn()`` is the same metric as a Beam ``CombineFn`` over RecordBatches
(:mod:`beamml.transforms.metrics.compute`), with a small additive numpy accumulator
computed by the same state code.

Classification (rows ``truth, prediction``): the accumulator is the confusion
counts ``[tp, fp, tn, fn]``. ``zero_division`` is the value of a 0/0 as in
scikit-learn (0.0, 1.0 or nan); every such case is counted in the results'
``undefined``, never hidden.

Ranking (rows ``q_id, predicted_rank, truth_relevance``; ``predicted_rank`` 0 is
the top result, a row is *relevant* when ``truth_relevance > 0``). Per query q with
``n_returned`` rows of which ``n_relevant`` are relevant:

* query precision = n_relevant / n_returned; ``AverageQueryPrecision`` is its
  mean over queries, each query weighing the same;
* ``PrecisionAtK(k)``: (relevant rows with ``predicted_rank < k``) / k, averaged
  over queries;
* ``MeanAveragePrecision``: AP(q) = (1 / n_relevant) * sum over the relevant rows i
  of P@(rank_i + 1), i.e. (relevant rows with rank <= rank_i) / (rank_i + 1); the
  divisor is the number of relevant *returned* rows. A query without a relevant
  row has AP = ``zero_division`` and is counted as undefined.

Ranking metrics accumulate per-query statistics (``q_id, n_returned, n_relevant,
n_relevant_at_<k>, ap_sum``: :func:`~beamml.transforms.metrics.kernels.query_stats`
on arrays, :class:`~beamml.transforms.metrics.ranking.QueryStats` in Beam), so a
ranking metric's ``combine_fn()`` takes RecordBatches of those, not raw rows;
:func:`per_query_metrics` turns them into each query's precision, P@k and AP.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from beamml.transforms.core.errors import BeammlError
# Metric.combine_fn's Beam form; compute knows a metric only by its interface and
# imports nothing from here.
from beamml.transforms.metrics.compute import MetricCombineFn
from beamml.transforms.metrics.kernels import confusion_counts, query_stats
from beamml.transforms.metrics.parsing import RANKING_INPUTS, ROW_INPUTS, binary_labels

__all__ = ['Metric', 'Precision', 'Recall', 'Accuracy', 'F1', 'ConfusionCounts',
           'QueryPrecision', 'AverageQueryPrecision', 'PrecisionAtK', 'MeanAveragePrecision',
           'QueryCount', 'CLASSIFICATION_METRICS', 'RANKING_METRICS', 'per_query_metrics']


# ----------------------------------------------------------------------------- states
#
# A state is the accumulator of one or more metrics: create / add / merge, the
# add reading numpy columns. Metrics with equal states share one accumulator in
# ComputeMetrics (Precision, Recall, F1, Accuracy and ConfusionCounts all read
# the same confusion counts). A merge adds ``other`` into ``acc`` and never
# modifies ``other`` (Beam's rule: only the first accumulator may change).

class _State:
    level = 'rows'        # 'rows': log rows; 'queries': per-query statistics
    inputs: tuple[str, ...] = ()

    def _params(self) -> tuple:
        return ()

    def __eq__(self, other):
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self):
        return hash((type(self).__name__,) + self._params())

    def create(self):
        raise NotImplementedError

    def add(self, acc, cols: dict[str, np.ndarray]):
        raise NotImplementedError

    def merge(self, acc, other):
        """``acc`` with ``other`` added in; ``other`` is left as it was."""
        acc += other
        return acc


class _Confusion(_State):
    inputs = ROW_INPUTS

    def create(self):
        return np.zeros(4, np.int64)

    def add(self, acc, cols):
        acc += confusion_counts(cols['truth'], cols['prediction'])
        return acc


class _QuerySums(_State):
    """[n_queries, sum of query precision, sum of defined APs, queries without relevant]."""
    level = 'queries'
    inputs = ('n_returned', 'n_relevant', 'ap_sum')

    def create(self):
        return np.zeros(4)

    def add(self, acc, cols):
        n_ret = cols['n_returned'].astype(np.float64)
        n_rel = cols['n_relevant'].astype(np.float64)
        has = n_rel > 0
        acc[0] += len(n_ret)
        acc[1] += (n_rel / n_ret).sum() if len(n_ret) else 0.0
        acc[2] += (cols['ap_sum'][has] / n_rel[has]).sum()
        acc[3] += len(n_rel) - int(has.sum())
        return acc


class _AtK(_State):
    """[n_queries, sum of relevant rows with rank < k]."""
    level = 'queries'

    def __init__(self, k: int):
        self.k = k
        self.inputs = (f'n_relevant_at_{k}',)

    def _params(self):
        return (self.k,)

    def create(self):
        return np.zeros(2)

    def add(self, acc, cols):
        c = cols[self.inputs[0]]
        acc[0] += len(c)
        acc[1] += c.sum()
        return acc


def _read_only(a) -> np.ndarray:
    """A read-only view of ``a`` (the caller's array keeps its own flags)."""
    v = np.asarray(a).view()
    v.flags.writeable = False
    return v


class _QueryTable(_State):
    """Per-query counts (q_id, n_returned, n_relevant): a list of chunks, summed by q_id.

    A merge appends the other list's chunks without copying them: the chunks are
    read-only arrays, never written once stored (compaction makes new ones), so
    accumulators can share them while each list stays its accumulator's own.
    """
    level = 'queries'
    inputs = ('q_id', 'n_returned', 'n_relevant')
    _COMPACT_ROWS = 1 << 16

    def create(self):
        return []

    def add(self, acc, cols):
        acc.append((_read_only(cols['q_id']),
                    _read_only(np.asarray(cols['n_returned'], np.int64)),
                    _read_only(np.asarray(cols['n_relevant'], np.int64))))
        if sum(len(c[0]) for c in acc) > 2 * self._COMPACT_ROWS and len(acc) > 2:
            acc[:] = [tuple(_read_only(a) for a in self.compact(acc))]
        return acc

    def merge(self, acc, other):
        acc.extend(other)
        return acc

    @staticmethod
    def compact(acc):
        if not acc:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        q = np.concatenate([c[0] for c in acc])
        u, inv = np.unique(q, return_inverse=True)
        inv = inv.reshape(-1)
        n_ret = np.bincount(inv, np.concatenate([c[1] for c in acc]), len(u)).astype(np.int64)
        n_rel = np.bincount(inv, np.concatenate([c[2] for c in acc]), len(u)).astype(np.int64)
        return u, n_ret, n_rel


# ----------------------------------------------------------------------------- metrics

def _divide(num: float, den: float, zero_division: float) -> tuple[float, int]:
    """num / den, or (zero_division, 1 undefined case) when den == 0."""
    if den == 0:
        return float(zero_division), 1
    return float(num) / float(den), 0


def _check_zero_division(z) -> float:
    z = float(z)
    if not (z in (0.0, 1.0) or math.isnan(z)):
        raise BeammlError(f'zero_division must be 0, 1 or nan, got {z}',
                          parameters=('zero_division',))
    return z


def _check_k(k) -> int:
    if int(k) != k or k < 1:
        raise BeammlError(f'k must be an integer >= 1, got {k}', parameters=('k',))
    return int(k)


class Metric:
    """A metric: called on numpy arrays (keyword arguments), or as a Beam CombineFn.

    ``m(**arrays)`` returns the value; ``m.evaluate(**arrays)`` returns
    ``(value, n_undefined)``, the number of 0/0 cases replaced by
    ``zero_division``. Keywords the metric does not use are ignored.
    ``m.combine_fn()`` is the same metric over RecordBatches (log rows for
    classification metrics, per-query statistics for ranking metrics).
    """
    name: str = ''
    inputs: tuple[str, ...] = ()       # keyword arguments of the numpy call
    can_be_undefined = True
    _state: _State

    def __init__(self, *, zero_division: float = 0.0, name: str | None = None):
        self.zero_division = _check_zero_division(zero_division)
        if name:
            self.name = name

    @property
    def state(self) -> _State:
        """The accumulator's definition; metrics with equal states share one accumulator."""
        return self._state

    @property
    def level(self) -> str:
        return self.state.level

    def value(self, acc) -> tuple[Any, int]:
        """(value, number of undefined cases) from the state's accumulator."""
        raise NotImplementedError

    def _prepare(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        return arrays

    def evaluate(self, **arrays) -> tuple[Any, int]:
        missing = [k for k in self.inputs if k not in arrays]
        if missing:
            raise TypeError(f'{type(self).__name__} needs the keyword argument(s) '
                            f'{", ".join(missing)}')
        cols = self._prepare({k: arrays[k] for k in self.inputs})
        acc = self.state.add(self.state.create(), cols)
        return self.value(acc)

    def __call__(self, **arrays):
        return self.evaluate(**arrays)[0]

    def combine_fn(self) -> MetricCombineFn:
        return MetricCombineFn(self)

    def __repr__(self):
        return f'{type(self).__name__}(name={self.name!r})'


class _ClassificationMetric(Metric):
    inputs = ROW_INPUTS
    _state = _Confusion()

    def _prepare(self, arrays):
        return {'truth': binary_labels(arrays['truth'], 'truth'),
                'prediction': binary_labels(arrays['prediction'], 'prediction')}

    def value(self, acc):
        tp, fp, tn, fn = (int(x) for x in acc)
        return self._value(tp, fp, tn, fn)


class Precision(_ClassificationMetric):
    """tp / (tp + fp)."""
    name = 'precision'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp, tp + fp, self.zero_division)


class Recall(_ClassificationMetric):
    """tp / (tp + fn)."""
    name = 'recall'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp, tp + fn, self.zero_division)


class Accuracy(_ClassificationMetric):
    """(tp + tn) / n; undefined for no rows."""
    name = 'accuracy'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp + tn, tp + fp + tn + fn, self.zero_division)


class F1(_ClassificationMetric):
    """2 tp / (2 tp + fp + fn), as scikit-learn's f1_score (undefined only when all are 0)."""
    name = 'f1'

    def _value(self, tp, fp, tn, fn):
        return _divide(2 * tp, 2 * tp + fp + fn, self.zero_division)


class ConfusionCounts(_ClassificationMetric):
    """``{'tp', 'fp', 'tn', 'fn'}`` counts."""
    name = 'confusion'
    can_be_undefined = False

    def _value(self, tp, fp, tn, fn):
        return {'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn}, 0


class _RankingMetric(Metric):
    inputs = RANKING_INPUTS
    ks: tuple[int, ...] = ()

    def _prepare(self, arrays):
        return query_stats(arrays['q_id'], arrays['predicted_rank'],
                           arrays['truth_relevance'], self.ks)


class QueryPrecision(_RankingMetric):
    """Per query: relevant / returned rows.

    The value is a dict of arrays sorted by q_id: ``q_id, n_returned, n_relevant,
    precision``. Its accumulator holds per-query counts, summed by q_id on merge.
    """
    name = 'query_precision'
    can_be_undefined = False
    _state = _QueryTable()

    def value(self, acc):
        q, n_ret, n_rel = _QueryTable.compact(acc)
        with np.errstate(invalid='ignore', divide='ignore'):
            prec = n_rel / n_ret
        return {'q_id': q, 'n_returned': n_ret, 'n_relevant': n_rel, 'precision': prec}, 0


class AverageQueryPrecision(_RankingMetric):
    """Mean over queries of relevant / returned (each query weighs the same)."""
    name = 'average_query_precision'
    _state = _QuerySums()

    def value(self, acc):
        return _divide(acc[1], acc[0], self.zero_division)


class MeanAveragePrecision(_RankingMetric):
    """Mean over queries of AP (see the module docstring).

    Undefined cases: the queries without a relevant row (their AP is
    ``zero_division``), or 1 when there is no query at all.
    """
    name = 'mean_average_precision'
    _state = _QuerySums()

    def value(self, acc):
        n, ap, n_without = acc[0], acc[2], int(acc[3])
        if n == 0:
            return float(self.zero_division), 1
        total = ap + (self.zero_division * n_without if n_without else 0.0)
        return float(total / n), n_without


class QueryCount(_RankingMetric):
    """The number of queries."""
    name = 'n_queries'
    can_be_undefined = False
    _state = _QuerySums()

    def value(self, acc):
        return int(acc[0]), 0


class PrecisionAtK(_RankingMetric):
    """Per query (relevant rows with predicted_rank < k) / k, averaged over queries."""
    name = 'precision_at_k'

    def __init__(self, k: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.k = _check_k(k)
        self.ks = (self.k,)
        self._state = _AtK(self.k)

    def value(self, acc):
        return _divide(acc[1] / self.k, acc[0], self.zero_division)


def per_query_metrics(stats: Mapping[str, Any], k: int,
                      zero_division: float = 0.0) -> dict[str, np.ndarray]:
    """Each query's precision, precision at k and average precision from its statistics.

    Parameters
    ----------
    stats : mapping of column name to array of shape (n_queries,)
        Per-query statistics: the dict of :func:`query_stats`, or a batch of
        :class:`QueryStats` (a ``pyarrow.RecordBatch``), with ``n_returned``,
        ``n_relevant``, ``n_relevant_at_<k>`` and ``ap_sum``.
    k : the k of precision at k
    zero_division : the AP of a query without a relevant row (0, 1 or nan), as
        :class:`MeanAveragePrecision`

    Returns
    -------
    dict of ndarray of shape (n_queries,), float64
        ``precision`` (relevant / returned), ``precision_at_k`` (relevant rows with
        ``predicted_rank < k``, divided by k) and ``average_precision``: the
        per-query values that :class:`AverageQueryPrecision`,
        :class:`PrecisionAtK` and :class:`MeanAveragePrecision` average.
    """
    k, zero_division = _check_k(k), _check_zero_division(zero_division)
    n_ret = np.asarray(stats['n_returned'], np.float64)
    n_rel = np.asarray(stats['n_relevant'], np.float64)
    at_k = np.asarray(stats[f'n_relevant_at_{k}'], np.float64)
    ap_sum = np.asarray(stats['ap_sum'], np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        ap = np.where(n_rel > 0, ap_sum / n_rel, zero_division)
    return {'precision': n_rel / n_ret, 'precision_at_k': at_k / k, 'average_precision': ap}


CLASSIFICATION_METRICS = {
    'precision': Precision, 'recall': Recall, 'accuracy': Accuracy, 'f1': F1,
    'confusion': ConfusionCounts,
}
RANKING_METRICS = {
    'average_query_precision': AverageQueryPrecision, 'precision_at_k': PrecisionAtK,
    'mean_average_precision': MeanAveragePrecision, 'n_queries': QueryCount,
}
