"""Every CombineFn defined in beamml goes through the one contract test (combiner_contract.py).

The CombineFns are found by discovery (every ``apache_beam.CombineFn`` subclass
defined under ``beamml.``, after importing every module of beamml.transforms and
beamml.pipelines), never by module path, and each must have an entry in
:data:`REGISTRY`: {class name: {case name: factory}}, a factory taking the class
and returning ``(fn, inputs, equal, empty)`` for :func:`check_combine_fn`, with
small seeded inputs shaped as the pipelines feed them.
"""
from __future__ import annotations

import importlib
import pkgutil

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.typehints.decorators import get_type_hints
from apache_beam.typehints.typehints import check_constraint

from combiner_contract import assert_same, check_combine_fn
from beamml.transforms.kmeans import LabelledPoints, row_hashes
from beamml.transforms.metrics import (SLICE_COLUMN, Accuracy, AverageQueryPrecision,
                                       ConfusionCounts, F1, MeanAveragePrecision, Precision,
                                       PrecisionAtK, QueryCount, QueryPrecision, Recall,
                                       query_stats)
from beamml.transforms.sorting import SORT_KEY

PACKAGES = ('beamml.transforms', 'beamml.pipelines')
FLOAT_SUMS = dict(rtol=1e-9, atol=1e-12)   # sums whose order of additions differs


