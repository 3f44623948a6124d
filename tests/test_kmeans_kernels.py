"""The fused Lloyd pass (lloyd_pass), its Beam adapters and the float32 opt-in."""
from __future__ import annotations

import os

import numpy as np
import pytest

import beamml.transforms.kmeans.runtime as runtime
from beamml.transforms.kmeans import (CentroidCombineFn, ClusterSums, KMeansState, LabelledPoints,
                                      label_signature, lloyd_labels, read_cached_points, row_hashes,
                                      write_cached_points)
from beamml.transforms.kmeans.kernels import lloyd_pass
from beamml.transforms.kmeans.lloyd import final_step, lloyd_step


def _data(n=50_001, d=5, k=7, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(k, d)) * 3
    X = C[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    return X, C + rng.normal(size=(k, d)) * 0.5


def _bincount_sums(X, labels, k):
    return np.stack([np.bincount(labels, weights=X[:, j], minlength=k)
                     for j in range(X.shape[1])], axis=1)


def test_lloyd_pass_is_lloyd_labels_fused():
    # several 16384-row tasks and a short last chunk: the thread pool runs them
    X, C = _data()
    h = row_hashes(X)
    labels, sq = lloyd_labels(X, C)
    p = lloyd_pass(X, C, hashes=h, return_labels=True)
    np.testing.assert_array_equal(p.labels, labels)  # bit for bit the same E-step
    np.testing.assert_array_equal(p.counts, np.bincount(labels, minlength=len(C)))
    np.testing.assert_allclose(p.sums, _bincount_sums(X, labels, len(C)), rtol=1e-12,
                               atol=1e-9)
    np.testing.assert_allclose(p.inertia, sq.sum(), rtol=1e-12)
    assert p.signature == label_signature(h, labels)
    assert p.sums.dtype == np.float64 and p.counts.dtype == np.int64
    assert p.n_changed is None
    assert lloyd_pass(X, C).signature is None and lloyd_pass(X, C).labels is None


def test_lloyd_pass_exact_distances_and_previous_labels():
    X, C = _data(n=9000)
    labels = lloyd_labels(X, C, return_distances=False)
    p = lloyd_pass(X, C, exact_distances=True)
    diff = X - C[labels]
    np.testing.assert_allclose(p.inertia, np.einsum('ij,ij->i', diff, diff).sum(), rtol=1e-12)
    prev = labels.astype(np.int16)
    prev[[3, 4000, 8999]] = (prev[[3, 4000, 8999]] + 1) % len(C)
    assert lloyd_pass(X, C, previous_labels=prev).n_changed == 3
    assert lloyd_pass(X, C, previous_labels=labels).n_changed == 0
    out = lloyd_pass(X, C, return_labels=True, labels_dtype=np.int16).labels
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, labels)


def test_lloyd_pass_does_not_depend_on_the_scheduling(monkeypatch):
    X, C = _data(n=70_000, seed=3)
    pooled = lloyd_pass(X, C, hashes=row_hashes(X))
    monkeypatch.setitem(runtime._POOL, os.getpid(), None)  # no pool: the tasks in turn
    serial = lloyd_pass(X, C, hashes=row_hashes(X))
    np.testing.assert_array_equal(pooled.sums, serial.sums)
    assert pooled.inertia == serial.inertia and pooled.signature == serial.signature


def test_lloyd_pass_edge_cases():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    X = np.array([[0.0, 0.0], [2.0, 0.0], [0.5, 0.5]])  # ties go to the lowest index
    p = lloyd_pass(X, C, return_labels=True)
    assert p.labels.tolist() == [0, 0, 0] and p.counts.tolist() == [3, 0, 0]
    np.testing.assert_allclose(p.inertia, 2.5)
    empty = lloyd_pass(np.empty((0, 2)), C, hashes=np.empty(0, np.uint64))
    assert empty.counts.tolist() == [0, 0, 0] and empty.inertia == 0.0 and empty.signature == 0
    with pytest.raises(ValueError, match='float64 or float32'):
        lloyd_pass(X, C, dtype=np.int64)


def test_lloyd_pass_float32_opt_in():
    X, C = _data(n=20_000, seed=1)
    p64 = lloyd_pass(X, C, return_labels=True)
    p32 = lloyd_pass(X.astype(np.float32), C, return_labels=True)  # float32 X: float32 E-step
    forced = lloyd_pass(X, C, return_labels=True, dtype=np.float32)
    np.testing.assert_array_equal(p32.labels, forced.labels)
    assert p32.sums.dtype == np.float64  # accumulated in float64
    # labels can only differ near a boundary; here (separated blobs) almost none do
    assert np.count_nonzero(p32.labels != p64.labels) <= 20
    np.testing.assert_allclose(p32.sums, p64.sums, rtol=1e-4, atol=1e-2)


