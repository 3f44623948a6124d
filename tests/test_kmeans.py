"""K-means training: kernels, combiners and the KMeans composite against scikit-learn.

Pipelines run on the in-process FnApiRunner; several KMeans graphs share one
pipeline where they can (a pipeline costs about a second to start).
"""
from __future__ import annotations

import itertools
import sys
import warnings

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from sklearn.cluster._kmeans import _tolerance as sk_tolerance
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from kmeans_cli import run_kmeans
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import points_batch
from beamml.transforms.kmeans import (CentroidCombineFn, KMeans, LabelledPoints,
                                      PointStatsCombineFn, kmeans_plusplus, label_signature,
                                      lloyd_labels, read_cached_points, read_initial_centers,
                                      recursion_limit_for, row_hashes, tolerance, update_centers,
                                      write_cached_points)
from beamml.transforms.kmeans.kernels import _multipliers


# ----------------------------------------------------------------------------- helpers

def brute_labels(X, centers):
    """Labels and squared distances by direct differences (the oracle)."""
    D = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    labels = D.argmin(axis=1)
    return labels, D[np.arange(len(X)), labels]


def sk_fit(X, C0, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # ConvergenceWarning when clusters collapse
        return SKKMeans(len(C0), init=C0, n_init=1, algorithm='lloyd', **kw).fit(X)


def split(X, sizes):
    """X cut into consecutive batches of the given sizes (the last takes the rest)."""
    out, lo = [], 0
    for s in sizes:
        out.append(X[lo:lo + s])
        lo += s
    if lo < len(X):
        out.append(X[lo:])
    return out


def assert_same_as_sklearn(result, sk, X):
    scale = np.abs(sk.cluster_centers_).max()
    np.testing.assert_allclose(result.centers, sk.cluster_centers_, rtol=1e-9,
                               atol=1e-9 * scale)
    labels, _ = brute_labels(X, result.centers)
    np.testing.assert_array_equal(labels, sk.labels_)
    np.testing.assert_allclose(result.inertia, sk.inertia_, rtol=1e-9)
    assert result.n_iter == sk.n_iter_
    assert result.cluster_sizes == np.bincount(sk.labels_, minlength=len(sk.cluster_centers_)
                                               ).tolist()


# ----------------------------------------------------------------------------- kernels

def test_lloyd_labels_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 5))
    C = rng.normal(size=(7, 5))
    labels, sq = lloyd_labels(X, C)
    ref_labels, ref_sq = brute_labels(X, C)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(sq, ref_sq, rtol=1e-9, atol=1e-12)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(lloyd_labels(X, C, return_distances=False), ref_labels)


def test_lloyd_labels_ties_go_to_lowest_index_and_one_point():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    X = np.array([[0.0, 0.0], [2.0, 0.0], [0.5, 0.5]])
    labels, sq = lloyd_labels(X, C)
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_allclose(sq, [1.0, 1.0, 0.5])
    labels, sq = lloyd_labels(X[:1], C[1:2])
    assert labels.tolist() == [0] and sq.tolist() == [1.0]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kmeans_plusplus_is_sklearns(seed):
    X, _ = make_blobs(n_samples=400, n_features=3, centers=6, random_state=seed)
    centers, indices = kmeans_plusplus(X, 6, random_state=seed)
    sk_centers, sk_indices = sk_kmeans_plusplus(X, 6, random_state=seed)
    np.testing.assert_array_equal(indices, sk_indices)
    np.testing.assert_array_equal(centers, sk_centers)
    w = np.random.default_rng(seed).integers(1, 5, size=len(X)).astype(float)
    centers, indices = kmeans_plusplus(X, 6, sample_weight=w, random_state=seed)
    sk_centers, sk_indices = sk_kmeans_plusplus(X, 6, sample_weight=w, random_state=seed)
    np.testing.assert_array_equal(indices, sk_indices)