def discover_combine_fns() -> dict[str, list[type]]:
    """{class name: [classes]} of every CombineFn subclass defined in a beamml module."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + '.'):
            importlib.import_module(info.name)
    found: dict[str, list[type]] = {}
    stack, seen = [beam.CombineFn], set()
    while stack:   # every subclass, also those not bound at a module's top level
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                if sub.__module__.startswith('beamml.'):
                    found.setdefault(sub.__name__, []).append(sub)
    return found


@pytest.fixture(scope='module')
def combine_fns():
    return discover_combine_fns()


def equal_exact(a, b):
    assert_same(a, b)


def equal_float_sums(a, b):
    assert_same(a, b, **FLOAT_SUMS)


def cut(n: int, n_parts: int, rng) -> list[tuple[int, int]]:
    """(lo, hi) of n_parts consecutive batches; one of them empty."""
    cuts = np.sort(rng.choice(np.arange(1, n), n_parts - 2, replace=False))
    bounds = np.r_[0, cuts, cuts[len(cuts) // 2], n]   # a repeated cut: an empty batch
    bounds.sort()
    return list(zip(bounds[:-1], bounds[1:]))


def points(seed: int, n: int, d: int, n_distinct: int | None = None) -> np.ndarray:
    """Seeded points with duplicated rows (ties in every distance and hash)."""
    rng = np.random.default_rng(seed)
    if n_distinct is not None:
        return rng.normal(size=(n_distinct, d))[rng.integers(0, n_distinct, n)]
    X = rng.normal(size=(n, d))
    X[::7] = X[1]
    X[3::11] = X[5]
    return X


def points_batch(ids: np.ndarray, X: np.ndarray, **columns) -> pa.RecordBatch:
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    return pa.RecordBatch.from_pydict({'id': pa.array(ids, pa.int64()), 'features': features,
                                       **columns})


def sq_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)


# ----------------------------------------------------------------------------- kmeans

def labelled_points(track_farthest: bool):
    """Centred batches labelled against k=4 centres, one of which no point is nearest to."""
    def factory(cls):
        rng = np.random.default_rng(11)
        X = points(11, 90, 3)
        centers = np.vstack([X[[0, 10, 20]], np.full((1, 3), 50.0)])
        sq = sq_distances(X, centers)
        labels = sq.argmin(axis=1)
        sq = sq[np.arange(len(X)), labels]
        hashes = row_hashes(X)
        inputs = []
        for lo, hi in cut(len(X), 8, rng):
            if track_farthest:   # as the final step: no hashes
                inputs.append(LabelledPoints(X[lo:hi], labels[lo:hi], sq[lo:hi]))
            else:
                inputs.append(LabelledPoints(X[lo:hi], labels[lo:hi], sq[lo:hi], hashes[lo:hi]))

        def empty(out):
            assert out.sums is None and out.far_points is None, out
            assert out.counts.tolist() == [0] * 4 and out.inertia == 0.0 and out.signature == 0
        return cls(4, track_farthest=track_farthest), inputs, equal_float_sums, empty
    return factory


def runs_sums(cls):
    """n_init=3 runs side by side: per batch, a list of one ClusterSums (the fused pass)
    per run; run 2 stopped (None everywhere), run 1 in some batches only."""
    from beamml.transforms.kmeans import CentroidCombineFn, lloyd_pass_runs
    from beamml.transforms.kmeans.accumulators import ClusterSums
    rng = np.random.default_rng(13)
    X = points(13, 120, 3)
    runs = [X[[0, 10, 20, 30]], X[[1, 2, 3, 4]], X[[5, 6, 7, 8]]]
    inputs = []
    for i, (lo, hi) in enumerate(cut(len(X), 7, rng)):
        if hi == lo:
            continue
        passes = lloyd_pass_runs(X[lo:hi], runs[:2], hashes=row_hashes(X[lo:hi]))
        inputs.append([ClusterSums.from_pass(passes[0]),
                       ClusterSums.from_pass(passes[1]) if i % 2 else None, None])

    def empty(out):
        assert out == [None, None, None], out
    return cls(CentroidCombineFn(4), 3), inputs, equal_float_sums, empty


def point_stats(sample_size: int, max_distinct: int, n_distinct: int | None):
    """Points RecordBatches (one empty) into count, mean, variance, sample and distinct points."""
    def factory(cls):
        rng = np.random.default_rng(12)
        X = points(12, 80, 3, n_distinct)
        inputs = [points_batch(np.arange(lo, hi), X[lo:hi]) for lo, hi in cut(len(X), 7, rng)]

        def empty(out):
            assert out.n == 0, out.n
            assert all(getattr(out, s) is None for s in ('mean', 'm2', 'sample_keys', 'sample',
                                                          'distinct_hashes', 'distinct'))
        return (cls(sample_size=sample_size, max_distinct=max_distinct, seed=3), inputs,
                equal_float_sums, empty)
    return factory


def oversample_rounds(cls):
    """k-means|| round per batch: the largest keys d^2 / u (at most cap), points and cost."""
    cap, d = 12, 2
    rng = np.random.default_rng(13)
    X = points(13, 96, d)
    candidates = X[[0, 1]]    # batch 0 holds a candidate: a key of 0
    inputs = []
    for lo, hi in cut(len(X), 7, rng):
        sq = sq_distances(X[lo:hi], candidates).min(axis=1)
        keys = sq / (1.0 - rng.random(len(sq)))
        top = np.argsort(-keys, kind='stable')[:cap]
        inputs.append((keys[top], X[lo:hi][top], float(sq.sum())))

    def canonical(out):
        keys, pts, cost = out
        if keys is None:
            return out
        order = np.argsort(-keys, kind='stable')
        return keys[order], pts[order], cost

    def equal(a, b):
        assert_same(canonical(a), canonical(b), **FLOAT_SUMS)

    def empty(out):
        assert out == (None, None, 0.0), out
    return cls(cap), inputs, equal, empty


def candidate_weights(cls):
    """Points of each batch nearest to each of 7 candidates (bincounts as float64)."""
    rng = np.random.default_rng(14)
    inputs = [np.bincount(rng.integers(0, 5 if i == 3 else 7, n), minlength=7).astype(np.float64)
              for i, n in enumerate([9, 0, 17, 4, 30, 1])]
    return cls(), inputs, equal_exact, lambda out: out is None


# ----------------------------------------------------------------------------- metrics

CLASSIFICATION = (Precision(zero_division=1.0), Recall(), Accuracy(), F1(), ConfusionCounts())
RANKING = (AverageQueryPrecision(), PrecisionAtK(3), MeanAveragePrecision(), QueryCount(),
           QueryPrecision())


def log_rows(seed: int = 15, n: int = 240) -> list[pa.RecordBatch]:
    """Canonical classification rows (bool labels, a 'model' slice with nulls), one empty batch.

    Model 'c' never predicts positive (its precision is undefined).
    """
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    model = rng.choice(np.array(['a', 'b', 'c'], dtype=object), n)
    model[rng.random(n) < 0.05] = None
    prediction = (rng.random(n) < 0.5) & (model != 'c')
    return [pa.RecordBatch.from_pydict({
        'truth': pa.array(truth[lo:hi]), 'prediction': pa.array(prediction[lo:hi]),
        'model': pa.array(model[lo:hi], pa.string()), '_file': pa.array(['logs.csv'] * (hi - lo)),
        '_row': pa.array(np.arange(lo, hi))}) for lo, hi in cut(n, 7, rng)]


def _stats_batch(s: dict, slice_key) -> pa.RecordBatch:
    n = len(s['q_id'])
    cols = {SLICE_COLUMN: pa.array([slice_key] * n, pa.string())}
    cols.update({k: pa.array(v) for k, v in s.items() if k != 'duplicates'})
    return pa.RecordBatch.from_pydict(cols)


def query_stat_batches(seed: int = 16, n_queries: int = 30) -> list[pa.RecordBatch]:
    """Per-query statistics as QueryStats emits them: per hash bucket an overall batch
    (null ``_slice``) and a batch of every slice's queries; one empty batch."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_queries)
    q = np.repeat(rng.choice(10 * n_queries, n_queries, replace=False), sizes)
    rank = np.concatenate([np.arange(s) for s in sizes])
    relevance = rng.integers(0, 3, len(q)) * (rng.random(len(q)) < 0.4)
    model = rng.choice(np.array(['x', 'y'], dtype=object), len(q))
    batches = []
    for bucket in range(4):
        rows = q % 4 == bucket
        batches.append(_stats_batch(query_stats(q[rows], rank[rows], relevance[rows], (3,)),
                                    None))
        parts = [_stats_batch(query_stats(q[sel], rank[sel], relevance[sel], (3,)), f'model={m}')
                 for m in ('x', 'y') for sel in [rows & (model == m)] if sel.any()]
        batches.append(pa.concat_tables([pa.Table.from_batches([b]) for b in parts])
                       .combine_chunks().to_batches()[0])
    batches.insert(3, batches[0].slice(0, 0))
    return batches


