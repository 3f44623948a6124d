"""The Beam composites of monitoring: statistics of a data set against a baseline (one
pass), and a baseline made from a data set (two passes: min and max, then the bins).

    profile = points.batches | 'MonitorStatistics' >> MonitorStatistics(baseline, model_pc)
    doc = points.batches | 'MakeBaseline' >> MakeBaseline(names, model_pc, model=model)

Both take the model (a :class:`~beamml.transforms.model.CentroidModel`) as a singleton
side input (a PCollection of one model), or None for statistics of the points alone.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from beamml.transforms.kmeans.combiners import SumArraysCombineFn
from beamml.transforms.monitoring.baseline import (FINE_BINS, Baseline, fine_edges, make_baseline,
                                                   make_profile)
from beamml.transforms.monitoring.stats import ColumnStatsFn, bin_counts, monitor_columns

__all__ = ['MonitorColumns', 'MonitorStatistics', 'MakeBaseline']


def _columns(batch, model=None):
    yield monitor_columns(batch, model)


class MonitorColumns(beam.PTransform):
    """Points batches -> column batches ``(values, labels)`` (stats.monitor_columns)."""

    def __init__(self, model_pc=None):
        super().__init__()
        self.model_pc = model_pc

    def expand(self, batches):
        if self.model_pc is None:
            return batches | 'Columns' >> beam.FlatMap(_columns)
        return batches | 'Columns' >> beam.FlatMap(_columns,
                                                   beam.pvalue.AsSingleton(self.model_pc))


class MonitorStatistics(beam.PTransform):
    """Points batches -> one profile document (baseline.make_profile), binned on the
    baseline's fine edges, in one pass of :class:`ColumnStatsFn`. ``refused`` (a
    PCollection of one count, optional) is the reader's dead letters."""

    def __init__(self, baseline: Baseline, model_pc=None, refused=None):
        super().__init__()
        self.baseline, self.model_pc, self.refused = baseline, model_pc, refused

    def expand(self, batches):
        b = self.baseline
        k = b.doc['model']['k'] if b.with_model and self.model_pc is not None else None
        with_model = k is not None
        edges = b.edges if with_model else b.edges[:len(b.names) + 1]
        stats = (batches
                 | 'MonitorColumns' >> MonitorColumns(self.model_pc if with_model else None)
                 | 'ColumnStatistics' >> beam.CombineGlobally(
                     ColumnStatsFn(len(edges), k, edges)))
        refused = self.refused or (batches.pipeline | 'NoRefused' >> beam.Create([0]))
        return stats | 'Profile' >> beam.Map(
            _profile, b.names, edges, with_model, beam.pvalue.AsSingleton(refused),
            b.doc.get('far_index'))


def _profile(stats, names, edges, with_model, refused, far_index):
    return make_profile(names, stats, edges, with_model, refused, far_index)


def _edges(stats):
    m = stats['moments']
    return fine_edges(m['min'], m['max'], FINE_BINS)


def _binned(columns, edges):
    return bin_counts(columns[0], edges)


def _baseline(stats, counts, edges, names, model, refused, source):
    if counts is None:   # no batch: the empty counts on the edges
        counts = np.zeros((edges.shape[0], edges.shape[1] + 1), np.int64)
    return make_baseline(names, {**stats, 'counts': counts}, edges, model=model,
                         refused=refused, source=source)


class MakeBaseline(beam.PTransform):
    """Points batches -> one baseline document: the min and max of every column first
    (:class:`ColumnStatsFn` without edges), then the counts on :data:`FINE_BINS` bins
    between them. ``model`` (the same model as ``model_pc``'s, for its k and version)."""

    def __init__(self, names: list[str], model_pc=None, *, model=None, refused=None,
                 source: str | None = None):
        super().__init__()
        self.names, self.model_pc, self.model = list(names), model_pc, model
        self.refused, self.source = refused, source

    def expand(self, batches):
        side = beam.pvalue.AsSingleton
        c = len(self.names) + 1 + (self.model is not None)
        k = self.model.k if self.model is not None else None
        columns = batches | 'MonitorColumns' >> MonitorColumns(self.model_pc)
        stats = columns | 'ColumnRanges' >> beam.CombineGlobally(ColumnStatsFn(c, k))
        edges = stats | 'FineEdges' >> beam.Map(_edges)
        counts = (columns
                  | 'Bin' >> beam.Map(_binned, side(edges))
                  | 'SumBins' >> beam.CombineGlobally(SumArraysCombineFn()))
        refused = self.refused or (batches.pipeline | 'NoRefused' >> beam.Create([0]))
        return stats | 'Baseline' >> beam.Map(
            _baseline, side(counts), side(edges), self.names, self.model, side(refused),
            self.source)