def test_kmeans_plusplus_picks_distinct_points_with_duplicates():
    X = np.repeat(np.arange(5.0)[:, None], 20, axis=0)  # 5 distinct points, 20 times each
    centers, _ = kmeans_plusplus(X, 5, random_state=0)
    assert sorted(centers[:, 0].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_tolerance_is_sklearns():
    X = np.random.default_rng(3).normal(size=(100, 4)) * [1, 2, 3, 4]
    assert tolerance(X.var(axis=0), 1e-4) == pytest.approx(sk_tolerance(X, 1e-4), rel=1e-15)
    assert tolerance(X.var(axis=0), 0) == 0


def test_row_hashes_equal_rows_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10_000, 3))
    X[5] = X[7]
    X[8] = [0.0, -0.0, 1.0]
    X[9] = [-0.0, 0.0, 1.0]
    h = row_hashes(X)
    assert h.dtype == np.uint64 and h.shape == (10_000,)
    assert h[5] == h[7] and h[8] == h[9]
    assert len(np.unique(h)) == 10_000 - 2
    X2 = X.copy()
    X2[0, 2] = np.nextafter(X2[0, 2], 1.0)  # one bit differs
    assert row_hashes(X2)[0] != h[0]


def test_row_hash_multipliers_are_splitmix64():
    # the per-feature constants, vectorised, against SplitMix64 in Python integers
    mask, x, ref = (1 << 64) - 1, 0x2545F4914F6CDD1D, []
    for _ in range(300):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        ref.append((z ^ (z >> 31)) | 1)
    assert _multipliers(300).tolist() == ref
    assert _multipliers(3).tolist() == ref[:3] and len(_multipliers(0)) == 0


def test_label_signature_order_free_and_sensitive():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 2))
    h = row_hashes(X)
    labels = rng.integers(0, 4, size=1000)
    s = label_signature(h, labels)
    perm = rng.permutation(1000)
    assert label_signature(h[perm], labels[perm]) == s
    parts = (label_signature(h[:300], labels[:300]) + label_signature(h[300:], labels[300:]))
    assert parts % (1 << 64) == s
    changed = labels.copy()
    changed[17] = (changed[17] + 1) % 4
    assert label_signature(h, changed) != s
    swapped = labels.copy()  # two points exchange labels: the counts stay, the signature moves
    i, j = np.flatnonzero(labels == 0)[0], np.flatnonzero(labels == 1)[0]
    swapped[i], swapped[j] = 1, 0
    assert label_signature(h, swapped) != s