def _empty_query_precision():
    e = np.zeros(0, np.int64)
    return {'q_id': e, 'n_returned': e, 'n_relevant': e, 'precision': np.zeros(0)}


EMPTY_CLASSIFICATION = {'overall': {
    'precision': 1.0, 'recall': 0.0, 'accuracy': 0.0, 'f1': 0.0,
    'confusion': {'tp': 0, 'fp': 0, 'tn': 0, 'fn': 0},
    'undefined': {'precision': 1, 'recall': 1, 'accuracy': 1, 'f1': 1}}, 'slices': {}}
EMPTY_RANKING = {'overall': {
    'average_query_precision': 0.0, 'precision_at_k': 0.0, 'mean_average_precision': 0.0,
    'n_queries': 0, 'query_precision': _empty_query_precision(),
    'undefined': {'average_query_precision': 1, 'precision_at_k': 1,
                  'mean_average_precision': 1}}, 'slices': {}}


def metrics_classification(cls):
    return (cls(list(CLASSIFICATION), slice_by=['model']), log_rows(), equal_exact,
            lambda out: assert_same(EMPTY_CLASSIFICATION, out))


def metrics_ranking(cls):
    return (cls(list(RANKING)), query_stat_batches(), equal_float_sums,
            lambda out: assert_same(EMPTY_RANKING, out))


