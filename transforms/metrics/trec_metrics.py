"""trec_eval's measures as :class:`~beamml.transforms.metrics.definitions.Metric` objects:
the mean over queries of a per-query value (a column of the per-query statistics of
:class:`~beamml.transforms.metrics.qrels.JudgedQueryStats`), combined with a small
``[n_queries, sum, n_undefined]`` accumulator, so an overall value is always the mean of
the per-query rows (as trec_eval's ``all`` line)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from beamml.transforms.metrics.definitions import Metric, _State
from beamml.transforms.metrics.ranking_measures import (CUTOFF_MEASURES, ZERO_WITHOUT_RELEVANT,
                                                        measure_columns, parse_measures)

__all__ = ['TrecMeasure', 'trec_metrics']


class _ColumnMean(_State):
    """[n_queries, sum of the column, queries whose value is a 0/0 taken as 0]."""
    level = 'queries'

    def __init__(self, column: str, undefined_by: str | None):
        self.column, self.undefined_by = column, undefined_by
        self.inputs = (column,) + ((undefined_by,) if undefined_by else ())

    def _params(self):
        return (self.column, self.undefined_by)

    def create(self):
        return np.zeros(3)

    def add(self, acc, cols):
        v = np.asarray(cols[self.column], np.float64)
        acc[0] += len(v)
        acc[1] += v.sum()
        if self.undefined_by:
            acc[2] += int((np.asarray(cols[self.undefined_by]) == 0).sum())
        return acc


class TrecMeasure(Metric):
    """One of trec_eval's measures (``map``, ``P_5``, ``ndcg_cut_10``...): the mean over
    queries of its per-query value. A query whose value is a 0/0 (no relevant judged
    document: recall, Rprec, map, map_cut; no judged document with a gain > 0: ndcg_cut)
    counts 0, as in trec_eval, and is counted under ``undefined``; ``zero_division`` is
    the value when there is no query at all.

    Called on per-query statistics: ``TrecMeasure('map')(map=..., num_rel=...)``.
    """
    level = 'queries'

    def __init__(self, column: str, *, zero_division: float = 0.0):
        super().__init__(zero_division=zero_division, name=column)
        base = column.rsplit('_', 1)[0] if column.rsplit('_', 1)[-1].isdigit() else column
        parse_measures([base])
        undefined_by = ('num_rel' if base in ZERO_WITHOUT_RELEVANT
                        else 'num_gain' if base == 'ndcg_cut' else None)
        self.can_be_undefined = True
        self._state = _ColumnMean(column, undefined_by)
        self.inputs = self._state.inputs
        self.cutoff = int(column.rsplit('_', 1)[1]) if base in CUTOFF_MEASURES else None

    def value(self, acc):
        n, total, undefined = acc[0], acc[1], int(acc[2])
        if n == 0:
            return float(self.zero_division), 1
        return float(total / n), undefined


def trec_metrics(measures: Sequence[str], cutoffs: Sequence[int],
                 zero_division: float = 0.0) -> list[TrecMeasure]:
    """One :class:`TrecMeasure` per value of ``measures`` at ``cutoffs``."""
    return [TrecMeasure(c, zero_division=zero_division)
            for c in measure_columns(measures, cutoffs)]