def test_update_centers_keep_and_farthest():
    old = np.array([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    sums = np.array([[2.0, 4.0], [0.0, 0.0], [15.0, 15.0]])
    counts = np.array([2, 0, 3])
    centers, new_counts, moved = update_centers(sums, counts, old)
    np.testing.assert_array_equal(centers, [[1.0, 2.0], [10.0, 10.0], [5.0, 5.0]])
    assert new_counts.tolist() == [2, 0, 3] and moved == 0
    # farthest: the farthest point (7, 7) of cluster 2 moves to the empty cluster 1
    far_points = np.array([[7.0, 7.0], [1.0, 3.0]])
    centers, new_counts, moved = update_centers(
        sums, counts, old, empty_cluster='farthest', far_points=far_points,
        far_labels=np.array([2, 0]), far_sq_distances=np.array([8.0, 2.0]))
    np.testing.assert_array_equal(centers, [[1.0, 2.0], [7.0, 7.0], [4.0, 4.0]])
    assert new_counts.tolist() == [2, 1, 2] and moved == 1
    # a cluster emptied by the move goes to the largest cluster's centre (as scikit-learn)
    centers, new_counts, _ = update_centers(
        np.array([[3.0, 3.0], [0.0, 0.0], [6.0, 6.0]]), np.array([1, 0, 3]),
        np.array([[0.0, 0.0], [9.0, 9.0], [2.0, 2.0]]), empty_cluster='farthest',
        far_points=np.array([[3.0, 3.0]]), far_labels=np.array([0]),
        far_sq_distances=np.array([18.0]))
    assert new_counts.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(centers, [[2.0, 2.0], [3.0, 3.0], [2.0, 2.0]])


def test_read_initial_centers_npy_and_csv(tmp_path):
    C = np.array([[1.0, 2.0], [3.0, 4.5]])
    np.save(tmp_path / 'c.npy', C)
    np.testing.assert_array_equal(read_initial_centers(str(tmp_path / 'c.npy'), n_clusters=2,
                                                       n_features=2), C)
    (tmp_path / 'c.csv').write_text('a,b\n1,2\n3,4.5\n')
    np.testing.assert_array_equal(read_initial_centers(str(tmp_path / 'c.csv')), C)
    with pytest.raises(BeammlError, match='2 centres but k=3'):
        read_initial_centers(str(tmp_path / 'c.npy'), n_clusters=3)
    with pytest.raises(BeammlError, match='2 features but the data have 3'):
        read_initial_centers(str(tmp_path / 'c.npy'), n_features=3)
    np.save(tmp_path / 'nan.npy', np.array([[1.0, np.nan]]))
    with pytest.raises(BeammlError, match='NaN'):
        read_initial_centers(str(tmp_path / 'nan.npy'))
    np.save(tmp_path / 'flat.npy', np.arange(3.0))
    with pytest.raises(BeammlError, match=r'\(k, d\)'):
        read_initial_centers(str(tmp_path / 'flat.npy'))
    with pytest.raises(BeammlError):
        read_initial_centers(str(tmp_path / 'missing.npy'))
    (tmp_path / 'bad.csv').write_text('a,b\n1,2\n3,x\n')
    with pytest.raises(BeammlError, match='refused'):
        read_initial_centers(str(tmp_path / 'bad.csv'))


def test_cached_points_round_trip(tmp_path):
    X = np.random.default_rng(0).normal(size=(100, 3))
    h = row_hashes(X)
    path = write_cached_points(str(tmp_path / 'cache'), X, h)
    X2, h2 = read_cached_points(path)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(h2, h)
    assert write_cached_points(str(tmp_path / 'cache'), X, h) == path  # same content, same file


# ----------------------------------------------------------------------------- combiners

def _labelled(X, labels, C):
    sq = ((X - C[labels]) ** 2).sum(axis=1)
    return LabelledPoints(X, labels, sq, row_hashes(X))


def test_centroid_combinefn_any_split_any_merge_order():
    rng = np.random.default_rng(0)
    k = 5
    X = rng.integers(-50, 50, size=(997, 3)).astype(float)  # integer values: float sums exact
    C = rng.integers(-50, 50, size=(k, 3)).astype(float)
    labels, _ = brute_labels(X, C)
    labels[labels == 3] = 0  # cluster 3 stays empty
    fn = CentroidCombineFn(k)
    one_shot = fn.apply([_labelled(X, labels, C)])
    ref_sums = np.zeros((k, 3))
    np.add.at(ref_sums, labels, X)
    np.testing.assert_array_equal(one_shot.sums, ref_sums)
    assert one_shot.counts.tolist() == np.bincount(labels, minlength=k).tolist()
    assert one_shot.inertia == ((X - C[labels]) ** 2).sum()
    assert one_shot.signature == label_signature(row_hashes(X), labels)
    for seed, sizes in [(1, [1, 10, 300]), (2, [500]), (3, [0, 200, 200, 200]), (4, [996])]:
        batches = split(np.arange(len(X)), sizes)
        accs = []
        for idx in batches:
            acc = fn.create_accumulator()
            accs.append(fn.add_input(acc, _labelled(X[idx], labels[idx], C)))
        accs.append(fn.create_accumulator())  # an empty accumulator merges as nothing
        order = np.random.default_rng(seed).permutation(len(accs))
        merged = fn.extract_output(fn.merge_accumulators([accs[i] for i in order]))
        np.testing.assert_array_equal(merged.sums, one_shot.sums)
        assert merged.counts.tolist() == one_shot.counts.tolist()
        assert merged.inertia == one_shot.inertia
        assert merged.signature == one_shot.signature
    empty = fn.extract_output(fn.merge_accumulators([fn.create_accumulator()] * 2))
    assert empty.sums is None and empty.n == 0 and empty.inertia == 0


def test_centroid_combinefn_float_sums_close_whatever_the_split():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 4)) * 1e3
    C = rng.normal(size=(6, 4)) * 1e3
    labels, _ = brute_labels(X, C)
    fn = CentroidCombineFn(6)
    whole = fn.apply([_labelled(X, labels, C)])
    parts = [fn.add_input(fn.create_accumulator(), _labelled(X[i], labels[i], C))
             for i in np.array_split(rng.permutation(3000), 7)]
    merged = fn.extract_output(fn.merge_accumulators(parts[::-1]))
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    assert merged.counts.tolist() == whole.counts.tolist()
    assert merged.signature == whole.signature