def metrics_trec(cls):
    """trec_eval's measures (TrecMeasure) over per-query batches as JudgedQueryStats emits
    them: per bucket the overall rows and the (slice, query) rows."""
    from beamml.transforms.metrics.qrels import _stats_batch
    from beamml.transforms.metrics.ranking_measures import bucket_stats
    from beamml.transforms.metrics.trec_metrics import trec_metrics
    rng = np.random.default_rng(18)
    n = 200
    q = rng.integers(0, 30, n)
    doc = rng.permutation(n).astype(str)
    score = rng.integers(0, 4, n).astype(float)
    rel = rng.choice([0, 0, 1, 2], n).astype(float)
    model = np.where(q % 3 == 0, 'x', 'y')
    batches = []
    for bucket in range(4):
        rows = q % 4 == bucket
        res = bucket_stats({'q_id': q[rows], 'doc_id': doc[rows], 'score': score[rows],
                            'truth_relevance': rel[rows], 'slice': model[rows]}, None,
                           measures=['map', 'ndcg_cut', 'P', 'recall'], cutoffs=[3])
        batches += [_stats_batch(g) for g in res['groups']]
    batches.insert(2, batches[0].slice(0, 0))
    metrics = trec_metrics(['map', 'ndcg_cut', 'P', 'recall'], [3])
    names = [m.name for m in metrics]
    empty = {'overall': {**{m: 0.0 for m in names}, 'undefined': {m: 1 for m in names}},
             'slices': {}}
    return cls(metrics), batches, equal_float_sums, lambda out: assert_same(empty, out)


def metric_classification(cls):
    return cls(F1()), log_rows(), equal_exact, lambda out: assert_same(0.0, out)


def metric_ranking(cls):
    return (cls(QueryPrecision()), query_stat_batches(), equal_exact,
            lambda out: assert_same(_empty_query_precision(), out))


# ----------------------------------------------------------------------------- index

def first_keys_tables(id_type: pa.DataType):
    """Per-batch tables (id, smallest key) of 3 files' rows; ids repeat within and across."""
    def factory_inputs():
        rng = np.random.default_rng(17)
        tables = []
        for file_rank, n in enumerate([40, 25, 33]):
            ids = rng.integers(0, 30, n)
            ids = (pa.array(ids, pa.int64()) if pa.types.is_integer(id_type)
                   else pa.array([f'user-{i}' for i in ids], pa.string()))
            keys = (np.int64(file_rank) << 40) | np.arange(n, dtype=np.int64)
            for lo, hi in cut(n, 3, rng):
                if hi > lo:   # the per-batch step skips empty batches
                    t = pa.table({'id': ids[lo:hi], 'key': keys[lo:hi]})
                    g = t.group_by('id', use_threads=False).aggregate([('key', 'min')])
                    tables.append(pa.table({'id': g.column('id'), 'key': g.column('key_min')}))
        return tables
    return factory_inputs


def min_key_per_id(id_type: pa.DataType, compact_rows: int | None):
    def factory(cls):
        kwargs = {} if compact_rows is None else {'compact_rows': compact_rows}
        schema = pa.schema([('id', id_type), ('key', pa.int64())])

        def equal(a, b):
            assert_same(a.sort_by('id').combine_chunks(), b.sort_by('id').combine_chunks())

        def empty(out):
            assert out.num_rows == 0 and out.schema.equals(schema), out
        return cls(id_type, **kwargs), first_keys_tables(id_type)(), equal, empty
    return factory


def batch_schemas(cls):
    """Batch schemas of files read differently: ints vs floats, text vs numbers, nulls."""
    csv_floats = pa.schema([('id', pa.int64()), ('x', pa.float64()), ('name', pa.string())])
    csv_ints = pa.schema([('id', pa.int64()), ('x', pa.int64()), ('name', pa.null())])
    parquet = pa.schema([('id', pa.int32()), ('x', pa.float32()),
                         ('name', pa.dictionary(pa.int32(), pa.string())), ('tag', pa.string())])
    json_lines = pa.schema([('zeta', pa.bool_()), ('id', pa.int64())])
    text_ids = pa.schema([('id', pa.string()), ('x', pa.float64())])
    inputs = [csv_floats, csv_ints, csv_floats, parquet, json_lines, text_ids, parquet,
              csv_ints]
    return (cls(['id', 'x', 'name']), inputs, equal_exact,
            lambda out: assert_same(pa.schema([]), out))


