"""Exact PCA in one pass: a CombineFn of counts, means and centred scatter matrices.

Each batch is reduced to its count ``n``, its mean and its *centred* scatter matrix
``M2 = (X - mean)^T (X - mean)`` (one matrix product per batch; never the raw
``X^T X``, whose subtraction ``X^T X - n mean mean^T`` loses every digit of the
variance when the data sit far from the origin: at a 1e6 offset with unit variance
it keeps about 4 of 16). Two partial results merge exactly with Chan, Golub and
LeVeque's pairwise update::

    delta = mean_b - mean_a,  n = n_a + n_b
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

The model is then the eigendecomposition of the d x d covariance ``M2 / (n - 1)``
(``numpy.linalg.eigh``), as scikit-learn's ``PCA(svd_solver='covariance_eigh')``
but from centred sums; see :class:`PCAModel` for the conventions.

Three parts, top to bottom: numpy kernels (:class:`PCAStats`, :class:`PCAModel`),
the Beam adapter (:class:`PCACombineFn`), the composites (:class:`ComputePCA`,
:class:`ProjectPCA`).
"""
from __future__ import annotations

from typing import Any, Mapping

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.core.documents import NON_FINITE, join, read_json, to_jsonable, write_json
from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.io.rows import points_matrix

__all__ = ['MODEL_FILE', 'PCAStats', 'PCAModel', 'PCACombineFn', 'ComputePCA', 'ProjectPCA',
           'projection_schema']

#: the model file in a folder (what ``beamml pca --output DIR`` writes)
MODEL_FILE = 'pca.json'
_FIELDS = ('mean', 'components', 'explained_variance', 'explained_variance_ratio',
           'n_samples')


# ----------------------------------------------------------------------------- kernels

