"""Numpy kernels of multiclass classification: labelled confusion matrices and their measures.

A *labelled matrix* is ``(labels, M)``: ``labels`` a tuple of class names (text, in
text order) and ``M`` an array of shape ``(R, k, k)`` of summed row weights, rows
the true class and columns the predicted class, as scikit-learn's
``confusion_matrix``. ``R`` is the number of weightings of the same rows: 1, or
1 + the number of bootstrap replicates (replicate 0 is the plain data, see
:mod:`beamml.transforms.metrics.bootstrap`). Matrices of different batches merge by
the union of their labels, so nothing needs to know the classes in advance.

Every measure is computed for all ``R`` weightings at once and returns an array of
shape ``(R,)`` (or ``(R, k)`` per class), plus the number of 0/0 cases of weighting 0,
replaced by ``zero_division`` as in scikit-learn's ``precision_recall_fscore_support``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ['AVERAGES', 'labelled_matrix', 'merge_matrices', 'class_order', 'prf',
           'balanced_accuracy', 'accuracy', 'weighted_sums']

#: the ``average`` values: 'binary' (the class pos_label), 'micro', 'macro', 'weighted',
#: 'none' (one value per class)
AVERAGES = ('binary', 'micro', 'macro', 'weighted', 'none')


def weighted_sums(codes: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``weights`` rows by integer code: shape ``(R, size)``.

    Parameters
    ----------
    codes : ndarray of shape (n_samples,), int64 in [0, size)
    weights : ndarray of shape (n_samples, R), float64
    """
    n, r = weights.shape
    if r == 1:
        return np.bincount(codes, weights[:, 0], minlength=size)[None, :]
    out = np.zeros((r, size))
    if n == 0:
        return out
    order = np.argsort(codes, kind='stable')
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    out[:, sc[starts]] = np.add.reduceat(weights[order], starts, axis=0).T
    return out


def labelled_matrix(truth, prediction, weights: np.ndarray) -> tuple[tuple, np.ndarray]:
    """The labelled confusion matrix of one batch.

    Parameters
    ----------
    truth, prediction : pyarrow string Array or array-like of str, shape (n_samples,)
    weights : ndarray of shape (n_samples, R), float64 (ones for plain counts)

    Returns
    -------
    labels : tuple of str, the classes in either column, in text order
    M : ndarray of shape (R, k, k), float64
    """
    t = truth if isinstance(truth, pa.Array) else pa.array(np.asarray(truth, object), pa.string())
    p = (prediction if isinstance(prediction, pa.Array)
         else pa.array(np.asarray(prediction, object), pa.string()))
    if len(t) != len(p) or len(t) != len(weights):
        raise ValueError(f'truth, prediction and weights differ in length: {len(t)}, '
                         f'{len(p)}, {len(weights)}')
    labels = pc.unique(pa.concat_arrays([t.cast(pa.string()), p.cast(pa.string())]))
    labels = pc.take(labels, pc.sort_indices(labels))
    k = len(labels)
    tc = pc.index_in(t, value_set=labels).to_numpy(zero_copy_only=False).astype(np.int64)
    pcodes = pc.index_in(p, value_set=labels).to_numpy(zero_copy_only=False).astype(np.int64)
    m = weighted_sums(tc * k + pcodes, np.asarray(weights, np.float64), k * k)
    return tuple(labels.to_pylist()), m.reshape(-1, k, k)


