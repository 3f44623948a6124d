"""Vector norms: L0 (non-zero count), L1, L2 and L-inf per row, and a distributed sort by norm.

Kernels work on ``(n_samples, n_features)`` arrays; the Beam transforms apply
them to whole RecordBatches (columns ``id``, ``features``) and append columns.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.io import features_matrix

__all__ = ['NORMS', 'row_norms', 'all_row_norms', 'ComputeNorms']

NORMS = ('l0', 'l1', 'l2', 'linf')


# ----------------------------------------------------------------------------- kernels

def row_norms(X: np.ndarray, ord: str = 'l2') -> np.ndarray:
    """Norm of each row of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    ord : {'l0', 'l1', 'l2', 'linf'}
        ``l0`` counts the non-zero entries (as float64).

    Returns
    -------
    ndarray of shape (n_samples,), float64
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    if ord == 'l2':
        return np.sqrt(np.einsum('ij,ij->i', X, X))
    if ord == 'l1':
        return np.abs(X).sum(axis=1)
    if ord == 'linf':
        if X.shape[1] == 0:
            return np.zeros(X.shape[0])
        return np.abs(X).max(axis=1)
    if ord == 'l0':
        return np.count_nonzero(X, axis=1).astype(np.float64)
    raise ValueError(f'unknown norm {ord!r}; one of {NORMS}')


def all_row_norms(X: np.ndarray) -> dict[str, np.ndarray]:
    """The four norms of each row, sharing one pass of ``abs(X)``."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    A = np.abs(X)
    return {
        'l0': np.count_nonzero(X, axis=1).astype(np.float64),
        'l1': A.sum(axis=1),
        'l2': np.sqrt(np.einsum('ij,ij->i', X, X)),
        'linf': A.max(axis=1) if X.shape[1] else np.zeros(X.shape[0]),
    }


# ----------------------------------------------------------------------------- Beam

def add_norms(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append columns l0, l1, l2, linf to a points batch."""
    norms = all_row_norms(features_matrix(batch))
    for name in NORMS:
        batch = batch.append_column(name, pa.array(norms[name]))
    return batch


class ComputeNorms(beam.PTransform):
    """Append columns ``l0, l1, l2, linf`` to every points RecordBatch."""

    def expand(self, batches):
        return batches | 'AddNorms' >> beam.Map(add_norms)