def test_centroid_combinefn_tracks_farthest_points_whatever_the_split():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 2))
    C = rng.normal(size=(4, 2))
    labels, sq = brute_labels(X, C)
    fn = CentroidCombineFn(4, track_farthest=True)
    whole = fn.apply([LabelledPoints(X, labels, sq)])
    top = np.argsort(-sq)[:4]
    np.testing.assert_array_equal(whole.far_sq_distances, sq[top])
    np.testing.assert_array_equal(whole.far_points, X[top])
    np.testing.assert_array_equal(whole.far_labels, labels[top])
    parts = [fn.add_input(fn.create_accumulator(), LabelledPoints(X[i], labels[i], sq[i]))
             for i in np.array_split(np.arange(500), 9)]
    merged = fn.extract_output(fn.merge_accumulators(parts[::-1]))
    np.testing.assert_array_equal(merged.far_points, whole.far_points)


def test_point_stats_combinefn_order_free():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3)) * [1.0, 10.0, 100.0] + 5.0
    X[100:150] = X[0]  # duplicates
    fn = PointStatsCombineFn(sample_size=300, max_distinct=50, seed=7)
    batches = split(X, [100, 500, 650, 250])
    ref = fn.apply(batches)
    assert ref.n == 2000
    np.testing.assert_allclose(ref.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ref.var, X.var(axis=0), rtol=1e-10)
    assert ref.sample.shape == (300, 3) and ref.n_distinct == 50
    assert np.all(np.diff(ref.sample_keys.astype(np.float64)) >= 0)
    # every sampled row is a row of X, no row twice
    rows = {tuple(r) for r in X}
    assert all(tuple(r) in rows for r in ref.sample)
    for order in itertools.islice(itertools.permutations(range(len(batches))), 0, 24, 5):
        accs = [fn.add_input(fn.create_accumulator(), b) for b in batches]  # merge mutates
        out = fn.extract_output(fn.merge_accumulators([accs[i] for i in order]))
        np.testing.assert_array_equal(out.sample, ref.sample)
        np.testing.assert_array_equal(out.distinct_hashes, ref.distinct_hashes)
        np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-13)
    # RecordBatches work as inputs too, and few distinct points are counted exactly
    few = np.repeat(np.eye(3), 10, axis=0)
    rb = points_batch(pa.array(np.arange(30)), few)
    out = PointStatsCombineFn(10, 5, 0).apply([rb])
    assert out.n == 30 and out.n_distinct == 3


def test_point_stats_sample_is_uniform():
    # 10 batches of 100 rows (x = row number); sample 100 of 1000, many seeds:
    # each row's inclusion frequency is about 0.1
    X = np.arange(1000.0)[:, None]
    batches = split(X, [100] * 10)
    hits = np.zeros(1000)
    for seed in range(200):
        out = PointStatsCombineFn(100, 1, seed).apply(batches)
        hits[out.sample[:, 0].astype(int)] += 1
    freq = hits / 200
    assert abs(freq.mean() - 0.1) < 1e-12
    per_batch = freq.reshape(10, 100).mean(axis=1)
    assert np.all(np.abs(per_batch - 0.1) < 0.02)


# ----------------------------------------------------------------------------- KMeans vs sklearn

def test_validation_at_construction(tmp_path):
    with pytest.raises(BeammlError, match='n_clusters must be'):
        KMeans(0)
    with pytest.raises(BeammlError, match='max_iter'):
        KMeans(2, max_iter=0)
    with pytest.raises(BeammlError, match='tol'):
        KMeans(2, tol=-1)
    with pytest.raises(BeammlError, match='empty_cluster'):
        KMeans(2, empty_cluster='drop')
    with pytest.raises(BeammlError, match=r'shape \(k=3, d\)'):
        KMeans(3, init=np.zeros((2, 2)))
    with pytest.raises(BeammlError):
        KMeans(3, init=str(tmp_path / 'no-such-file.npy'))
    assert isinstance(KMeans(2).random_state, int)  # drawn once, then fixed