def _embed(m: np.ndarray, where: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((m.shape[0], k, k))
    out[:, where[:, None], where[None, :]] = m
    return out


def merge_matrices(a: tuple[tuple, np.ndarray | None],
                   b: tuple[tuple, np.ndarray | None]) -> tuple[tuple, np.ndarray | None]:
    """The sum of two labelled matrices (a new one; neither input is changed).

    ``(), None`` is the empty matrix (no row yet).
    """
    (la, ma), (lb, mb) = a, b
    if mb is None:
        return la, (None if ma is None else ma.copy())
    if ma is None:
        return lb, mb.copy()
    if ma.shape[0] != mb.shape[0]:
        raise ValueError(f'cannot merge {ma.shape[0]} and {mb.shape[0]} weightings')
    if la == lb:
        return la, ma + mb
    labels = tuple(sorted(set(la) | set(lb)))
    index = {c: i for i, c in enumerate(labels)}
    k = len(labels)
    ia = np.array([index[c] for c in la], np.int64)
    ib = np.array([index[c] for c in lb], np.int64)
    return labels, _embed(ma, ia, k) + _embed(mb, ib, k)


def class_order(labels: Sequence[str]) -> np.ndarray:
    """The output order of classes: numeric when every label is an integer, else text.

    (scikit-learn sorts integer labels as numbers, strings as text.)
    """
    labels = list(labels)
    try:
        values = [int(c) for c in labels]
    except ValueError:
        return np.argsort(np.array(labels, dtype=object), kind='stable')
    return np.argsort(np.array(values, dtype=object), kind='stable')


def _divide(num: np.ndarray, den: np.ndarray, zero_division: float):
    """num / den, zero_division where den == 0; and the number of those in weighting 0."""
    zero = den == 0
    with np.errstate(invalid='ignore', divide='ignore'):
        out = np.where(zero, zero_division, num / np.where(zero, 1.0, den))
    return out, int(zero[0].sum()) if zero.ndim > 1 else int(zero[0])


def _nanaverage(v: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """scikit-learn's ``_nanaverage`` along axis 1 of ``(R, k)``: NaNs ignored; all-NaN is
    NaN; weights all zero (once NaNs are out) give the plain mean."""
    nan = np.isnan(v)
    kept = np.where(nan, 0.0, v)
    n = (~nan).sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        plain = np.where(n > 0, kept.sum(axis=1) / np.maximum(n, 1), np.nan)
        if weights is None:
            return plain
        w = np.where(nan, 0.0, weights)
        ws = w.sum(axis=1)
        return np.where(ws > 0, (w * kept).sum(axis=1) / np.where(ws > 0, ws, 1.0), plain)


def prf(m: np.ndarray, labels: Sequence[str], average: str = 'binary', beta: float = 1.0,
        zero_division: float = 0.0, pos_label: str = '1') -> dict:
    """Precision, recall, F-beta and support of a labelled matrix, as scikit-learn.

    Equal to ``precision_recall_fscore_support(y_true, y_pred, beta=beta,
    average=average, pos_label=pos_label, zero_division=zero_division,
    sample_weight=w)`` for each weighting ``w`` (the classes being those of
    ``labels``); ``average='none'`` is scikit-learn's ``average=None`` and
    ``'binary'`` the class ``pos_label`` alone (a pos_label without rows has every
    count 0).

    Returns
    -------
    dict with ``precision``, ``recall``, ``fbeta``: ndarray of shape (R,) ((R, k) for
    'none'); ``support``: (R, k) weighted true counts per class; and
    ``undefined``: {name: 0/0 cases of weighting 0}.
    """
    if average not in AVERAGES:
        raise ValueError(f'average must be one of {", ".join(AVERAGES)}, got {average!r}')
    m = np.asarray(m, np.float64)
    r = m.shape[0]
    tp = np.diagonal(m, axis1=1, axis2=2)
    pred_sum, true_sum = m.sum(axis=1), m.sum(axis=2)
    support = true_sum
    if average == 'binary':
        if pos_label in labels:
            j = list(labels).index(pos_label)
            tp, pred_sum, true_sum = tp[:, j:j + 1], pred_sum[:, j:j + 1], true_sum[:, j:j + 1]
        else:
            tp = pred_sum = true_sum = np.zeros((r, 1))
    elif average == 'micro':
        tp, pred_sum, true_sum = (x.sum(axis=1, keepdims=True) for x in (tp, pred_sum, true_sum))
    precision, u_p = _divide(tp, pred_sum, zero_division)
    recall, u_r = _divide(tp, true_sum, zero_division)
    if np.isposinf(beta):
        fbeta, u_f = recall, u_r
    elif beta == 0:
        fbeta, u_f = precision, u_p
    else:
        b2 = beta * beta
        fbeta, u_f = _divide((1 + b2) * tp, b2 * true_sum + pred_sum, zero_division)
    out = {'support': support, 'undefined': {'precision': u_p, 'recall': u_r, 'fbeta': u_f}}
    if average == 'none':
        out.update(precision=precision, recall=recall, fbeta=fbeta)
        return out
    weights = true_sum if average == 'weighted' else None
    for name, v in (('precision', precision), ('recall', recall), ('fbeta', fbeta)):
        if v.shape[1] == 0:   # no class at all (no row): a 0/0
            out[name] = np.full(r, float(zero_division))
            out['undefined'][name] = 1
        else:
            out[name] = _nanaverage(v, weights)
    return out


def balanced_accuracy(m: np.ndarray, zero_division: float = 0.0) -> tuple[np.ndarray, int]:
    """scikit-learn's ``balanced_accuracy_score``: the mean over the classes with true rows
    of their recall; ``zero_division`` when no class has a true row (1 undefined case).

    Returns ``(ndarray of shape (R,), n_undefined)``.
    """
    m = np.asarray(m, np.float64)
    tp = np.diagonal(m, axis1=1, axis2=2)
    true_sum = m.sum(axis=2)
    has = true_sum > 0
    n = has.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        rec = np.where(has, tp / np.where(has, true_sum, 1.0), 0.0)
        out = np.where(n > 0, rec.sum(axis=1) / np.maximum(n, 1), zero_division)
    return out, int(n[0] == 0) if len(n) else 1


def accuracy(m: np.ndarray, zero_division: float = 0.0) -> tuple[np.ndarray, int]:
    """Weighted share of rows on the diagonal (``accuracy_score``); ``(R,)``, n_undefined."""
    m = np.asarray(m, np.float64)
    correct = np.trace(m, axis1=1, axis2=2)
    total = m.sum(axis=(1, 2))
    return _divide(correct, total, zero_division)
