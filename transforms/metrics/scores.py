"""Numpy kernels of score measures: exact ROC AUC and average precision, log loss, reliability.

ROC AUC and average precision need the rows ordered by score. They are computed
exactly from a *score table*: the distinct scores in ascending order with, for each,
the summed weights of its positive and of its negative rows, ``(s, pos, neg)``,
``s`` of shape ``(m,)`` and ``pos``, ``neg`` of shape ``(R, m)`` (``R`` weightings:
1, or 1 + the bootstrap replicates). Tables of different batches merge by the union
of their scores (a sorted merge: ``np.unique`` of both, weights summed), so the
ordered pass at the end sees every row, ties grouped as scikit-learn's
``_binary_clf_curve`` groups them. A table holds 8 (2R + 1) bytes per distinct score:
its size is that of the distinct scores, not of the rows (scores rounded to 6
digits hold at most a million).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from beamml.transforms.metrics.multiclass import weighted_sums

__all__ = ['score_table', 'merge_tables', 'roc_auc', 'average_precision', 'log_loss_sums',
           'reliability_sums', 'reliability_table', 'EMPTY_TABLE']


def EMPTY_TABLE(r: int = 1):
    """The table of no row."""
    return np.zeros(0), np.zeros((r, 0)), np.zeros((r, 0))


def _group(s: np.ndarray, pos: np.ndarray, neg: np.ndarray):
    """Sum ``pos`` and ``neg`` (shape (R, n)) over equal values of ``s`` (shape (n,))."""
    if len(s) == 0:
        return s.astype(np.float64), pos, neg
    u, inv = np.unique(s, return_inverse=True)
    inv = inv.reshape(-1)
    both = np.concatenate([pos, neg]).T   # (n, 2R)
    sums = weighted_sums(inv, both, len(u)) if both.shape[1] > 1 else \
        np.bincount(inv, both[:, 0], len(u))[None, :]
    r = pos.shape[0]
    return u, sums[:r], sums[r:]


def score_table(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray):
    """The score table of one batch.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,), finite floats
    positive : ndarray of shape (n_samples,), bool
    weights : ndarray of shape (n_samples, R)
    """
    w = np.asarray(weights, np.float64).T
    pos = np.where(positive[None, :], w, 0.0)
    return _group(np.asarray(scores, np.float64), pos, w - pos)


def merge_tables(tables: Sequence[tuple]):
    """One table of several (a new one; the inputs are not changed)."""
    tables = [t for t in tables if len(t[0])]
    if not tables:
        return EMPTY_TABLE()
    if len(tables) == 1:
        s, p, n = tables[0]
        return s.copy(), p.copy(), n.copy()
    return _group(np.concatenate([t[0] for t in tables]),
                  np.concatenate([t[1] for t in tables], axis=1),
                  np.concatenate([t[2] for t in tables], axis=1))


def _descending(table):
    s, pos, neg = table
    return pos[:, ::-1], neg[:, ::-1]


def roc_auc(table, zero_division: float = 0.0) -> tuple[np.ndarray, int]:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``), exact, ties as one step.

    Each distinct score s moves the curve by (neg_s / N, pos_s / P): the area is
    sum over s (descending) of neg_s (2 cum_pos_before_s + pos_s) / (2 P N). Undefined
    (``zero_division``) without positive or negative weight.

    Returns ``(ndarray of shape (R,), 1 if weighting 0 is undefined else 0)``.
    """
    pos, neg = _descending(table)
    p_total, n_total = pos.sum(axis=1), neg.sum(axis=1)
    before = np.cumsum(pos, axis=1) - pos
    area = (neg * (2.0 * before + pos)).sum(axis=1)
    den = 2.0 * p_total * n_total
    ok = (p_total > 0) & (n_total > 0)
    with np.errstate(invalid='ignore', divide='ignore'):
        out = np.where(ok, area / np.where(ok, den, 1.0), zero_division)
    return out, int(not ok[0])


def average_precision(table, zero_division: float = 0.0) -> tuple[np.ndarray, int]:
    """Average precision (scikit-learn's ``average_precision_score``), exact.

    AP = sum over distinct scores s (descending) of (pos_s / P) * precision at s, where
    precision at s = (positive weight with score >= s) / (weight with score >= s).
    Undefined (``zero_division``) without positive weight.
    """
    pos, neg = _descending(table)
    tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    p_total = pos.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        prec = np.where(tps + fps > 0, tps / np.where(tps + fps > 0, tps + fps, 1.0), 0.0)
        ok = p_total > 0
        out = np.where(ok, (pos * prec).sum(axis=1) / np.where(ok, p_total, 1.0),
                       zero_division)
    return np.maximum(out, 0.0) if not np.isnan(zero_division) else out, int(not ok[0])


def log_loss_sums(p_true: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[sum of w * -log(p), sum of w]`` per weighting, shape (2, R).

    ``p_true`` is the probability given to each row's true class, clipped to
    [eps, 1 - eps] (eps of float64) as scikit-learn's ``log_loss`` clips.
    """
    eps = np.finfo(np.float64).eps
    loss = -np.log(np.clip(np.asarray(p_true, np.float64), eps, 1 - eps))
    w = np.asarray(weights, np.float64)
    return np.stack([loss @ w, w.sum(axis=0)])


def reliability_sums(prob: np.ndarray, positive: np.ndarray, weights: np.ndarray,
                     n_bins: int) -> np.ndarray:
    """Per bin ``[weight, weight * prob, weight * positive]``, shape (3, R, n_bins).

    Bins are scikit-learn's ``calibration_curve(strategy='uniform')`` ones: n_bins equal
    parts of [0, 1], a probability on an inner edge in the lower bin
    (``searchsorted(edges[1:-1], prob)``).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    w = np.asarray(weights, np.float64)
    cols = np.concatenate([w, w * prob[:, None], w * positive[:, None]], axis=1)
    sums = weighted_sums(ids, cols, n_bins) if cols.shape[1] > 1 else \
        np.bincount(ids, cols[:, 0], n_bins)[None, :]
    r = w.shape[1]
    return sums.reshape(3, r, n_bins)


def reliability_table(sums: np.ndarray) -> list[dict]:
    """The non-empty bins of weighting 0: ``bin_lower, bin_upper, weight,
    mean_predicted, fraction_positive`` (as ``calibration_curve``'s prob_pred, prob_true)."""
    n_bins = sums.shape[2]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    w, wp, wy = sums[0, 0], sums[1, 0], sums[2, 0]
    return [{'bin_lower': float(edges[i]), 'bin_upper': float(edges[i + 1]),
             'weight': float(w[i]), 'mean_predicted': float(wp[i] / w[i]),
             'fraction_positive': float(wy[i] / w[i])}
            for i in np.flatnonzero(w > 0)]