class PCAStats:
    """Count, mean and centred scatter matrix of points (accumulator and output of
    :class:`PCACombineFn`).

    Attributes
    ----------
    n : int
    mean : ndarray of shape (n_features,), or None before any point
    m2 : ndarray of shape (n_features, n_features), or None before any point
        ``sum_i (x_i - mean)(x_i - mean)^T``.
    """

    def __init__(self, n: int = 0, mean: np.ndarray | None = None,
                 m2: np.ndarray | None = None):
        self.n, self.mean, self.m2 = int(n), mean, m2

    @property
    def n_features(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    @classmethod
    def of(cls, X: np.ndarray) -> 'PCAStats':
        """The statistics of an (n, d) array: one mean, one product of the centred rows.

        Raises BeammlError when ``X`` holds NaN or an infinite value."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return cls()
        if not np.isfinite(X).all():
            bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise _non_finite(f'row {bad} of a batch of {X.shape[0]}')
        with np.errstate(over='ignore', invalid='ignore'):   # an overflow is refused later
            mean = X.mean(axis=0)
            centred = X - mean
            return cls(X.shape[0], mean, centred.T @ centred)

    def merge(self, other: 'PCAStats') -> 'PCAStats':
        """Merge ``other`` into self (Chan et al.); ``other`` is not changed, and self
        never shares an array with it that is later changed in place. Returns self."""
        if other.n == 0:
            return self
        if self.n == 0:   # arrays taken over are never changed in place (rebound below)
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return self
        if other.n_features != self.n_features:
            raise BeammlError(f'PCA over points of {self.n_features} and {other.n_features} '
                              'features: every point needs the same dimension')
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    def __repr__(self):
        return f'PCAStats(n={self.n}, n_features={self.n_features})'


def _non_finite(which: str) -> BeammlError:
    return BeammlError(
        f'PCA needs finite feature values, but {which} holds NaN or inf: read the points '
        'without allowing NaN (such rows are then dead letters) or remove them')


def _check_n_components(n_components) -> int:
    if isinstance(n_components, (bool, np.bool_)) or not isinstance(
            n_components, (int, np.integer)):
        raise BeammlError(f'n_components must be an integer >= 1, got {n_components!r}',
                          parameters=('n_components',))
    if n_components < 1:
        raise BeammlError(f'n_components must be >= 1, got {n_components}',
                          parameters=('n_components',))
    return int(n_components)


class PCAModel:
    """A fitted PCA: ``transform(X) = (X - mean) @ components.T``.

    scikit-learn's conventions: ``explained_variance`` is the variance along each
    component with ``ddof=1`` (the eigenvalues of ``M2 / (n - 1)``, negatives from
    rounding clipped to 0); ``explained_variance_ratio`` divides it by the total
    variance, the trace of that covariance; components are the eigenvectors in
    decreasing eigenvalue order, and the sign of each is chosen so that its entry of
    largest absolute value is positive. (That is the rule of scikit-learn's
    ``svd_flip(..., u_based_decision=False)``, which ``PCA`` uses since 1.5; earlier
    versions decided the sign on ``U``, and a near-tie in the largest entry can flip
    either, so tests compare components up to sign.)

    Degenerate data, as scikit-learn: one point has explained variance NaN (0/0 with
    ``ddof=1``) and ratio NaN; constant data (n >= 2) variance 0 and ratio NaN (0/0).
    Their components are then an arbitrary orthonormal basis.

    Attributes
    ----------
    mean : ndarray (n_features,)
    components : ndarray (n_components, n_features)
    explained_variance, explained_variance_ratio : ndarray (n_components,)
    n_samples, n_components, n_features : int
    """

    def __init__(self, mean, components, explained_variance, explained_variance_ratio,
                 n_samples: int):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.explained_variance = np.asarray(explained_variance, dtype=np.float64)
        self.explained_variance_ratio = np.asarray(explained_variance_ratio, dtype=np.float64)
        self.n_samples = int(n_samples)
        k = self.components.shape[0] if self.components.ndim == 2 else -1
        if (self.mean.ndim != 1 or self.components.ndim != 2 or k < 1
                or self.components.shape[1] != len(self.mean)
                or self.explained_variance.shape != (k,)
                or self.explained_variance_ratio.shape != (k,)):
            raise BeammlError(
                f'inconsistent PCA model: mean {self.mean.shape}, components '
                f'{self.components.shape}, explained_variance {self.explained_variance.shape}, '
                f'explained_variance_ratio {self.explained_variance_ratio.shape}; expected '
                '(d,), (k, d), (k,), (k,) with k, d >= 1')
        if self.n_samples < 1:
            raise BeammlError(f'inconsistent PCA model: n_samples={self.n_samples}')

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def n_features(self) -> int:
        return self.components.shape[1]

    # ------------------------------------------------------------------ fitting

    @classmethod
    def from_stats(cls, stats: PCAStats, n_components: int) -> 'PCAModel':
        """The model of combined statistics (what :class:`ComputePCA` does last).

        Raises BeammlError without rows, for n_components outside
        ``1..min(n_samples, n_features)`` (as scikit-learn), or when the scatter matrix
        overflows float64."""
        n_components = _check_n_components(n_components)
        if stats.n == 0:
            raise BeammlError('PCA needs at least one row; there is none')
        n, d = stats.n, stats.n_features
        if n_components > min(n, d):
            raise BeammlError(
                f'n_components={n_components} must be <= min(n_samples, n_features) = '
                f'min({n}, {d}) = {min(n, d)}', parameters=('n_components',))
        if not np.isfinite(stats.m2).all():
            raise BeammlError('the scatter matrix of the points overflows float64 (feature '
                              'values around 1e154 or more): rescale the features')
        eigenvalues, vectors = np.linalg.eigh(stats.m2)
        eigenvalues = np.clip(eigenvalues[::-1][:n_components], 0.0, None)
        components = vectors[:, ::-1][:, :n_components].T.copy()
        top = np.abs(components).argmax(axis=1)
        components *= np.sign(components[np.arange(n_components), top])[:, None]
        with np.errstate(invalid='ignore', divide='ignore'):
            if n > 1:
                variance = eigenvalues / (n - 1)
                total = np.trace(stats.m2) / (n - 1)
            else:   # ddof=1 of one point: 0/0, as scikit-learn
                variance = np.full(n_components, np.nan)
                total = np.nan
            ratio = variance / total
        return cls(stats.mean.copy(), components, variance, ratio, n)

    @classmethod
    def fit(cls, X: np.ndarray, n_components: int) -> 'PCAModel':
        """Fit in memory on an (n_samples, n_features) array (the same maths as the
        combiner, one batch)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise BeammlError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
        _check_n_components(n_components)
        return cls.from_stats(PCAStats.of(X), n_components)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(n, n_components) projections ``(X - mean) @ components.T`` (NaN in, NaN out)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise BeammlError(f'points of shape {X.shape} for a PCA model of '
                              f'{self.n_features} features')
        return (X - self.mean) @ self.components.T

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: ``mean``, ``components`` (n_components x d),
        ``explained_variance``, ``explained_variance_ratio``, ``n_samples`` (NaN is
        written "NaN", beamml's one JSON policy)."""
        return to_jsonable({'mean': self.mean, 'components': self.components,
                            'explained_variance': self.explained_variance,
                            'explained_variance_ratio': self.explained_variance_ratio,
                            'n_samples': self.n_samples})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = 'PCA model') -> 'PCAModel':
        if not isinstance(data, Mapping):
            raise BeammlError(f'{source} is not a PCA model: expected a JSON object')
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise BeammlError(f'{source} is not a PCA model: no {", ".join(missing)}')
        try:
            arrays = [np.array(_floats(data[f]), dtype=np.float64) for f in _FIELDS[:4]]
            n_samples = data['n_samples']
            if isinstance(n_samples, bool) or not isinstance(n_samples, int):
                raise ValueError(f'n_samples must be an integer, got {n_samples!r}')
        except (TypeError, ValueError) as e:
            raise BeammlError(f'{source} is corrupt: {str(e).splitlines()[0]}') from e
        try:
            return cls(*arrays, n_samples)
        except BeammlError as e:
            raise BeammlError(f'{source}: {e}') from e

    @staticmethod
    def _file(path: str) -> str:
        path = str(path)
        return path if path.endswith('.json') else join(path, MODEL_FILE)

    def save(self, path: str) -> str:
        """Write the model to ``path`` (a ``.json`` file, else ``path/pca.json``; local or
        gs://, written whole); returns the file written."""
        target = self._file(path)
        try:
            return write_json(target, self.to_dict(), indent=2)
        except Exception as e:
            raise BeammlError(f'cannot write the PCA model to {target}: '
                              f'{first_line(e)}') from e

    @classmethod
    def load(cls, path: str) -> 'PCAModel':
        """Read a model file (a ``.json`` path, else ``path/pca.json``; local or gs://)."""
        target = cls._file(path)
        try:
            data = read_json(target)
        except ValueError as e:
            raise BeammlError(f'PCA model {target} is not valid JSON: {e}') from e
        except Exception as e:
            raise BeammlError(f'cannot read the PCA model {target}: '
                              f'{first_line(e)}') from e
        return cls.from_dict(data, source=f'PCA model {target}')

    def __repr__(self):
        return (f'PCAModel(n_components={self.n_components}, n_features={self.n_features}, '
                f'n_samples={self.n_samples})')


def _floats(value):
    """JSON lists with "NaN"/"Infinity" strings (beamml's policy) as floats."""
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, str):
        if value in NON_FINITE:
            return NON_FINITE[value]
        raise ValueError(f'{value!r} is not a number')
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{value!r} is not a number')
    return value


