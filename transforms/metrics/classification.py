"""Multiclass, weighted and score-based classification metrics (``Metric`` classes).

Rows (parsed by :class:`~beamml.transforms.metrics.class_logs.ParseClassificationLogs`)
hold ``truth`` and ``prediction`` as class names (text), ``_weights`` (a fixed-size
list of R floats: the row's sample weight, then B bootstrap weights, see
:mod:`~beamml.transforms.metrics.bootstrap`) and, for score metrics, ``score`` (binary)
or ``score_0 .. score_<k-1>`` (the probabilities of the classes, in the order given).

Two accumulators serve every metric here: the labelled confusion matrix
(:mod:`~beamml.transforms.metrics.multiclass`) for accuracy, precision, recall, F-beta,
balanced accuracy, the confusion matrix and the per-class table; and the score
tables, log-loss sums and reliability bins (:mod:`~beamml.transforms.metrics.scores`)
for ROC AUC, average precision, log loss and the reliability table. Every value is
computed for the R weightings at once; with bootstrap replicates a metric also gives
``intervals``: lower, upper and standard error (see ``MetricsCombineFn``'s
``confidence_intervals``).

On numpy arrays: ``ClassPrecision(average='macro')(truth=t, prediction=p,
sample_weight=w)``, ``RocAuc()(truth=t, score=s)``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.metrics.bootstrap import bootstrap_interval
from beamml.transforms.metrics.definitions import Metric, _read_only, _State
from beamml.transforms.metrics.multiclass import (AVERAGES, accuracy, balanced_accuracy,
                                                  class_order, labelled_matrix, merge_matrices,
                                                  prf)
from beamml.transforms.metrics.parsing import parse_classes, parse_score
from beamml.transforms.metrics.scores import (average_precision, log_loss_sums, merge_tables,
                                              reliability_sums, reliability_table, roc_auc,
                                              score_table)

__all__ = ['WEIGHTS', 'ClassAccuracy', 'ClassPrecision', 'ClassRecall', 'ClassF1', 'FBeta',
           'BalancedAccuracy', 'ConfusionMatrix', 'PerClass', 'RocAuc', 'AveragePrecision',
           'LogLoss', 'Reliability', 'MULTICLASS_METRICS', 'SCORE_METRICS']

#: the column of row weightings: (sample weight, bootstrap weight 1 .. B)
WEIGHTS = '_weights'


# ----------------------------------------------------------------------------- states

class _ClassMatrix(_State):
    """The labelled confusion matrix ``(labels, M of shape (R, k, k))``; ``((), None)`` empty."""
    inputs = ('truth', 'prediction', WEIGHTS)

    def create(self):
        return (), None

    def add(self, acc, cols):
        return merge_matrices(acc, labelled_matrix(cols['truth'], cols['prediction'],
                                                   cols[WEIGHTS]))

    def merge(self, acc, other):
        return merge_matrices(acc, other)


class _Scores(_State):
    """Score tables (one per class; one for a binary score), log-loss sums, reliability bins.

    ``classes`` None: one binary score column ``score``, the class ``pos_label``
    positive. Otherwise the probability columns ``score_<i>`` of ``classes``.
    Tables are kept as a list of read-only chunks per class, merged into one when
    they hold more than twice their largest chunk (amortised: each distinct score is
    re-merged O(log n) times); a merge appends the other's chunks without copying.
    """

    def __init__(self, classes: Sequence[str] | None, pos_label: str = '1', n_bins: int = 10):
        self.classes = None if classes is None else tuple(classes)
        self.pos_label, self.n_bins = pos_label, int(n_bins)
        scores = ('score',) if classes is None else tuple(f'score_{i}'
                                                          for i in range(len(classes)))
        self.inputs = ('truth', WEIGHTS) + scores

    def _params(self):
        return (self.classes, self.pos_label, self.n_bins)

    @property
    def n_tasks(self) -> int:
        return 1 if self.classes is None else len(self.classes)

    def create(self):
        return {'tables': [[] for _ in range(self.n_tasks)], 'loss': None, 'bins': None,
                'outside': 0}

    def add(self, acc, cols):
        w = np.asarray(cols[WEIGHTS], np.float64)
        truth = cols['truth']
        if self.classes is None:
            s = np.asarray(cols['score'], np.float64)
            positive = np.asarray(pc.fill_null(pc.equal(truth, self.pos_label), False))
            probs, pos_cols = s[:, None], positive[:, None]
            p_true = np.where(positive, s, 1.0 - s)
        else:
            code = np.asarray(pc.index_in(truth, value_set=pa.array(self.classes)).fill_null(-1)
                              ).astype(np.int64)
            probs = np.stack([np.asarray(cols[f'score_{i}'], np.float64)
                              for i in range(self.n_tasks)], axis=1)
            if (code < 0).any():
                raise ValueError(f'truth holds a class that is not one of {self.classes}')
            pos_cols = code[:, None] == np.arange(self.n_tasks)[None, :]
            p_true = probs[np.arange(len(code)), np.maximum(code, 0)]
        outside = int(((probs < 0) | (probs > 1)).any(axis=1).sum())
        for c in range(self.n_tasks):
            table = tuple(_read_only(a) for a in score_table(probs[:, c], pos_cols[:, c], w))
            chunks = acc['tables'][c]
            chunks.append(table)
            sizes = [len(t[0]) for t in chunks]
            if len(chunks) > 2 and sum(sizes) > 2 * max(sizes):
                chunks[:] = [tuple(_read_only(a) for a in merge_tables(chunks))]
        loss = log_loss_sums(p_true, w)
        bins = np.stack([reliability_sums(np.clip(probs[:, c], 0, 1), pos_cols[:, c], w,
                                          self.n_bins) for c in range(self.n_tasks)])
        acc['loss'] = loss if acc['loss'] is None else acc['loss'] + loss
        acc['bins'] = bins if acc['bins'] is None else acc['bins'] + bins
        acc['outside'] += outside
        return acc

    def merge(self, acc, other):
        for mine, theirs in zip(acc['tables'], other['tables']):
            mine.extend(theirs)
        for k in ('loss', 'bins'):
            if other[k] is not None:
                acc[k] = other[k].copy() if acc[k] is None else acc[k] + other[k]
        acc['outside'] += other['outside']
        return acc


# ----------------------------------------------------------------------------- metrics

def _check_average(average: str) -> str:
    if average not in AVERAGES:
        raise BeammlError(f'average must be one of {", ".join(AVERAGES)}, got {average!r}',
                          parameters=('average',))
    return average


def _check_beta(beta) -> float:
    beta = float(beta)
    if not beta >= 0:
        raise BeammlError(f'beta must be a number >= 0, got {beta}', parameters=('beta',))
    return beta


def _texts(values, name: str) -> pa.Array:
    labels, missing, invalid = parse_classes(values)
    if (missing | invalid).any():
        i = int(np.flatnonzero(missing | invalid)[0])
        raise ValueError(f'{name} holds a value that is not a class label at index {i}')
    return labels


class _ReplicatedMetric(Metric):
    """A metric computed for every weighting; ``value`` is weighting 0's, ``intervals``
    the bootstrap interval of the others (None without replicates)."""
    confidence_level = 0.95

    def replicates(self, acc) -> tuple[np.ndarray, list | None, int]:
        """``(values of shape (R,) or (R, k), class labels of the k columns or None,
        n_undefined)``."""
        raise NotImplementedError

    @staticmethod
    def _shape(v, labels):
        if labels is None:
            return float(v)
        return {c: float(x) for c, x in zip(labels, v)}

    def value(self, acc):
        v, labels, undefined = self.replicates(acc)
        return self._shape(v[0], labels), undefined

    def intervals(self, acc) -> dict | None:
        v, labels, _ = self.replicates(acc)
        if len(v) < 2:
            return None
        ci = bootstrap_interval(v[1:], self.confidence_level)
        if labels is None:
            return {k: float(x) for k, x in ci.items()}
        return {c: {k: float(x[i]) for k, x in ci.items()} for i, c in enumerate(labels)}

    def evaluate(self, **arrays):
        missing = [k for k in self.inputs if k not in arrays]
        if missing:
            raise TypeError(f'{type(self).__name__} needs the keyword argument(s) '
                            f'{", ".join(missing)}')
        n = len(arrays[self.inputs[0]])
        w = arrays.get('sample_weight')
        w = np.ones((n, 1)) if w is None else np.asarray(w, np.float64).reshape(n, -1)
        cols = {WEIGHTS: w}
        for k in self.inputs:
            if k in ('truth', 'prediction'):
                cols[k] = _texts(arrays[k], k)
            elif k == 'score':
                s = np.asarray(arrays[k], np.float64)
                if s.ndim == 2:
                    cols.update({f'score_{i}': s[:, i] for i in range(s.shape[1])})
                else:
                    cols['score'] = parse_score(s)[0]
        acc = self.state.add(self.state.create(), cols)
        return self.value(acc)


class _MatrixMetric(_ReplicatedMetric):
    inputs = ('truth', 'prediction')
    _state = _ClassMatrix()

    def __init__(self, *, average: str = 'binary', beta: float = 1.0, pos_label: str = '1',
                 zero_division: float = 0.0, confidence_level: float = 0.95,
                 name: str | None = None):
        super().__init__(zero_division=zero_division, name=name)
        self.average, self.beta = _check_average(average), _check_beta(beta)
        self.pos_label, self.confidence_level = str(pos_label), float(confidence_level)

    @staticmethod
    def _matrix(acc):
        labels, m = acc
        if m is None:
            return [], np.zeros((1, 0, 0))
        order = class_order(labels)
        return [labels[i] for i in order], m[:, order][:, :, order]


class _PRF(_MatrixMetric):
    part = 'precision'

    def replicates(self, acc):
        labels, m = self._matrix(acc)
        beta = 1.0 if self.part == 'f1' else self.beta
        out = prf(m, labels, self.average, beta, self.zero_division, self.pos_label)
        key = 'fbeta' if self.part == 'f1' else self.part
        return out[key], (labels if self.average == 'none' else None), out['undefined'][key]


class ClassPrecision(_PRF):
    """Precision, averaged as ``average`` says (scikit-learn's precision_score)."""
    name, part = 'precision', 'precision'


class ClassRecall(_PRF):
    """Recall, averaged as ``average`` says (recall_score)."""
    name, part = 'recall', 'recall'


class ClassF1(_PRF):
    """F1, averaged as ``average`` says (f1_score)."""
    name, part = 'f1', 'f1'


class FBeta(_PRF):
    """F-beta, (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp), averaged (fbeta_score)."""
    name, part = 'fbeta', 'fbeta'


class ClassAccuracy(_MatrixMetric):
    """Weighted share of rows whose prediction is the truth (accuracy_score)."""
    name = 'accuracy'

    def replicates(self, acc):
        v, u = accuracy(self._matrix(acc)[1], self.zero_division)
        return v, None, u


class BalancedAccuracy(_MatrixMetric):
    """Mean recall of the classes that have true rows (balanced_accuracy_score)."""
    name = 'balanced_accuracy'

    def replicates(self, acc):
        v, u = balanced_accuracy(self._matrix(acc)[1], self.zero_division)
        return v, None, u


class ConfusionMatrix(_MatrixMetric):
    """``{'labels': [...], 'matrix': [[...]]}``, rows the truth (confusion_matrix)."""
    name = 'confusion_matrix'
    can_be_undefined = False
    weighted = False   # True: weights are not integers, the matrix holds floats

    def value(self, acc):
        labels, m = self._matrix(acc)
        m0 = m[0]
        whole = np.all(m0 == np.round(m0))
        rows = m0.astype(np.int64).tolist() if whole and not self.weighted else m0.tolist()
        return {'labels': labels, 'matrix': rows}, 0

    def intervals(self, acc):
        return None


class PerClass(_MatrixMetric):
    """One row per class: precision, recall, f1, fbeta and support (weighted true rows)."""
    name = 'per_class'
    can_be_undefined = False

    def value(self, acc):
        labels, m = self._matrix(acc)
        p = prf(m[:1], labels, 'none', self.beta, self.zero_division)
        f1 = prf(m[:1], labels, 'none', 1.0, self.zero_division)['fbeta']
        return {c: {'precision': float(p['precision'][0, i]), 'recall': float(p['recall'][0, i]),
                    'f1': float(f1[0, i]), 'fbeta': float(p['fbeta'][0, i]),
                    'support': float(p['support'][0, i])}
                for i, c in enumerate(labels)}, 0

    def intervals(self, acc):
        return None


class _ScoreMetric(_ReplicatedMetric):
    """A metric of scores: a binary ``score`` (``classes`` None) or class probabilities."""
    inputs = ('truth', 'score')

    def __init__(self, *, classes: Sequence[str] | None = None, average: str = 'macro',
                 pos_label: str = '1', n_bins: int = 10, zero_division: float = 0.0,
                 confidence_level: float = 0.95, name: str | None = None):
        super().__init__(zero_division=zero_division, name=name)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.average = _check_average(average)
        self.pos_label, self.confidence_level = str(pos_label), float(confidence_level)
        self._state = _Scores(self.classes, self.pos_label, n_bins)


class _Ranked(_ScoreMetric):
    kernel: Any = None

    def replicates(self, acc):
        tables = [merge_tables(chunks) for chunks in acc['tables']]
        if self.classes is None or self.average == 'micro':
            v, u = type(self).kernel(merge_tables(tables), self.zero_division)
            return v, None, u
        if self.average == 'binary':
            if self.pos_label not in self.classes:
                return np.full(1, self.zero_division), None, 1
            v, u = type(self).kernel(tables[self.classes.index(self.pos_label)],
                                     self.zero_division)
            return v, None, u
        r = max((t[1].shape[0] for t in tables if len(t[0])), default=1)
        per = [type(self).kernel(t, self.zero_division) if len(t[0])
               else (np.full(r, self.zero_division), 1) for t in tables]
        v = np.stack([x[0] for x in per], axis=1)   # (R, k)
        undefined = sum(x[1] for x in per)
        if self.average == 'none':
            return v, self.classes, undefined
        if self.average == 'weighted':
            w = np.stack([t[1].sum(axis=1) if len(t[0]) else np.zeros(r) for t in tables],
                         axis=1)
            ws = w.sum(axis=1)
            with np.errstate(invalid='ignore', divide='ignore'):
                out = np.where(np.isclose(ws, 0.0), 0.0,
                               (w * v).sum(axis=1) / np.where(ws > 0, ws, 1.0))
            return out, None, undefined
        return v.mean(axis=1), None, undefined


class RocAuc(_Ranked):
    """Area under the ROC curve, exact (roc_auc_score; one-vs-rest for class probabilities)."""
    name = 'roc_auc'
    kernel = staticmethod(roc_auc)


class AveragePrecision(_Ranked):
    """Average precision, exact (average_precision_score; one-vs-rest for classes)."""
    name = 'average_precision'
    kernel = staticmethod(average_precision)


class LogLoss(_ScoreMetric):
    """Weighted mean of -log(probability of the true class) (log_loss); undefined when a
    score is outside [0, 1] (``score`` is not a probability) or there is no weight."""
    name = 'log_loss'

    def replicates(self, acc):
        if acc['loss'] is None or acc['outside']:
            return np.full(1, self.zero_division), None, max(1, acc['outside'])
        s, w = acc['loss']
        with np.errstate(invalid='ignore', divide='ignore'):
            out = np.where(w > 0, s / np.where(w > 0, w, 1.0), self.zero_division)
        return out, None, int(w[0] == 0)


class Reliability(_ScoreMetric):
    """Reliability (calibration) table: per non-empty bin of the probability, its weight,
    mean probability and weighted fraction of positives (calibration_curve); per class
    for class probabilities. Empty when a score is outside [0, 1]."""
    name = 'reliability'
    can_be_undefined = False

    def value(self, acc):
        bins = acc['bins']
        if bins is None or acc['outside']:   # no row, or scores that are not probabilities
            return ([] if self.classes is None else {c: [] for c in self.classes}), 0
        if self.classes is None:
            return reliability_table(bins[0]), 0
        return {c: reliability_table(bins[i]) for i, c in enumerate(self.classes)}, 0

    def intervals(self, acc):
        return None


MULTICLASS_METRICS = {
    'accuracy': ClassAccuracy, 'precision': ClassPrecision, 'recall': ClassRecall,
    'f1': ClassF1, 'fbeta': FBeta, 'balanced_accuracy': BalancedAccuracy,
    'confusion_matrix': ConfusionMatrix, 'per_class': PerClass,
}
SCORE_METRICS = {'roc_auc': RocAuc, 'average_precision': AveragePrecision,
                 'log_loss': LogLoss, 'reliability': Reliability}
