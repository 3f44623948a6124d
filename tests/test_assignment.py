"""Distance kernels and the AssignNearestCentroid transform, against brute-force numpy."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from sklearn.metrics.pairwise import euclidean_distances

import beamml.transforms.distances as distances
from beamml.transforms.assignment import AssignNearestCentroid, add_assignment
from beamml.transforms.distances import nearest_centroid, pairwise_distances
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import features_matrix, points_batch
from beamml.transforms.model import CentroidModel


def brute_sq(X, C):
    """Oracle: squared distances by direct differences (no expansion)."""
    X, C = np.asarray(X, float), np.asarray(C, float)
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)


# ----------------------------------------------------------------------------- kernels

def test_issue_example_exactly():
    X = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=float)
    C = np.array([[1, 0, 0], [0, 1, 1]], dtype=float)
    D = pairwise_distances(X, C)
    np.testing.assert_array_equal(
        np.round(D, 3), [[3.606, 2.449], [8.367, 7.550], [13.454, 12.728]])
    np.testing.assert_allclose(D, np.sqrt(brute_sq(X, C)), rtol=1e-14)
    labels, dist = nearest_centroid(X, C)
    np.testing.assert_array_equal(labels, [1, 1, 1])
    assert labels.dtype == np.int64
    np.testing.assert_allclose(dist, [2.449, 7.550, 12.728], atol=5e-4)
    np.testing.assert_allclose(dist, D[np.arange(3), labels], rtol=1e-15)


@pytest.mark.parametrize('n,k,d', [(500, 7, 3), (200, 1, 5), (1, 4, 2), (50, 50, 16),
                                   (2000, 300, 4)])  # k > 256: wider label sums
def test_against_sklearn_and_brute_force(n, k, d):
    rng = np.random.default_rng(n + k + d)
    X = rng.normal(size=(n, d)) * 3 + 1
    C = rng.normal(size=(k, d)) * 3
    D = pairwise_distances(X, C)
    assert D.shape == (n, k) and D.dtype == np.float64
    np.testing.assert_allclose(D, euclidean_distances(X, C), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pairwise_distances(X, C, squared=True), brute_sq(X, C),
                               rtol=1e-12, atol=1e-11)
    # precomputed squared norms give the same numbers
    D2 = pairwise_distances(X, C, X_sq=(X * X).sum(1), centers_sq=(C * C).sum(1))
    np.testing.assert_allclose(D2, D, rtol=1e-12, atol=1e-12)
    labels, dist = nearest_centroid(X, C)
    E = brute_sq(X, C)
    np.testing.assert_array_equal(labels, np.argmin(E, axis=1))
    np.testing.assert_allclose(dist, np.sqrt(E.min(axis=1)), rtol=1e-12)
    labels2, sq = nearest_centroid(X, C, squared=True, centers_sq=(C * C).sum(1))
    np.testing.assert_array_equal(labels2, labels)
    np.testing.assert_allclose(sq, E.min(axis=1), rtol=1e-12)


def test_exact_ties_go_to_lowest_index():
    # (0, 0) is at distance 1 from centres 0, 1 and 3; (1, 1) at 1 from 0, 1, 2;
    # (.5, .5) at sqrt(.5) from 0 and 1; (-.5, .5) at sqrt(.5) from 1 and 3.
    X = np.array([[0, 0], [1, 1], [0.5, 0.5], [-0.5, 0.5]], dtype=float)
    C = np.array([[1, 0], [0, 1], [2, 2], [-1, 0]], dtype=float)
    labels, dist = nearest_centroid(X, C)
    E = brute_sq(X, C)
    np.testing.assert_array_equal(labels, np.argmin(E, axis=1))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])
    np.testing.assert_array_equal(dist, np.sqrt(E.min(axis=1)))
    # reversing the centres reverses who wins the tie: still the lowest index
    labels_r, _ = nearest_centroid(X, C[::-1])
    np.testing.assert_array_equal(labels_r, np.argmin(brute_sq(X, C[::-1]), axis=1))


def test_ties_and_zero_distances_are_exact_where_the_expansion_is_not():
    """Integer lattices far from the origin: ||x||^2 - 2x.c + ||c||^2 loses the order
    of exact ties (and gives non-zero distances for points on a centre); the kernel
    must still pick the brute force's labels and give its distances to 1e-13."""
    rng = np.random.default_rng(7)
    raw_wrong = 0
    for _ in range(20):
        offset = float(rng.integers(10 ** 7, 10 ** 9))
        C = rng.integers(-3, 4, size=(6, 2)).astype(float) + offset
        X = np.concatenate([rng.integers(-3, 4, size=(300, 2)).astype(float) + offset, C])
        E = brute_sq(X, C)  # exact: small integers
        raw = np.argmin(pairwise_distances(X, C, squared=True), axis=1)
        raw_wrong += int((raw != np.argmin(E, axis=1)).sum())
        labels, sq = nearest_centroid(X, C, squared=True)
        np.testing.assert_array_equal(labels, np.argmin(E, axis=1))
        np.testing.assert_allclose(sq, E.min(axis=1), rtol=1e-13)
        assert (sq[-len(C):] == 0).all()  # the centres themselves, exactly
    assert raw_wrong > 0, 'the data should defeat the plain expansion, else it tests nothing'


