"""Shadow and canary deployment of a centroid model, and the promote/keep gate.

Three parts, top to bottom:

1. numpy kernels: :func:`max_weight_matching` (a rectangular assignment problem, the
   Hungarian / Jonker-Volgenant shortest augmenting path, vectorised over columns),
   :func:`agreement` (labels matched up to the best one-to-one relabelling),
   :func:`id_hash` / :func:`canary_mask` (a stable 64-bit hash of the ids: the same on
   every machine and Python run), and the gate (:class:`Gate`, thresholds in the spirit
   of TensorFlow Model Analysis' ``GenericValueThreshold`` / ``GenericChangeThreshold``);
2. Beam adapters: :class:`ShadowComparisonFn` (a mergeable CombineFn over the per-batch
   (production label, shadow label) pairs), :class:`VersionCountsFn` (points per model
   version and cluster), and the assignment DoFns that add a shadow or a canary model to
   :mod:`beamml.transforms.assignment`'s;
3. composites: :class:`AssignDeployed` (batch, models as side inputs) and
   :class:`AssignDeployedLatest` (streaming, models looked up by path).

The production rows are computed by the unchanged assignment kernel
(:func:`beamml.transforms.assignment.add_assignment`), so they are bit-for-bit the rows
of a run without a shadow; the shadow labels come from the same kernel on the shadow's
centres, over the same feature matrix in the same pass (the arithmetic of one product
against the stacked ``k1 + k2`` centres, kept as two calls because the exact-tie kernel
shifts the centres by their mean, and a stacked product would shift by another mean and
change the production distances in their last bits).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.assignment import _AssignFn, _AssignLatestFn, _LatestModel
from beamml.transforms.io import BeammlError, features_matrix

__all__ = ['max_weight_matching', 'agreement', 'comparison_report', 'id_hash',
           'canary_mask', 'Gate', 'Threshold', 'ShadowComparisonFn', 'VersionCountsFn',
           'AssignDeployed', 'AssignDeployedLatest', 'SHADOW_TAG', 'GATE_METRICS']

SHADOW_TAG = 'shadow'


# ----------------------------------------------------------------------------- matching

def max_weight_matching(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of rows to columns with the largest total weight.

    ``W`` may be rectangular: ``min(n, m)`` pairs are matched. The same answer as
    ``scipy.optimize.linear_sum_assignment(W, maximize=True)`` (up to ties between
    equally good matchings): the shortest augmenting path algorithm (Hungarian method in
    the Jonker-Volgenant form, with potentials), O(n^2 m) arithmetic, of which the inner
    loop over the columns is one numpy operation: about a second for 300 x 300.

    Parameters
    ----------
    W : ndarray of shape (n, m), finite

    Returns
    -------
    rows, cols : ndarray of int64, shape (min(n, m),)
        Row ``rows[i]`` is matched to column ``cols[i]``; sorted by row.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f'W must be 2-D, got shape {W.shape}')
    if not np.isfinite(W).all():
        raise ValueError('W contains NaN or infinite values')
    if W.shape[0] > W.shape[1]:
        cols, rows = max_weight_matching(W.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = W.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = W.max() - W          # minimise a non-negative cost
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)      # p[j]: the row (1-based) on column j; 0: free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used
            free[0] = False
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv, np.inf)
            j1 = int(np.argmin(masked))
            delta = masked[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.flatnonzero(p[1:]).astype(np.int64)
    rows = p[1:][cols] - 1
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order]


def agreement(table: np.ndarray) -> tuple[float | None, np.ndarray, np.ndarray]:
    """The share of points whose labels agree under the best one-to-one relabelling.

    ``table[a, b]`` counts the points model 1 puts in cluster ``a`` and model 2 in
    ``b``; the relabelling is the maximum-weight matching of the table. Returns
    ``(agreement, rows, cols)``; agreement is None for an empty table.
    """
    table = np.asarray(table)
    total = int(table.sum())
    rows, cols = max_weight_matching(table)
    if total == 0:
        return None, rows, cols
    return float(table[rows, cols].sum()) / total, rows, cols


# ----------------------------------------------------------------------------- canary

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of ``x + golden`` (uint64, wrapping)."""
    with np.errstate(over='ignore'):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over the strings: one numpy
    step per byte position (cost: n x the longest id's length)."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_string(
        arr.type) else np.int32)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data_buf = arr.buffers()[2]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, np.uint8))
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind='stable')    # longest first: active rows a prefix
    starts, lens = offsets[:-1][order], lengths[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    longest = int(lens[0]) if n else 0
    # lens is sorted descending: the strings longer than j are the first active[j]
    active = np.searchsorted(-lens, -np.arange(longest), side='left')
    with np.errstate(over='ignore'):
        for j in range(longest):
            c = int(active[j])
            h[:c] = (h[:c] ^ data[starts[:c] + j].astype(np.uint64)) * _FNV_PRIME
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def id_hash(ids) -> np.ndarray:
    """A stable 64-bit hash of each id (uint64), the same on every machine and run.

    Integer ids: splitmix64 of the id's int64 value (its little-endian bytes read as
    one uint64), vectorised. String ids: FNV-1a 64 over the UTF-8 bytes, then the
    splitmix64 finaliser (FNV's low bits mix poorly), vectorised over the strings.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(ids)
    if ids.null_count:
        raise BeammlError('an id is null: it cannot be hashed')
    if pa.types.is_integer(ids.type):
        x = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        return _splitmix64(x)
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return _splitmix64(_fnv1a_strings(ids))
    raise BeammlError(f'ids of type {ids.type} cannot be hashed (int64 or string ids)')


def unit_hash(ids) -> np.ndarray:
    """:func:`id_hash` mapped to [0, 1): its top 53 bits over 2**53 (float64)."""
    return (id_hash(ids) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def canary_mask(ids, fraction: float) -> np.ndarray:
    """Which ids go to the canary model: ``unit_hash(id) < fraction`` (bool array).

    Deterministic (a property of the id alone), so the same points go to the canary in
    every run, on every machine, in batch and in streaming.
    """
    if not 0.0 <= fraction <= 1.0:
        raise BeammlError(f'canary fraction must be in [0, 1], got {fraction}')
    return unit_hash(ids) < fraction


# ----------------------------------------------------------------------------- comparison

def comparison_report(table: np.ndarray, loss: Sequence[float],
                      shadow_refused: int = 0) -> dict:
    """The shadow comparison document of a contingency table and the two loss sums."""
    table = np.asarray(table, dtype=np.int64)
    n = int(table.sum())
    agree, rows, cols = agreement(table)

    def model(counts, total_loss):
        counts = np.asarray(counts, dtype=np.int64)
        return {'points': n, 'inertia': float(total_loss),
                'inertia_per_point': float(total_loss) / n if n else None,
                'cluster_counts': counts.tolist(),
                'cluster_shares': (counts / n).tolist() if n else [None] * len(counts),
                'empty_clusters': int((counts == 0).sum())}

    return {'points': n, 'shadow_refused': int(shadow_refused), 'agreement': agree,
            'matching': [[int(a), int(b)] for a, b in zip(rows, cols)],
            'production': model(table.sum(axis=1), loss[0]),
            'candidate': model(table.sum(axis=0), loss[1]),
            'contingency': table.tolist()}


class ShadowComparisonFn(beam.CombineFn):
    """The production model against the shadow, over comparison batches.

    An input is a RecordBatch with int64 ``cluster`` (production) and ``shadow_cluster``
    (-1: the shadow refused the point) and float64 ``loss`` and ``shadow_loss`` (each
    point's squared distance, or ``1 - cos``, to its centre), whose schema metadata
    holds ``k`` and ``shadow_k``. Accumulator ``[table (k x k2) int64, loss sums (2,),
    shadow refused]``; without ``shape`` the table takes its shape from the first batch
    (a streaming window whose model changed: one comparison per pair of versions, so one
    shape per key). Output: :func:`comparison_report` (an empty input: 0 points,
    agreement None).
    """

    def __init__(self, shape: tuple[int, int] | None = None):
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))

    def create_accumulator(self):
        shape = self.shape or (0, 0)
        return [np.zeros(shape, dtype=np.int64), np.zeros(2), 0]

    @staticmethod
    def _shape_of(batch: pa.RecordBatch) -> tuple[int, int]:
        meta = batch.schema.metadata or {}
        return int(meta[b'k']), int(meta[b'shadow_k'])

    def _fit(self, acc, shape):
        if acc[0].shape == shape:
            return
        if acc[0].size == 0 and not acc[0].sum():
            acc[0] = np.zeros(shape, dtype=np.int64)
            return
        raise ValueError(f'comparison of k={shape} models merged with k={acc[0].shape}')

    def add_input(self, acc, batch):
        self._fit(acc, self._shape_of(batch))
        k1, k2 = acc[0].shape
        a = batch.column('cluster').to_numpy()
        b = batch.column('shadow_cluster').to_numpy()
        ok = b >= 0
        acc[0] += np.bincount(a[ok] * k2 + b[ok], minlength=k1 * k2)[:k1 * k2].reshape(k1, k2)
        acc[1][0] += float(batch.column('loss').to_numpy()[ok].sum())
        acc[1][1] += float(batch.column('shadow_loss').to_numpy()[ok].sum())
        acc[2] += int((~ok).sum())
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        first = next(accs)
        for a in accs:
            if a[0].size:
                self._fit(first, a[0].shape)
                first[0] += a[0]
            first[1] += a[1]
            first[2] += a[2]
        return first

    def extract_output(self, acc):
        return comparison_report(acc[0], acc[1], acc[2])


class VersionCountsFn(beam.CombineFn):
    """Points per model version and cluster over assigned batches (``model_version``,
    ``cluster``): accumulator one int64 count array per version (of its k). Output: a
    list of count lists, in the order of ``versions``; rows of another version are an
    error."""

    def __init__(self, versions: Sequence[str], ks: Sequence[int]):
        self.versions, self.ks = [str(v) for v in versions], [int(k) for k in ks]

    def create_accumulator(self):
        return [np.zeros(k, dtype=np.int64) for k in self.ks]

    def add_input(self, acc, batch):
        if not batch.num_rows:
            return acc
        version = np.asarray(batch.column('model_version').to_pylist() if batch.num_rows < 2
                             else batch.column('model_version').to_numpy(
                                 zero_copy_only=False), dtype=object)
        labels = batch.column('cluster').to_numpy()
        seen = np.zeros(len(labels), dtype=bool)
        for i, (v, k) in enumerate(zip(self.versions, self.ks)):
            mine = version == v
            seen |= mine
            acc[i] += np.bincount(labels[mine], minlength=k)[:k]
        if not seen.all():
            raise ValueError(f'rows of model version {version[~seen][0]!r}, expected one of '
                             f'{self.versions}')
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        first = next(accs)
        for a in accs:
            for f, x in zip(first, a):
                f += x
        return first

    def extract_output(self, acc):
        return [a.tolist() for a in acc]


# ----------------------------------------------------------------------------- DoFns

def _loss(model, dist: np.ndarray) -> np.ndarray:
    """What inertia sums: the squared distance, or ``1 - cos`` for a cosine model."""
    return dist if getattr(model, 'distance', 'euclidean') == 'cosine' else dist * dist


def comparison_batch(out: pa.RecordBatch, model, shadow) -> pa.RecordBatch:
    """The comparison batch of assigned rows (``cluster``, ``distance``, ``features``):
    the shadow's nearest centre of the same feature matrix."""
    X = features_matrix(out)
    labels, dist = shadow.nearest(X)
    prod_dist = out.column('distance').to_numpy()
    batch = pa.RecordBatch.from_arrays(
        [out.column('cluster'), pa.array(labels),
         pa.array(_loss(model, prod_dist)),
         pa.array(np.where(labels >= 0, _loss(shadow, np.nan_to_num(dist)), 0.0))],
        names=['cluster', 'shadow_cluster', 'loss', 'shadow_loss'])
    return batch.replace_schema_metadata({'k': str(model.k), 'shadow_k': str(shadow.k)})


class _DeployMixin:
    """Shadow and canary on top of :class:`_AssignFn`'s ``_assign``."""

    canary_fraction = 0.0

    def _deploy(self, batch, model, shadow, canary):
        if canary is None or batch.num_rows == 0:
            self._shadow = shadow
            yield from self._assign(batch, model)
            return
        self._shadow = None
        to_canary = canary_mask(batch.column('id'), self.canary_fraction)
        n_canary = int(to_canary.sum())
        if n_canary < batch.num_rows:
            yield from self._assign(batch.filter(pa.array(~to_canary)), model)
        if n_canary:
            yield from self._assign(batch.filter(pa.array(to_canary)), canary)

    def _also(self, out, model):
        if self._shadow is not None:
            yield beam.pvalue.TaggedOutput(SHADOW_TAG, (
                (model.version, self._shadow.version),
                comparison_batch(out, model, self._shadow)))


class _DeployFn(_DeployMixin, _AssignFn):
    """Batch: production, and a shadow or a canary model, as side inputs."""

    def __init__(self, all_distances, with_version, output_columns, mode: str,
                 canary_fraction: float = 0.0):
        super().__init__(all_distances, with_version, output_columns)
        self.mode, self.canary_fraction = mode, float(canary_fraction)
        self._shadow = None

    def process(self, batch, model, other):
        yield from self._deploy(batch, model, other if self.mode == 'shadow' else None,
                                other if self.mode == 'canary' else None)


class _DeployLatestFn(_DeployMixin, _AssignLatestFn):
    """Streaming: every model looked up by path (hot swap), as :class:`_AssignLatestFn`."""

    def __init__(self, path, refresh_seconds, all_distances, output_columns, mode: str,
                 other_path: str, canary_fraction: float = 0.0):
        super().__init__(path, refresh_seconds, all_distances, output_columns)
        self.mode, self.other_path = mode, other_path
        self.canary_fraction = float(canary_fraction)
        self.other = None
        self._shadow = None

    def setup(self):
        super().setup()
        key = (self.other_path, self.refresh_seconds)
        self.other = self._LOOKUPS.get(key)
        if self.other is None:
            self.other = self._LOOKUPS[key] = _LatestModel(self.other_path,
                                                           self.refresh_seconds)

    def process(self, batch):
        other = self.other.get()
        yield from self._deploy(batch, self.latest.get(),
                                other if self.mode == 'shadow' else None,
                                other if self.mode == 'canary' else None)


def _check_mode(mode, canary_fraction):
    if mode not in ('shadow', 'canary'):
        raise BeammlError(f'deployment mode must be shadow or canary, got {mode!r}')
    if mode == 'canary' and not 0.0 <= canary_fraction <= 1.0:
        raise BeammlError(f'canary fraction must be in [0, 1], got {canary_fraction}')


class AssignDeployed(beam.PTransform):
    """:class:`~beamml.transforms.assignment.AssignNearestCentroid` with a second model.

    ``mode='shadow'``: every point is also assigned by ``other``; the rows are the
    production model's (unchanged), and ``result.shadow`` holds ``((production version,
    shadow version), comparison batch)`` per batch for :class:`ShadowComparisonFn`.
    ``mode='canary'``: the points with ``unit_hash(id) < canary_fraction`` are assigned by
    ``other`` instead; each row's ``model_version`` names its model. ``model`` and
    ``other`` are side inputs (AsSingleton views). Outputs ``batches``, ``errors`` and
    ``shadow``.
    """

    def __init__(self, model, other, mode: str, *, canary_fraction: float = 0.0,
                 all_distances: bool = False, output_columns: Sequence[str] | None = None,
                 label: str | None = None):
        super().__init__(label)
        _check_mode(mode, canary_fraction)
        self.model, self.other, self.mode = model, other, mode
        self.canary_fraction = float(canary_fraction)
        self.all_distances = all_distances
        self.output_columns = list(output_columns) if output_columns else None

    def expand(self, batches):
        return batches | f'NearestCentroid{self.mode.title()}' >> beam.ParDo(
            _DeployFn(self.all_distances, True, self.output_columns, self.mode,
                      self.canary_fraction), self.model, self.other
        ).with_outputs('errors', SHADOW_TAG, main='batches')


class AssignDeployedLatest(beam.PTransform):
    """:class:`AssignDeployed` with both models looked up by path every
    ``refresh_seconds`` (:class:`~beamml.transforms.assignment.AssignLatest`)."""

    def __init__(self, model_path: str, other_path: str, mode: str,
                 refresh_seconds: float = 60.0, *, canary_fraction: float = 0.0,
                 all_distances: bool = False, output_columns: Sequence[str] | None = None,
                 label: str | None = None):
        super().__init__(label)
        _check_mode(mode, canary_fraction)
        if not refresh_seconds > 0:
            raise BeammlError(f'refresh_seconds must be > 0, got {refresh_seconds!r}')
        self.model_path, self.other_path, self.mode = model_path, other_path, mode
        self.refresh_seconds = float(refresh_seconds)
        self.canary_fraction = float(canary_fraction)
        self.all_distances = all_distances
        self.output_columns = list(output_columns) if output_columns else None

    def expand(self, batches):
        return batches | f'NearestCentroidLatest{self.mode.title()}' >> beam.ParDo(
            _DeployLatestFn(self.model_path, self.refresh_seconds, self.all_distances,
                            self.output_columns, self.mode, self.other_path,
                            self.canary_fraction)
        ).with_outputs('errors', SHADOW_TAG, main='batches')


# ----------------------------------------------------------------------------- the gate

#: metric -> (where it is read in a comparison report, whether a change has a baseline)
GATE_METRICS = {
    'agreement': False,
    'inertia': True,
    'inertia_per_point': True,
    'max_cluster_share': True,
    'min_cluster_share': True,
    'empty_clusters': True,
    'shadow_refused_fraction': False,
}
_DIRECTIONS = ('higher_is_better', 'lower_is_better')


def gate_metric(report: Mapping[str, Any], metric: str, side: str = 'candidate'):
    """A gate metric's value in a comparison report, for the candidate (the shadow) or
    the production model (the baseline of a change threshold); None when undefined."""
    if metric == 'agreement':
        return report.get('agreement')
    if metric == 'shadow_refused_fraction':
        total = report['points'] + report['shadow_refused']
        return report['shadow_refused'] / total if total else None
    model = report[side]
    if metric in ('inertia', 'inertia_per_point', 'empty_clusters'):
        return model[metric]
    shares = [s for s in model['cluster_shares'] if s is not None]
    if not shares:
        return None
    return max(shares) if metric == 'max_cluster_share' else min(shares)


class Threshold:
    """One entry of a gate: a value threshold (``lower_bound`` <= value <= ``upper_bound``,
    either may be missing: TFMA's ``GenericValueThreshold``) and/or a change threshold
    (``change: {absolute: A, relative: R, direction: higher_is_better|lower_is_better}``:
    TFMA's ``GenericChangeThreshold``). The change is ``v_c - v_b`` (candidate minus
    production) and the relative change ``(v_c - v_b) / v_b``; with
    ``higher_is_better`` a change passes when it is >= the threshold, with
    ``lower_is_better`` when it is <= it (so ``{relative: 0.05, direction:
    lower_is_better}`` allows a candidate at most 5% worse, and ``{absolute: 0,
    direction: higher_is_better}`` no worse at all)."""

    def __init__(self, metric: str, *, lower_bound: float | None = None,
                 upper_bound: float | None = None, absolute: float | None = None,
                 relative: float | None = None, direction: str | None = None):
        if metric not in GATE_METRICS:
            raise BeammlError(f'gate metric {metric!r} is not one of '
                              f'{", ".join(GATE_METRICS)}')
        self.metric = metric
        self.lower_bound = _number(lower_bound, f'{metric}: lower_bound')
        self.upper_bound = _number(upper_bound, f'{metric}: upper_bound')
        self.absolute = _number(absolute, f'{metric}: change absolute')
        self.relative = _number(relative, f'{metric}: change relative')
        has_change = self.absolute is not None or self.relative is not None
        if self.lower_bound is None and self.upper_bound is None and not has_change:
            raise BeammlError(f'gate threshold on {metric} has no lower_bound, upper_bound '
                              'or change')
        if has_change and not GATE_METRICS[metric]:
            raise BeammlError(f'gate metric {metric} has no production baseline: give it '
                              'lower_bound / upper_bound, not a change')
        if has_change and direction not in _DIRECTIONS:
            raise BeammlError(f'gate change on {metric}: direction must be '
                              f'{" or ".join(_DIRECTIONS)}, got {direction!r}')
        if not has_change and direction is not None:
            raise BeammlError(f'gate threshold on {metric}: direction without a change')
        self.direction = direction

    @classmethod
    def from_dict(cls, entry) -> 'Threshold':
        if not isinstance(entry, Mapping) or 'metric' not in entry:
            raise BeammlError(f'gate threshold {entry!r}: expected a mapping with "metric"')
        unknown = set(entry) - {'metric', 'lower_bound', 'upper_bound', 'change'}
        if unknown:
            raise BeammlError(f'gate threshold on {entry["metric"]}: unknown key(s) '
                              f'{", ".join(sorted(map(str, unknown)))}')
        change = entry.get('change') or {}
        if not isinstance(change, Mapping) or set(change) - {'absolute', 'relative',
                                                             'direction'}:
            raise BeammlError(f'gate threshold on {entry["metric"]}: change must be a '
                              'mapping of absolute, relative, direction')
        return cls(entry['metric'], lower_bound=entry.get('lower_bound'),
                   upper_bound=entry.get('upper_bound'), absolute=change.get('absolute'),
                   relative=change.get('relative'), direction=change.get('direction'))

    def check(self, report: Mapping[str, Any]) -> list[dict]:
        """One result per bound: {metric, kind, value, (baseline,) bound, passed}."""
        value = gate_metric(report, self.metric)
        out = []
        ok = value is not None and not math.isnan(value)
        if self.lower_bound is not None:
            out.append({'metric': self.metric, 'kind': 'lower_bound', 'value': value,
                        'bound': self.lower_bound, 'passed': ok and value >= self.lower_bound})
        if self.upper_bound is not None:
            out.append({'metric': self.metric, 'kind': 'upper_bound', 'value': value,
                        'bound': self.upper_bound, 'passed': ok and value <= self.upper_bound})
        if self.absolute is None and self.relative is None:
            return out
        base = gate_metric(report, self.metric, 'production')
        both = ok and base is not None and not math.isnan(base)
        diff = value - base if both else None
        for kind, bound in (('change_absolute', self.absolute),
                            ('change_relative', self.relative)):
            if bound is None:
                continue
            change = diff
            if kind == 'change_relative' and both:
                change = diff / base if base else (0.0 if diff == 0 else math.copysign(
                    math.inf, diff))
            passed = both and (change >= bound if self.direction == 'higher_is_better'
                               else change <= bound)
            out.append({'metric': self.metric, 'kind': kind, 'value': value,
                        'baseline': base, 'change': change, 'bound': bound,
                        'direction': self.direction, 'passed': bool(passed)})
        return out


def _number(x, what: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise BeammlError(f'gate {what} must be a number, got {x!r}')
    return float(x)


class Gate:
    """The promote/keep decision on a shadow comparison: promote when every threshold
    passes and at least one point was compared.

    The YAML (or dict) form::

        thresholds:
          - metric: agreement
            lower_bound: 0.9
          - metric: inertia_per_point
            change: {relative: 0.05, direction: lower_is_better}
    """

    def __init__(self, thresholds: Sequence[Threshold]):
        if not thresholds:
            raise BeammlError('the gate has no thresholds')
        self.thresholds = list(thresholds)

    @classmethod
    def from_dict(cls, doc, source: str = 'gate') -> 'Gate':
        if not isinstance(doc, Mapping) or set(doc) != {'thresholds'} or not isinstance(
                doc['thresholds'], list):
            raise BeammlError(f'{source}: expected a mapping with one key, thresholds: a '
                              'list of {metric, lower_bound, upper_bound, change}')
        try:
            return cls([Threshold.from_dict(e) for e in doc['thresholds']])
        except BeammlError as e:
            raise BeammlError(f'{source}: {e}') from e

    @classmethod
    def load(cls, path: str) -> 'Gate':
        import yaml
        from beamml.transforms.io.documents import read_text
        try:
            text = read_text(path)
        except Exception as e:
            raise BeammlError(f'cannot read the gate {path}: {e}') from e
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BeammlError(f'the gate {path} is not valid YAML: {first}') from e
        return cls.from_dict(doc, f'the gate {path}')

    def to_dict(self) -> dict:
        out = []
        for t in self.thresholds:
            e: dict = {'metric': t.metric}
            if t.lower_bound is not None:
                e['lower_bound'] = t.lower_bound
            if t.upper_bound is not None:
                e['upper_bound'] = t.upper_bound
            if t.absolute is not None or t.relative is not None:
                e['change'] = {k: v for k, v in (('absolute', t.absolute),
                                                 ('relative', t.relative),
                                                 ('direction', t.direction))
                               if v is not None}
            out.append(e)
        return {'thresholds': out}

    def decide(self, report: Mapping[str, Any]) -> dict:
        """{decision: promote|keep, passed, reason, checks: [...]} of a comparison report."""
        checks = [c for t in self.thresholds for c in t.check(report)]
        failed = [c for c in checks if not c['passed']]
        if not report.get('points'):
            reason = 'no point was compared'
        elif failed:
            reason = 'failed: ' + ', '.join(f'{c["metric"]} {c["kind"]}' for c in failed)
        else:
            reason = 'every threshold passed'
        passed = bool(report.get('points')) and not failed
        return {'decision': 'promote' if passed else 'keep', 'passed': passed,
                'reason': reason, 'checks': checks}