# ----------------------------------------------------------------------------- norms

def sort_sample(num_shards: int | None, rows_per_shard: int):
    """Batches with their sort key (the negated L2 norm: descending), ties in the norms."""
    def factory(cls):
        rng = np.random.default_rng(18)
        X = points(18, 70, 2)
        X[40:44] = X[40:44, ::-1]   # other points of the same norm
        keys = -np.sqrt((X ** 2).sum(axis=1))
        ids = rng.permutation(1000)[:len(X)]
        inputs = [points_batch(ids[lo:hi], X[lo:hi], **{SORT_KEY: pa.array(keys[lo:hi])})
                  for lo, hi in cut(len(X), 6, rng)]

        def empty(out):
            assert (out.num_rows, out.num_shards, out.schema) == (0, num_shards or 1, None), out
            assert len(out.boundary_keys) == len(out.boundary_ids) == 0, out
        return (cls(num_shards, sample_size=16, rows_per_shard=rows_per_shard), inputs,
                equal_exact, empty)
    return factory


# ----------------------------------------------------------------------------- pipelines

def assigned_batches(cls):
    """Assigned rows (id, cluster, distance, model_version); cluster 2 of 4 gets no point."""
    rng = np.random.default_rng(19)
    cluster = rng.choice([0, 1, 3], 60)
    inputs = [pa.RecordBatch.from_pydict({
        'id': pa.array(np.arange(lo, hi)), 'cluster': pa.array(cluster[lo:hi], pa.int64()),
        'distance': pa.array(rng.random(hi - lo)), 'model_version': pa.array(['v1'] * (hi - lo))})
        for lo, hi in cut(len(cluster), 6, rng)]
    return cls(4), inputs, equal_exact, lambda out: assert_same([0, 0, 0, 0], out)


def commit_counts(cls):
    """The counts of a dated run's commit step: rows of RecordBatches (one of them empty)
    and one per dead letter or written file, summed by name."""
    from beamml.pipelines._platform.commit import one, rows_of
    rng = np.random.default_rng(23)
    sizes = [0] + [int(n) for n in rng.integers(1, 50, 9)]
    inputs = [rows_of(pa.RecordBatch.from_pydict({'id': pa.array(np.arange(n), pa.int64())}))
              for n in sizes]
    inputs += [one(None, 'refused')] * 4 + [one('e', 'read_errors')] * 3
    inputs += [one(f'f{i}', 'written') for i in range(5)]
    rng.shuffle(inputs)
    assert {'rows': sum(sizes), 'refused': 4, 'read_errors': 3, 'written': 5} == {
        name: sum(n for k, n in inputs if k == name) for name in ('rows', 'refused',
                                                                   'read_errors', 'written')}
    return cls(), inputs, equal_exact, lambda out: assert_same({}, out)


# ----------------------------------------------------------------------------- pca

def pca_batches(cls):
    """Correlated points 100 away from the origin in batches of varied sizes (one empty)
    into n, mean and the centred scatter matrix (Chan et al.'s merge)."""
    rng = np.random.default_rng(29)
    X = points(29, 150, 4) @ rng.normal(size=(4, 4)) + 100.0
    inputs = [points_batch(np.arange(lo, hi), X[lo:hi]) for lo, hi in cut(len(X), 8, rng)]
    assert any(b.num_rows == 0 for b in inputs)

    def equal(a, b):
        assert a.n == b.n, (a.n, b.n)
        assert_same(a.mean, b.mean, rtol=1e-12)
        scale = 0.0 if a.m2 is None else np.abs(a.m2).max()
        assert_same(a.m2, b.m2, atol=1e-11 * scale)

    def empty(out):
        assert (out.n, out.mean, out.m2) == (0, None, None), out
    return cls(), inputs, equal, empty