def test_near_ties_are_recomputed_without_a_shift(monkeypatch):
    """Centres at +-1e8 (mean ~0, so no shift): the ties among the centres near
    +1e8 are beyond the expansion's precision and must go through the exact path."""
    rng = np.random.default_rng(11)
    lattice = rng.integers(-3, 4, size=(5, 2)).astype(float)
    C = np.concatenate([lattice + 1e8, -lattice - 1e8])
    X = rng.integers(-3, 4, size=(400, 2)).astype(float) + 1e8
    E = brute_sq(X, C)
    redone = []
    real = distances._exact_sq_distances
    monkeypatch.setattr(distances, '_exact_sq_distances',
                        lambda Xr, Cr: redone.append(len(Xr)) or real(Xr, Cr))
    labels, sq = nearest_centroid(X, C, squared=True)
    assert sum(redone) > 0
    raw = np.argmin(pairwise_distances(X, C, squared=True), axis=1)
    assert (raw != np.argmin(E, axis=1)).any()
    np.testing.assert_array_equal(labels, np.argmin(E, axis=1))
    np.testing.assert_array_equal(sq, E.min(axis=1))  # all redone here: exact


def test_point_on_centre_has_distance_zero():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(5, 4)) * 1e3 + 1e4
    labels, dist = nearest_centroid(C, C)
    np.testing.assert_array_equal(labels, np.arange(5))
    np.testing.assert_array_equal(dist, np.zeros(5))


