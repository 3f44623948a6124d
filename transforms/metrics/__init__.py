"""Evaluation metrics of prediction logs, each defined once for numpy arrays and for Beam.

Modules:

* ``parsing``: log columns to typed labels, ranks, relevances and query ids, slice
  keys, and ``ParsePredictionLogs`` (unusable rows become dead letters);
* ``kernels``: numpy kernels, confusion counts and per-query statistics of ranking rows;
* ``definitions``: the ``Metric`` classes and their accumulator states (Precision,
  Recall, ..., MeanAveragePrecision, PrecisionAtK), and ``per_query_metrics``,
  each query's precision, P@k and AP from its statistics;
* ``ranking``: ranking rows to per-query statistics in Beam (``QueryStats``: query
  buckets, the packed fragments of the shuffle, the per-query reduction);
* ``compute``: the metrics as CombineFns, and ``ComputeMetrics``, every metric overall
  and per slice in one pass;
* ``multiclass``, ``scores``, ``bootstrap`` (numpy kernels), ``classification`` (their
  ``Metric`` classes: multiclass, weighted, ROC AUC, AP, log loss, reliability, with
  Poisson-bootstrap intervals) and ``class_logs`` (``ParseClassificationLogs``).
* ``ranking_measures``: trec_eval's measures per query (numpy kernels, ``trec_measures``);
  ``trec``: TREC run and qrels files; ``qrels``: runs joined with judgments in Beam
  (``JudgedQueryStats``); ``trec_metrics``: those measures as ``Metric`` objects.
"""
from beamml.transforms.metrics.class_logs import ClassificationColumns, ParseClassificationLogs
from beamml.transforms.metrics.classification import (AveragePrecision, BalancedAccuracy,
                                                      ClassAccuracy, ClassF1, ClassPrecision,
                                                      ClassRecall, ConfusionMatrix, FBeta,
                                                      LogLoss, PerClass, Reliability, RocAuc)
from beamml.transforms.metrics.compute import (ComputeMetrics, MetricCombineFn, MetricsCombineFn,
                                               merge_results)
from beamml.transforms.metrics.definitions import (CLASSIFICATION_METRICS, RANKING_METRICS, F1,
                                                   Accuracy, AverageQueryPrecision, ConfusionCounts,
                                                   MeanAveragePrecision, Metric, Precision,
                                                   PrecisionAtK, QueryCount, QueryPrecision, Recall,
                                                   per_query_metrics)
from beamml.transforms.metrics.kernels import confusion_counts, query_stats
from beamml.transforms.metrics.logs import ParsePredictionLogs
from beamml.transforms.metrics.parsing import (SLICE_COLUMN, binary_labels,
                                               parse_binary, parse_query_ids, parse_rank,
                                               parse_relevance, slice_keys)
from beamml.transforms.metrics.qrels import JudgedQueryStats, StreamingJudgedQueryStats
from beamml.transforms.metrics.ranking import QueryStats, query_buckets
from beamml.transforms.metrics.ranking_measures import TREC_MEASURES, trec_measures
from beamml.transforms.metrics.trec import ReadTrecFiles
from beamml.transforms.metrics.trec_metrics import TrecMeasure, trec_metrics

__all__ = [
    'Metric', 'Precision', 'Recall', 'Accuracy', 'F1', 'ConfusionCounts',
    'QueryPrecision', 'AverageQueryPrecision', 'PrecisionAtK', 'MeanAveragePrecision',
    'QueryCount', 'CLASSIFICATION_METRICS', 'RANKING_METRICS', 'per_query_metrics',
    'binary_labels', 'confusion_counts', 'parse_binary', 'parse_rank', 'parse_relevance',
    'parse_query_ids', 'query_stats', 'query_buckets', 'slice_keys',
    'MetricCombineFn', 'MetricsCombineFn', 'merge_results', 'ParsePredictionLogs',
    'QueryStats', 'ComputeMetrics', 'SLICE_COLUMN',
    'ClassAccuracy', 'ClassPrecision', 'ClassRecall', 'ClassF1', 'FBeta', 'BalancedAccuracy',
    'ConfusionMatrix', 'PerClass', 'RocAuc', 'AveragePrecision', 'LogLoss', 'Reliability',
    'ClassificationColumns', 'ParseClassificationLogs',
    'TREC_MEASURES', 'trec_measures', 'TrecMeasure', 'trec_metrics', 'ReadTrecFiles',
    'JudgedQueryStats', 'StreamingJudgedQueryStats',
]