def projection_schema(id_type: pa.DataType, n_components: int) -> pa.Schema:
    """Columns of :class:`ProjectPCA`'s batches: ``id``, ``projection``
    (fixed_size_list<float64>[n_components])."""
    return pa.schema([('id', id_type), ('projection', pa.list_(pa.float64(), n_components))])


def project_batch(batch: pa.RecordBatch, model: PCAModel | None) -> pa.RecordBatch | None:
    """A points batch -> ``id, projection`` (one matrix product); None for an empty batch
    (or no model: there were no rows to fit one on)."""
    if batch.num_rows == 0 or model is None:
        return None
    P = np.ascontiguousarray(model.transform(points_matrix(batch)))
    projection = pa.FixedSizeListArray.from_arrays(pa.array(P.reshape(-1)), model.n_components)
    return pa.RecordBatch.from_arrays([batch.column('id'), projection],
                                      names=['id', 'projection'])


# ----------------------------------------------------------------------------- Beam adapters

@beam.typehints.with_input_types(pa.RecordBatch | np.ndarray)
@beam.typehints.with_output_types(PCAStats)
class PCACombineFn(beam.CombineFn):
    """Count, mean and centred scatter matrix of points RecordBatches (their
    ``features`` column) or (n, d) arrays; the output is the :class:`PCAStats`
    (``n == 0`` and no arrays for no input), which :meth:`PCAModel.from_stats` turns
    into a model. Inputs holding NaN or inf raise BeammlError."""

    def create_accumulator(self) -> PCAStats:
        return PCAStats()

    def add_input(self, acc: PCAStats, element) -> PCAStats:
        X = points_matrix(element)
        if isinstance(element, pa.RecordBatch) and 'id' in element.schema.names:
            finite = np.isfinite(X).all(axis=1)
            if not finite.all():   # name the row by its id
                bad = element.column('id')[int(np.flatnonzero(~finite)[0])].as_py()
                raise _non_finite(f'the row with id {bad!r}')
        return acc.merge(PCAStats.of(X))

    def merge_accumulators(self, accumulators) -> PCAStats:
        return merge_into_first(accumulators)

    def extract_output(self, acc: PCAStats) -> PCAStats:
        return acc