@pytest.mark.parametrize('kwargs, name', [
    (dict(n_clusters=0), 'n_clusters'), (dict(n_clusters=2.5), 'n_clusters'),
    (dict(max_iter=0), 'max_iter'), (dict(tol=float('nan')), 'tol'),
    (dict(empty_cluster='drop'), 'empty_cluster'), (dict(init_sample_size=0), 'init_sample_size'),
    (dict(init_steps=0), 'init_steps'), (dict(oversampling_factor=0), 'oversampling_factor'),
    (dict(n_clusters=3, init=np.zeros((2, 2))), 'init'),
    (dict(init=[[np.nan, 0.0]]), 'init'),
])
def test_errors_name_the_parameter_never_a_flag(kwargs, name):
    with pytest.raises(BeammlError) as e:
        KMeans(**{'n_clusters': 1, **kwargs})
    assert str(e.value).startswith(f'{name} ') and '--' not in str(e.value)
    assert e.value.parameters == (name,)
    assert e.value.for_cli().startswith(f'--{name} ')  # how the command line words it


def test_building_and_running_leave_the_recursion_limit_alone():
    before = sys.getrecursionlimit()
    _run_single([np.arange(8.0).reshape(4, 2)], n_clusters=2, max_iter=3, random_state=0)
    assert sys.getrecursionlimit() == before


def test_recursion_limit_for_is_scoped():
    before = sys.getrecursionlimit()
    with recursion_limit_for(5000):
        assert sys.getrecursionlimit() == max(before, 1000 + 2 * 5000)
    assert sys.getrecursionlimit() == before
    with pytest.raises(RuntimeError):  # restored however the block ends
        with recursion_limit_for(5000):
            raise RuntimeError('stop')
    assert sys.getrecursionlimit() == before
    with recursion_limit_for(1):  # never lowered
        assert sys.getrecursionlimit() == max(before, 1002)
    assert sys.getrecursionlimit() == before


def test_exact_against_sklearn_tol0_and_default_tol(tmp_path):
    cases, expected = {}, {}
    for seed in (1, 2, 6):  # seeds whose data stop on the tolerance before 12 iterations
        X, _ = make_blobs(n_samples=600, n_features=3, centers=4, cluster_std=1.0,
                          center_box=(-6, 6), random_state=seed)
        X += [100.0, -50.0, 3.0]  # away from the origin: the centring matters
        C0 = X[np.random.default_rng(seed).choice(len(X), 4, replace=False)]
        batches = split(X, [137, 250, 1])
        cases[f'tol0_{seed}'] = (batches, dict(n_clusters=4, max_iter=3, tol=0, init=C0))
        expected[f'tol0_{seed}'] = (X, sk_fit(X, C0, max_iter=3, tol=0))
        sk = sk_fit(X, C0, max_iter=12, tol=1e-4)
        assert sk.n_iter_ < 12  # the data converge before max_iter
        cases[f'tol_{seed}'] = (batches, dict(n_clusters=4, max_iter=12, init=C0))
        expected[f'tol_{seed}'] = (X, sk)
    # well-separated blobs from good centres: strict convergence (labels unchanged)
    X, _ = make_blobs(n_samples=300, n_features=2, centers=3, cluster_std=0.3, random_state=9)
    C0 = X[:3] + 0.1
    cases['strict'] = ([X], dict(n_clusters=3, max_iter=8, tol=0, init=C0))
    expected['strict'] = (X, sk_fit(X, C0, max_iter=8, tol=0))
    results = run_kmeans(tmp_path, cases)
    for name, (X, sk) in expected.items():
        r = results[name]
        assert_same_as_sklearn(r, sk, X)
        assert len(r.inertia_history) == r.n_iter == len(r.center_shift_history)
        assert r.n_samples == len(X)
        if name.startswith('tol0'):
            assert r.stop_reason == 'max_iter'
        elif name.startswith('tol_'):
            assert r.stop_reason == 'converged_tol'
            assert r.center_shift_history[-1] <= r.tol < r.center_shift_history[-2]
            np.testing.assert_allclose(r.tol, sk_tolerance(X, 1e-4), rtol=1e-12)
    assert results['strict'].stop_reason == 'converged_labels'
    assert results['strict'].n_iter < 8