# ----------------------------------------------------------------------------- monitoring

def monitor_columns(with_bins: bool):
    """Column batches (values, labels) as MonitorColumns makes them: NaN and inf values, a
    row without a nearest centre (label -1), an empty batch; with bins: fixed edges."""
    def factory(cls):
        rng = np.random.default_rng(31)
        V = rng.normal(size=(90, 3)) * [1.0, 10.0, 0.1]
        V[5, 0], V[17, 1], V[40, 2] = np.nan, np.inf, -np.inf
        labels = rng.integers(0, 4, 90)
        labels[[5, 17]] = -1
        inputs = [(V[lo:hi], labels[lo:hi]) for lo, hi in cut(len(V), 7, rng)]
        inputs.append((np.empty((0, 3)), np.empty(0, np.int64)))
        edges = np.array([np.linspace(-2, 2, 9), np.linspace(-20, 20, 9),
                          np.linspace(-0.1, 0.1, 9)]) if with_bins else None

        def empty(out):
            assert out['rows'] == 0 and out['moments']['count'].tolist() == [0, 0, 0], out
            assert np.isnan(out['moments']['mean']).all(), out
            if with_bins:
                assert out['counts'].shape == (3, 10) and not out['counts'].any(), out
                assert out['clusters'].tolist() == [0, 0, 0, 0], out
        fn = cls(3, 4, edges) if with_bins else cls(3)
        return fn, inputs, equal_float_sums, empty
    return factory




def shadow_comparisons(shape):
    """Comparison batches (production label, shadow label, both losses; -1: refused by the
    shadow) of a k=3 model against a k=4 one; with ``shape`` None the table sizes itself
    from the batches' metadata."""
    def factory(cls):
        rng = np.random.default_rng(29)
        n = 80
        a, b = rng.integers(0, 3, n), rng.integers(-1, 4, n)
        loss, shadow_loss = rng.random(n), rng.random(n)
        inputs = [pa.RecordBatch.from_pydict({
            'cluster': pa.array(a[lo:hi], pa.int64()),
            'shadow_cluster': pa.array(b[lo:hi], pa.int64()),
            'loss': pa.array(loss[lo:hi]), 'shadow_loss': pa.array(shadow_loss[lo:hi])}
        ).replace_schema_metadata({'k': '3', 'shadow_k': '4'}) for lo, hi in cut(n, 6, rng)]

        def empty(out):
            assert out['points'] == 0 and out['agreement'] is None, out
            assert np.asarray(out['contingency']).sum() == 0
        return cls(shape), inputs, equal_float_sums, empty
    return factory


def version_counts(cls):
    """Assigned rows of a canary run: two model versions with k=3 and k=2."""
    rng = np.random.default_rng(31)
    n = 70
    canary = rng.random(n) < 0.3
    cluster = np.where(canary, rng.integers(0, 2, n), rng.integers(0, 3, n))
    version = np.where(canary, 'v2', 'v1')
    inputs = [pa.RecordBatch.from_pydict({
        'id': pa.array(np.arange(lo, hi)), 'cluster': pa.array(cluster[lo:hi], pa.int64()),
        'model_version': pa.array(version[lo:hi].tolist(), pa.string())})
        for lo, hi in cut(n, 6, rng)]
    return (cls(['v1', 'v2'], [3, 2]), inputs, equal_exact,
            lambda out: assert_same([[0, 0, 0], [0, 0]], out))


# ----------------------------------------------------------------------------- the registry