def test_single_threaded_blas_inside_the_pass():
    threadpoolctl = pytest.importorskip('threadpoolctl')
    controller = runtime.blas_controller()
    assert controller is not None
    blas = [lib for lib in controller.lib_controllers if lib.user_api == 'blas']
    if not blas:
        pytest.skip('no BLAS library found by threadpoolctl')
    before = [lib.num_threads for lib in blas]
    with runtime.single_threaded_blas():
        inside = [lib.get_num_threads() for lib in blas]
    assert inside == [1] * len(blas)
    assert [lib.get_num_threads() for lib in blas] == before
    del threadpoolctl


def _state(C):
    return KMeansState(centers=C, mean=np.zeros(C.shape[1]), tol=0.0, n_samples=0,
                       initial_centers=C.copy())


def test_lloyd_step_returns_the_batch_accumulator(tmp_path):
    X, C = _data(n=30_000, seed=2)
    h = row_hashes(X)
    fn = CentroidCombineFn(len(C))
    fused = lloyd_step((X, h), _state(C), False)
    assert isinstance(fused, ClusterSums)
    labels, sq = lloyd_labels(X, C)
    ref = fn.apply([LabelledPoints(X, labels, sq, h)])
    got = fn.extract_output(fn.add_input(fn.create_accumulator(), fused))
    np.testing.assert_array_equal(got.counts, ref.counts)
    np.testing.assert_allclose(got.sums, ref.sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.inertia, ref.inertia, rtol=1e-12)
    assert got.signature == ref.signature
    # from a cache file: the same accumulator
    path = write_cached_points(str(tmp_path), X, h)
    cached = lloyd_step(path, _state(C), False)
    np.testing.assert_array_equal(cached.sums, fused.sums)
    assert cached.signature == fused.signature
    # 'farthest' keeps per-point distances: LabelledPoints as before
    assert isinstance(lloyd_step((X, h), _state(C), True), LabelledPoints)
    assert lloyd_step((X, h), KMeansState(**{**_state(C).__dict__, 'stopped': True}),
                      False) is None
    final = final_step((X, h), _state(C))
    diff = X - C[labels]
    np.testing.assert_allclose(final.inertia, np.einsum('ij,ij->i', diff, diff).sum(),
                               rtol=1e-12)
    np.testing.assert_array_equal(final.counts, ref.counts)


def test_centroid_combine_fn_refuses_a_reduced_batch_when_tracking_farthest():
    X, C = _data(n=100)
    part = lloyd_step((X, row_hashes(X)), _state(C), False)
    fn = CentroidCombineFn(len(C), track_farthest=True)
    with pytest.raises(ValueError, match='farthest'):
        fn.add_input(fn.create_accumulator(), part)


def test_float32_cache(tmp_path):
    X, C = _data(n=5000, seed=4)
    h = row_hashes(X)
    p64 = write_cached_points(str(tmp_path), X, h)
    p32 = write_cached_points(str(tmp_path), X, h, dtype=np.float32)
    assert p32 != p64
    X32, h32 = read_cached_points(p32)
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32, X.astype(np.float32))
    np.testing.assert_array_equal(h32, h)
    assert read_cached_points(p64)[0].dtype == np.float64  # the float64 copy is untouched
    step = lloyd_step(p32, _state(C), False)  # a float32 cache: a float32 E-step
    ref = ClusterSums.from_pass(lloyd_pass(X, C, hashes=h, dtype=np.float32))
    np.testing.assert_array_equal(step.sums, ref.sums)
    with pytest.raises(ValueError, match='float64 or float32'):
        write_cached_points(str(tmp_path), X, h, dtype=np.float16)


def test_lloyd_pass_inside_a_pool_thread_runs_its_chunks_itself():
    """The final pass runs whole files on the E-step's pool, and a file's E-step
    (lloyd_pass) would wait for the very threads that run it: inside a pool thread it
    runs its chunks itself, with the same result."""
    X, C = _data(n=70_000, seed=4)
    pool = runtime.thread_pool()
    if pool is None:
        pytest.skip('one core: no pool')
    expected = lloyd_pass(X, C, hashes=row_hashes(X))
    futures = [pool.submit(lloyd_pass, X, C, hashes=row_hashes(X))
               for _ in range(2 * pool._max_workers)]   # every pool thread busy at once
    for f in futures:
        got = f.result(timeout=60)
        np.testing.assert_array_equal(got.sums, expected.sums)
        assert got.inertia == expected.inertia and got.signature == expected.signature