def test_empty_clusters_keep_and_farthest(tmp_path):
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 8])
    C0 = np.array([[0.0, 0.0], [8.0, 8.0], [100.0, 100.0]])  # the third attracts nothing
    results = run_kmeans(tmp_path, {
        'keep': ([X[:150], X[150:]], dict(n_clusters=3, max_iter=4, tol=0, init=C0)),
        'farthest': ([X[:150], X[150:]], dict(n_clusters=3, max_iter=4, tol=0, init=C0,
                                              empty_cluster='farthest')),
    })
    keep = results['keep']
    np.testing.assert_array_equal(keep.centers[2], [100.0, 100.0])
    assert keep.cluster_sizes[2] == 0 and keep.n_relocated == 0
    ref = np.array([X[:200].mean(axis=0), X[200:].mean(axis=0)])
    np.testing.assert_allclose(keep.centers[:2], ref, rtol=1e-12)
    assert keep.stop_reason == 'converged_labels'
    # farthest reproduces scikit-learn's relocation of the empty cluster
    sk = sk_fit(X, C0, max_iter=4, tol=0)
    far = results['farthest']
    assert far.n_relocated >= 1
    assert_same_as_sklearn(far, sk, X)


def test_k1_duplicates_and_k_equal_n(tmp_path):
    rng = np.random.default_rng(6)
    X1 = rng.normal(size=(120, 3))
    dup = np.repeat(rng.normal(size=(4, 2)), [5, 1, 30, 7], axis=0)
    rng.shuffle(dup)
    Xn = rng.normal(size=(6, 2))
    results = run_kmeans(tmp_path, {
        'k1': ([X1[:50], X1[50:]], dict(n_clusters=1, max_iter=5, random_state=0)),
        'dup': ([dup], dict(n_clusters=4, max_iter=5, random_state=1)),
        'kn': ([Xn[:2], Xn[2:]], dict(n_clusters=6, max_iter=5, random_state=2)),
    })
    k1 = results['k1']
    np.testing.assert_allclose(k1.centers[0], X1.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(k1.inertia, ((X1 - X1.mean(axis=0)) ** 2).sum(), rtol=1e-12)
    assert k1.cluster_sizes == [120]
    sk = sk_fit(X1, k1.initial_centers, max_iter=5)
    assert k1.n_iter == sk.n_iter_ == 2 and k1.stop_reason == 'converged_labels'
    d = results['dup']  # k = number of distinct points: each one its own cluster
    # (centres are computed on centred data, as scikit-learn's: equal to rounding)
    np.testing.assert_allclose(np.unique(d.centers, axis=0), np.unique(dup, axis=0),
                               rtol=1e-14, atol=1e-15)
    assert sorted(d.cluster_sizes) == [1, 5, 7, 30] and d.inertia == pytest.approx(0, abs=1e-25)
    kn = results['kn']
    np.testing.assert_allclose(np.unique(kn.centers, axis=0), np.unique(Xn, axis=0),
                               rtol=1e-14, atol=1e-15)
    assert kn.cluster_sizes == [1] * 6 and kn.inertia == pytest.approx(0, abs=1e-25)


@pytest.mark.parametrize('init', ['k-means++', 'k-means||', 'random'])
def test_seeding_finds_separated_blobs(tmp_path, init):
    cases, truth = {}, {}
    for seed in range(2):
        X, y = make_blobs(n_samples=900, n_features=4, centers=6, cluster_std=0.4,
                          center_box=(-30, 30), random_state=seed)
        cases[f's{seed}'] = (split(X, [300, 300]),
                             dict(n_clusters=6, max_iter=6, init=init, random_state=seed,
                                  init_sample_size=400))
        truth[f's{seed}'] = (X, y)
    results = run_kmeans(tmp_path, cases)
    for name, (X, y) in truth.items():
        r = results[name]
        labels, _ = brute_labels(X, r.centers)
        if init != 'random':  # random seeding may put two centres in one blob
            assert adjusted_rand_score(y, labels) == 1.0, (name, r.cluster_sizes)
        # the initial centres are k distinct data points
        assert len(np.unique(r.initial_centers, axis=0)) == 6
        rows = {tuple(np.round(x, 9)) for x in X}
        assert all(tuple(np.round(c, 9)) in rows for c in r.initial_centers)


def test_same_random_state_same_result(tmp_path):
    X, _ = make_blobs(n_samples=500, n_features=2, centers=5, random_state=3)
    kw = dict(n_clusters=5, max_iter=3, random_state=11)
    results = run_kmeans(tmp_path, {
        'a': (split(X, [200]), dict(kw, init='k-means||')),
        'b': (split(X, [200]), dict(kw, init='k-means||')),
        'c': (split(X, [200]), dict(kw, init='k-means++')),
        'd': (split(X, [200]), dict(kw, init='k-means++')),
    })
    np.testing.assert_array_equal(results['a'].initial_centers, results['b'].initial_centers)
    np.testing.assert_array_equal(results['c'].initial_centers, results['d'].initial_centers)


def test_cache_dir_gives_the_same_result(tmp_path):
    X, _ = make_blobs(n_samples=400, n_features=3, centers=3, cluster_std=3.0, random_state=2)
    C0 = X[:3].copy()
    cache = tmp_path / 'cache'
    results = run_kmeans(tmp_path, {
        'plain': (split(X, [100, 100]), dict(n_clusters=3, max_iter=3, tol=0, init=C0)),
        'cached': (split(X, [100, 100]), dict(n_clusters=3, max_iter=3, tol=0, init=C0,
                                              cache_dir=str(cache))),
    })
    np.testing.assert_array_equal(results['plain'].centers, results['cached'].centers)
    assert results['plain'].inertia == results['cached'].inertia
    assert not list(cache.glob('*.npy'))  # dropped at the end


def _run_single(batches, **kwargs):
    with beam.Pipeline(runner='FnApiRunner') as p:
        _ = p | beam.Create(batches, reshuffle=False) | KMeans(**kwargs)


def test_k_above_distinct_points_is_an_error():
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 5, axis=0)
    with pytest.raises(Exception, match=r'k=3 is greater than the number of distinct points '
                                        r'\(2 among 10 rows\)'):
        _run_single([X], n_clusters=3, max_iter=2, random_state=0)