REGISTRY = {
    'CentroidCombineFn': {'sums': labelled_points(track_farthest=False),
                          'farthest': labelled_points(track_farthest=True)},
    'RunsCombineFn': {'runs': runs_sums},
    'PointStatsCombineFn': {'sampled': point_stats(10, 12, None),
                            'few_distinct': point_stats(200, 8, 5)},
    'OversampleCombineFn': {'round': oversample_rounds},
    'SumArraysCombineFn': {'weights': candidate_weights},
    'MetricsCombineFn': {'classification': metrics_classification,
                         'ranking': metrics_ranking, 'trec': metrics_trec},
    'MetricCombineFn': {'classification': metric_classification, 'ranking': metric_ranking},
    'MinKeyPerIdFn': {'int_ids': min_key_per_id(pa.int64(), compact_rows=4),
                      'string_ids': min_key_per_id(pa.string(), compact_rows=None)},
    'UnifySchemasFn': {'schemas': batch_schemas},
    'ClusterSizesFn': {'assigned': assigned_batches},
    'CommitCountsFn': {'pairs': commit_counts},
    '_SortSampleFn': {'fixed_shards': sort_sample(4, 1_000_000),
                      'shards_by_rows': sort_sample(None, 20)},
    'PCACombineFn': {'batches': pca_batches},
    'ColumnStatsFn': {'moments': monitor_columns(False), 'bins_clusters': monitor_columns(True)},
    'ShadowComparisonFn': {'fixed_shape': shadow_comparisons((3, 4)),
                           'self_sizing': shadow_comparisons(None)},
    'VersionCountsFn': {'two_versions': version_counts},
}
CASES = [(name, case) for name in sorted(REGISTRY) for case in REGISTRY[name]]


def test_every_combine_fn_is_registered(combine_fns):
    twins = {name: [c.__module__ for c in classes] for name, classes in combine_fns.items()
             if len(classes) > 1}
    assert not twins, f'CombineFns of the same name in several modules: {twins}'
    missing = sorted(set(combine_fns) - set(REGISTRY))
    assert not missing, (f'CombineFns without a contract case in tests/test_combiners.py '
                         f'REGISTRY: {missing}')
    stale = sorted(set(REGISTRY) - set(combine_fns))
    assert not stale, f'REGISTRY names CombineFns that beamml no longer defines: {stale}'


def test_every_combine_fn_declares_its_types(combine_fns):
    # what it adds and what it outputs, with Beam's decorators (as TFDV's
    # ``@beam.typehints.with_input_types(pa.RecordBatch)``): Beam checks them against the
    # PCollection when the pipeline is built, and picks the output's coder from them
    undeclared = {}
    for name, classes in sorted(combine_fns.items()):
        for cls in classes:
            hints = get_type_hints(cls)
            missing = [what for what, types in (('input', hints.input_types),
                                                ('output', hints.output_types)) if not types]
            if missing:
                undeclared[f'{cls.__module__}.{name}'] = missing
    assert not undeclared, (f'CombineFns without @beam.typehints.with_input_types / '
                            f'with_output_types: {undeclared}')


@pytest.mark.parametrize('name, case', CASES, ids=[f'{n}-{c}' for n, c in CASES])
def test_combine_fn_takes_and_gives_its_declared_types(name, case, combine_fns):
    # the declared types are the true ones: every input of the contract case (shaped as
    # the pipelines feed them) and the outputs, of the inputs and of no input
    fn, inputs, _, empty = REGISTRY[name][case](combine_fns[name][0])
    hints = fn.get_type_hints()
    input_type, output_type = hints.input_types[0][0], hints.simple_output_type(name)
    for i, element in enumerate(inputs):
        try:
            check_constraint(input_type, element)
        except TypeError as e:   # Beam's type hint errors
            raise AssertionError(f'{name}: input {i} is not of its declared type: {e}') from None
    no_input_raises = isinstance(empty, type) and issubclass(empty, BaseException)
    fn.setup()
    try:
        outputs = [fn.apply(inputs)] + ([] if no_input_raises else [fn.apply([])])
    finally:
        fn.teardown()
    for out in outputs:
        try:
            check_constraint(output_type, out)
        except TypeError as e:   # Beam's type hint errors
            raise AssertionError(f'{name}: the output is not of its declared type: {e}') \
                from None


@pytest.mark.parametrize('name, case', CASES, ids=[f'{n}-{c}' for n, c in CASES])
def test_combine_fn_contract(name, case, combine_fns):
    assert name in combine_fns, f'no CombineFn named {name} is defined in beamml'
    (cls,) = combine_fns[name]
    check_combine_fn(*REGISTRY[name][case](cls))