class _ProjectFn(beam.DoFn):
    """Points batches -> id, projection; the model given, or a side input."""

    def __init__(self, model: PCAModel | None = None):
        self._model = model

    def process(self, batch, model=None):
        out = project_batch(batch, self._model if self._model is not None else model)
        if out is not None:
            yield out


# ----------------------------------------------------------------------------- composites

class ComputePCA(beam.PTransform):
    """Points batches -> a PCollection of one :class:`PCAModel`.

    ``allow_empty``: no rows give an empty PCollection (the caller says what that
    means) instead of a BeammlError in the pipeline.
    """

    def __init__(self, n_components: int, *, allow_empty: bool = False,
                 label: str | None = None):
        super().__init__(label)
        self.n_components = _check_n_components(n_components)
        self.allow_empty = allow_empty

    def expand(self, batches):
        combine = beam.CombineGlobally(PCACombineFn())
        if self.allow_empty:
            combine = combine.without_defaults()
        return (batches
                | 'CombineScatter' >> combine
                | 'Eigendecomposition' >> beam.Map(PCAModel.from_stats, self.n_components)
                .with_output_types(PCAModel))


class ProjectPCA(beam.PTransform):
    """Points batches -> RecordBatches ``id, projection`` (one product per batch).

    ``model``: a :class:`PCAModel`, or a PCollection of one (a side input; an empty one,
    as :class:`ComputePCA` with ``allow_empty`` gives for no rows, projects nothing).
    """

    def __init__(self, model, label: str | None = None):
        super().__init__(label)
        self.model = model

    def expand(self, batches):
        if isinstance(self.model, beam.pvalue.PCollection):
            fn, side = _ProjectFn(), [beam.pvalue.AsSingleton(self.model, default_value=None)]
        elif isinstance(self.model, PCAModel):
            fn, side = _ProjectFn(self.model), []
        else:
            raise TypeError(f'ProjectPCA needs a PCAModel or a PCollection of one, got '
                            f'{type(self.model).__name__}')
        return batches | 'Project' >> beam.ParDo(fn, *side).with_output_types(pa.RecordBatch)