def test_empty_input_is_an_error():
    with pytest.raises(Exception, match='no valid point'):
        _run_single([np.empty((0, 2))], n_clusters=2, max_iter=2, random_state=0)


def test_init_dimension_mismatch_is_an_error():
    with pytest.raises(Exception, match='initial centres have 3 features but the data have 2'):
        _run_single([np.ones((4, 2))], n_clusters=1, max_iter=1, init=np.zeros((1, 3)))


def test_lloyd_labels_on_the_thread_pool_matches_brute_force():
    # enough rows for several 4096-row chunks: they run on the thread pool
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20_000, 3))
    C = rng.normal(size=(6, 3))
    labels, sq = lloyd_labels(X, C)
    ref_labels, ref_sq = brute_labels(X, C)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(sq, ref_sq, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(lloyd_labels(X, C, return_distances=False), ref_labels)


def test_cache_dir_with_default_tol_stops_as_sklearn(tmp_path):
    # the statistics pass writes the cache, iterations after the stop pass the state
    # through, and every cache file (raw and centred) is dropped at the end
    X, _ = make_blobs(n_samples=600, n_features=3, centers=4, cluster_std=2.0, random_state=4)
    X += 1000.0  # far from the origin: the centring matters
    C0 = X[[0, 1, 2, 3]].copy()
    cache = tmp_path / 'cache'
    results = run_kmeans(tmp_path, {
        'cached': (split(X, [150, 150, 150]), dict(n_clusters=4, max_iter=50, init=C0,
                                                   cache_dir=str(cache))),
        'plain': (split(X, [150, 150, 150]), dict(n_clusters=4, max_iter=50, init=C0)),
    })
    sk = sk_fit(X, C0, max_iter=50)
    assert sk.n_iter_ < 50
    assert_same_as_sklearn(results['cached'], sk, X)
    np.testing.assert_array_equal(results['cached'].centers, results['plain'].centers)
    assert results['cached'].inertia_history == results['plain'].inertia_history
    assert not list(cache.glob('*.npy'))