# ----------------------------------------------------------------------------- the helper itself

EVENTS = []


class _SumFn(beam.CombineFn):
    """A correct toy: the element-wise sum of 2-vectors (None for no input)."""

    def __init__(self):
        self.ready = False

    def setup(self):
        self.ready = True
        EVENTS.append('setup')

    def create_accumulator(self):
        assert self.ready, 'create_accumulator before setup'
        return {'sum': np.zeros(2), 'n': 0}

    def add_input(self, acc, x):
        acc['sum'] += x
        acc['n'] += 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for a in accumulators:
            first['sum'] += a['sum']
            first['n'] += a['n']
        return first

    def extract_output(self, acc):
        return acc['sum'] if acc['n'] else None

    def teardown(self):
        EVENTS.append('teardown')


class _MergesIntoSecondFn(_SumFn):
    """Right outputs, but merges add into the second accumulator and return it."""

    def merge_accumulators(self, accumulators):
        accs = list(accumulators)
        if len(accs) == 1:
            return accs[0]
        return super().merge_accumulators([accs[1], accs[0]] + accs[2:])


class _AliasFn(_SumFn):
    """Right outputs, a merge never changes a non-first accumulator itself, but the first one
    takes another's array while it has none, and a later add changes it in place."""

    def create_accumulator(self):
        return {'sum': None, 'n': 0}

    def add_input(self, acc, x):
        acc['sum'] = x.copy() if acc['sum'] is None else acc['sum'].__iadd__(x)
        acc['n'] += 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for a in accumulators:
            if a['sum'] is not None:
                first['sum'] = a['sum'] if first['sum'] is None else first['sum'] + a['sum']
            first['n'] += a['n']
        return first


class _ChangesElementFn(_SumFn):
    def add_input(self, acc, x):
        acc = super().add_input(acc, x)
        x *= 0.0
        return acc


class _OrderDependentFn(_SumFn):
    """A 'merge' that keeps the first accumulator only."""

    def merge_accumulators(self, accumulators):
        return next(iter(accumulators))


def _toy_inputs():
    return [np.arange(2.0) + i for i in range(9)]


def _toy_empty(out):
    assert out is None, out


def test_helper_accepts_a_correct_combine_fn_and_calls_setup_and_teardown():
    EVENTS.clear()
    check_combine_fn(_SumFn(), _toy_inputs(), equal_exact, _toy_empty)
    assert EVENTS.count('setup') == EVENTS.count('teardown') == 2, EVENTS


def test_helper_catches_a_merge_that_changes_another_accumulator():
    with pytest.raises(AssertionError, match='changed .* which is not the first accumulator'):
        check_combine_fn(_MergesIntoSecondFn(), _toy_inputs(), equal_exact, _toy_empty)


def test_helper_catches_a_non_first_accumulator_changed_later_through_an_alias():
    with pytest.raises(AssertionError, match='changed afterwards'):
        check_combine_fn(_AliasFn(), _toy_inputs(), equal_exact, _toy_empty)


def test_helper_catches_an_add_input_that_changes_its_element():
    with pytest.raises(AssertionError, match='add_input changed element'):
        check_combine_fn(_ChangesElementFn(), _toy_inputs(), equal_exact, _toy_empty)


def test_helper_catches_outputs_that_depend_on_the_way():
    with pytest.raises(AssertionError, match='differs from adding every input'):
        check_combine_fn(_OrderDependentFn(), _toy_inputs(), equal_exact, _toy_empty)


def test_helper_checks_the_documented_empty_output():
    with pytest.raises(AssertionError, match='documented empty output'):
        check_combine_fn(_SumFn(), _toy_inputs(), equal_exact,
                         lambda out: assert_same(np.zeros(2), out))
    with pytest.raises(AssertionError, match='does not raise'):
        check_combine_fn(_SumFn(), _toy_inputs(), equal_exact, ValueError)