def test_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1001, 3))
    C = rng.normal(size=(9, 3))
    X[::50] = C[rng.integers(0, 9, size=len(X[::50]))]  # some exact hits
    whole = nearest_centroid(X, C, return_all=True)
    monkeypatch.setattr(distances, '_BLOCK_VALUES', 9 * 37)  # 37 rows per block
    parts = nearest_centroid(X, C, return_all=True)
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(whole[2], np.sqrt(brute_sq(X, C)), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(whole[1], whole[2][np.arange(len(X)), whole[0]])


def test_edge_cases():
    C = np.array([[0.0, 0.0], [1.0, 1.0]])
    labels, dist = nearest_centroid(np.empty((0, 2)), C)
    assert labels.shape == (0,) and dist.shape == (0,) and labels.dtype == np.int64
    assert pairwise_distances(np.empty((0, 2)), C).shape == (0, 2)
    # k = 1: everything in cluster 0
    labels, dist = nearest_centroid(np.array([[3.0, 4.0], [0, 0]]), C[:1])
    np.testing.assert_array_equal(labels, [0, 0])
    np.testing.assert_array_equal(dist, [5.0, 0.0])
    with pytest.raises(ValueError, match='features'):
        nearest_centroid(np.ones((3, 3)), C)
    with pytest.raises(ValueError, match='2-D'):
        nearest_centroid(np.ones(3), C)
    with pytest.raises(ValueError, match='0 clusters'):
        nearest_centroid(np.ones((3, 2)), np.empty((0, 2)))
    with pytest.raises(ValueError, match='NaN'):
        nearest_centroid(np.ones((3, 2)), np.array([[np.nan, 0.0]]))
    with pytest.raises(BeammlError, match='got int'):
        AssignNearestCentroid(3).expand(beam.Pipeline(runner='FnApiRunner') | beam.Create([]))


def test_non_finite_rows_are_flagged_not_assigned():
    X = np.array([[1.0, 1.0], [np.nan, 0.0], [np.inf, 0.0], [-np.inf, np.inf], [0.1, 0.0]])
    C = np.array([[0.0, 0.0], [1.0, 1.0]])
    labels, dist = nearest_centroid(X, C)
    np.testing.assert_array_equal(labels, [1, -1, -1, -1, 0])
    assert np.isnan(dist[1:4]).all()
    np.testing.assert_allclose(dist[[0, 4]], [0.0, 0.1])


# ----------------------------------------------------------------------------- Beam

def make_batches(seed=0, sizes=(40, 1, 25), d=3):
    rng = np.random.default_rng(seed)
    batches, start = [], 0
    for n in sizes:
        X = rng.normal(size=(n, d))
        batches.append(points_batch(pa.array(np.arange(start, start + n)), X))
        start += n
    return batches


def rows_of(batch):
    """(id, cluster, distance) tuples of an output batch."""
    return list(zip(batch.column('id').to_pylist(), batch.column('cluster').to_pylist(),
                    batch.column('distance').to_pylist()))


def expected_rows(batches, C):
    out = []
    for b in batches:
        X = features_matrix(b)
        E = brute_sq(X, C)
        lab = np.argmin(E, axis=1)
        out += list(zip(b.column('id').to_pylist(), lab.tolist(),
                        np.sqrt(E.min(axis=1)).tolist()))
    return out


def close_to(expected):
    exp = sorted(expected)

    def check(actual):
        act = sorted(actual)
        assert [(i, c) for i, c, _ in act] == [(i, c) for i, c, _ in exp]
        np.testing.assert_allclose([r for *_, r in act], [r for *_, r in exp], rtol=1e-12)
    return check


@pytest.mark.parametrize('how', ['model', 'pcollection', 'singleton', 'path'])
def test_assign_transform_side_input_forms(how, tmp_path):
    batches = make_batches()
    C = np.random.default_rng(9).normal(size=(4, 3))
    model = CentroidModel(C, version='v1')
    with beam.Pipeline(runner='FnApiRunner') as p:
        pts = p | 'Points' >> beam.Create(batches)
        if how == 'model':
            side = model
        elif how == 'path':
            model.save(str(tmp_path))
            side = str(tmp_path)
        else:
            side = p | 'Model' >> beam.Create([model])
            if how == 'singleton':
                side = beam.pvalue.AsSingleton(side)
        out = pts | 'Assign' >> AssignNearestCentroid(side, with_version=True)
        rows = out.batches | 'Rows' >> beam.FlatMap(rows_of)
        versions = out.batches | 'Versions' >> beam.FlatMap(
            lambda b: b.column('model_version').to_pylist())
        assert_that(versions, equal_to(['v1'] * sum(b.num_rows for b in batches)),
                    label='Versions')
        assert_that(rows, close_to(expected_rows(batches, C)))
        assert_that(out.errors, equal_to([]), label='NoErrors')


def test_assign_transform_all_distances_and_version():
    batches = make_batches(seed=2, sizes=(30, 12))
    C = np.random.default_rng(4).normal(size=(5, 3))
    model = CentroidModel(C, version='20240101T000000000000Z')

    def check(outs):
        assert len(outs) == 2
        for b in outs:
            assert b.schema.names == ['id', 'features', 'cluster', 'distance', 'distances',
                                      'model_version']
            assert b.schema.field('cluster').type == pa.int64()
            assert b.schema.field('distances').type == pa.list_(pa.float64(), 5)
            every = features_matrix(b, 'distances')
            np.testing.assert_allclose(every, np.sqrt(brute_sq(features_matrix(b), C)),
                                       rtol=1e-12)
            np.testing.assert_array_equal(b.column('distance').to_numpy(),
                                          every.min(axis=1))
            assert set(b.column('model_version').to_pylist()) == {model.version}

    with beam.Pipeline(runner='FnApiRunner') as p:
        out = (p | beam.Create(batches)
               | AssignNearestCentroid(model, all_distances=True, with_version=True))
        assert_that(out.batches, check)


def test_assign_transform_refuses_bad_rows_to_dead_letters():
    X = np.array([[0.0, 0.0], [np.nan, 1.0], [5.0, 5.0], [np.inf, 0.0]])
    good = points_batch(pa.array([10, 11, 12, 13]), X)
    wrong_d = points_batch(pa.array([20, 21]), np.ones((2, 3)))
    model = CentroidModel([[0.0, 0.0], [4.0, 4.0]], version='v7')
    p = beam.Pipeline(runner='FnApiRunner')
    out = p | beam.Create([good, wrong_d]) | AssignNearestCentroid(model)
    assert_that(out.batches | beam.FlatMap(rows_of),
                close_to([(10, 0, 0.0), (12, 1, np.sqrt(2.0))]))
    assert_that(out.errors | beam.Map(lambda e: (e['record']['id'], e['reason'][:14])),
                equal_to([(11, 'cannot assign:'), (13, 'cannot assign:'),
                          (20, 'point has 3 fe'), (21, 'point has 3 fe')]), label='Errors')
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace('beamml'))['counters']}
    assert counters['records_refused'] == 4
    assert counters['records_ok'] == -4  # moved from ok (no reader counted them here)


def test_add_assignment_keeps_ids_aligned_when_rows_are_refused():
    X = np.array([[1.0, 1.0], [np.nan, 0.0], [9.0, 9.0]])
    b = points_batch(pa.array(['a', 'b', 'c']), X)
    model = CentroidModel([[0.0, 0.0], [10.0, 10.0]])
    out, refused = add_assignment(b, model, with_version=True)
    assert refused.tolist() == [1]
    assert out.column('id').to_pylist() == ['a', 'c']
    assert out.column('cluster').to_pylist() == [0, 1]
    assert out.column('model_version').null_count == 2  # an unsaved model has no version
