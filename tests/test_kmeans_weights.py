"""K-means with sample weights (--weight_column) against scikit-learn's fit(X, sample_weight=w)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from sklearn.datasets import make_blobs

from kmeans_cli import kmeans_process, model_doc, run_kmeans
from beamml.pipelines import kmeans as kmeans_cli
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import points_batch, read_table_files
from beamml.transforms.kmeans import (CentroidCombineFn, KMeans, LabelledPoints,
                                      PointStatsCombineFn, read_cached_points, update_centers,
                                      write_cached_points)
from beamml.transforms.kmeans.cache import drop_cached_points, read_cached_weights
from beamml.transforms.kmeans.kernels import lloyd_pass
from beamml.transforms.kmeans.seeding import _seed_plusplus, _seed_random
from beamml.transforms.model import list_versions
from faults import kill_at


# ----------------------------------------------------------------------------- helpers

def sk_fit(X, C0, w, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return SKKMeans(len(C0), init=C0, n_init=1, algorithm='lloyd', **kw).fit(
            X, sample_weight=w)


def weighted_batches(X, w, size):
    ids = pa.array(np.arange(len(X)))
    return [points_batch(ids[i:i + size], X[i:i + size], weight=pa.array(w[i:i + size]))
            for i in range(0, len(X), size)]


def assert_same(result, sk, n_iter=True):
    scale = np.abs(sk.cluster_centers_).max()
    np.testing.assert_allclose(result.centers, sk.cluster_centers_, rtol=1e-9, atol=1e-9 * scale)
    assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9)
    if n_iter:
        assert result.n_iter == sk.n_iter_


@pytest.fixture(scope='module')
def data():
    X, _ = make_blobs(2500, centers=5, n_features=3, cluster_std=2.0, random_state=4)
    rng = np.random.default_rng(7)
    w = rng.uniform(0.0, 3.0, len(X))
    w[rng.random(len(X)) < 0.2] = 0.0   # a fifth of the points weigh nothing
    C0 = X[rng.choice(len(X), 5, replace=False)]
    return X, w, C0


# ----------------------------------------------------------------------------- reading

def test_bad_weights_are_dead_letters_with_their_place(tmp_path):
    csv = tmp_path / 'p.csv'
    csv.write_text('id,x,y,w\n1,0.5,1,2\n2,1.5,2,\n3,2.5,3,-1\n4,3.5,4,abc\n'
                   '5,4.5,5,nan\n6,5.5,6,inf\n7,6.5,7,0\n')
    table, dead = read_table_files(str(csv), weight_column='w')
    assert table.column_names == ['id', 'features', 'weight']
    assert table.column('weight').to_pylist() == [2.0, 0.0]
    assert table.column('features').type.list_size == 2   # w is not a feature
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (1, 3, 'missing weight'), (2, 4, 'weight is negative'),
        (3, 5, 'weight is not a number'), (4, 6, 'weight is NaN'),
        (5, 7, 'weight is infinite')]
    assert all(d['file'] == str(csv) for d in dead)
    assert table.num_rows + len(dead) == 7

    jl = tmp_path / 'p.jsonl'
    jl.write_text('{"id": 1, "x": 1, "y": 2, "w": 1.5}\n{"id": 2, "x": 1, "y": 2, "w": "a"}\n'
                  '{"id": 3, "x": 1, "y": 2}\n{"id": 4, "x": 1, "y": 2, "w": true}\n'
                  '{"id": 5, "x": 1, "y": 2, "w": [1]}\n{"id": 6, "x": 1, "y": 2, "w": 0}\n')
    table, dead = read_table_files(str(jl), weight_column='w')
    assert table.column('weight').to_pylist() == [1.5, 0.0]
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (1, 2, 'weight is not a number'), (2, 3, 'missing weight'),
        (3, 4, 'weight is not a number'), (4, 5, 'weight is not a number')]


def test_the_weight_column_is_never_a_feature(tmp_path):
    csv = tmp_path / 'p.csv'
    csv.write_text('id,x,y,w\n1,0.5,1,2\n')
    with pytest.raises(BeammlError, match="weight column 'w' cannot also be a feature"):
        read_table_files(str(csv), weight_column='w', feature_columns=['x', 'w'])
    with pytest.raises(BeammlError, match="no weight column 'q'"):
        read_table_files(str(csv), weight_column='q')
    with pytest.raises(BeammlError, match='cannot also be the weight column'):
        read_table_files(str(csv), weight_column='id')
    table, _ = read_table_files(str(csv))   # without weight_column, w is a feature
    assert table.column('features').type.list_size == 3
    np.save(tmp_path / 'p.npy', np.ones((2, 2)))
    with pytest.raises(BeammlError, match='no weight column'):
        read_table_files(str(tmp_path / 'p.npy'), weight_column='w')


# ----------------------------------------------------------------------------- kernels

def test_weighted_lloyd_pass_and_m_step():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 3))   # several tasks of the fused pass
    w = rng.integers(0, 4, len(X)).astype(float)
    C = X[:4].copy()
    part = lloyd_pass(X, C, sample_weight=w, exact_distances=True)
    D = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    lab = D.argmin(1)
    for j in range(4):
        m = lab == j
        np.testing.assert_allclose(part.sums[j], (X[m] * w[m, None]).sum(0), rtol=1e-10)
        assert part.weights[j] == pytest.approx(w[m].sum())
        assert part.counts[j] == m.sum()
    assert part.inertia == pytest.approx((D[np.arange(len(X)), lab] * w).sum(), rel=1e-12)
    unweighted = lloyd_pass(X, C)
    assert unweighted.weights is None
    # a cluster whose points all weigh 0 is empty: 'keep' leaves it, 'farthest' relocates
    sums, counts, weights = np.array([[2.0, 2.0], [0.0, 0.0]]), np.array([2, 3]), np.array([2.0, 0.0])
    old = np.array([[1.0, 1.0], [9.0, 9.0]])
    centers, _, n = update_centers(sums, counts, old, weights=weights)
    np.testing.assert_array_equal(centers, [[1.0, 1.0], [9.0, 9.0]])
    assert n == 0
    far = np.array([[3.0, 3.0]])
    centers, _, n = update_centers(sums, counts, old, weights=weights, empty_cluster='farthest',
                                   far_points=far, far_labels=np.array([0]),
                                   far_sq_distances=np.array([8.0]), far_weights=np.array([0.5]))
    assert n == 1
    np.testing.assert_allclose(centers, [[(2.0 - 1.5) / 1.5] * 2, [3.0, 3.0]])


def test_centroid_combinefn_weighted_any_split():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    w = rng.uniform(0, 2, 300)
    labels = rng.integers(0, 3, 300)
    sq = rng.uniform(0, 1, 300)
    fn = CentroidCombineFn(3, track_farthest=True)
    whole = fn.extract_output(fn.add_input(fn.create_accumulator(),
                                           LabelledPoints(X, labels, sq, None, w)))
    accs = [fn.add_input(fn.create_accumulator(), LabelledPoints(X[a:b], labels[a:b], sq[a:b],
                                                                 None, w[a:b]))
            for a, b in [(0, 50), (50, 200), (200, 300)]]
    merged = fn.extract_output(fn.merge_accumulators(pickle.loads(pickle.dumps(accs[::-1]))))
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(merged.weights, whole.weights, rtol=1e-12)
    assert merged.inertia == pytest.approx(whole.inertia, rel=1e-12)
    np.testing.assert_array_equal(merged.far_weights, whole.far_weights)
    top = np.argsort(-sq)[:3]
    np.testing.assert_array_equal(np.sort(merged.far_weights), np.sort(w[top]))


def test_weighted_cache_round_trip(tmp_path):
    X, h = np.ones((3, 2)), np.arange(3, dtype=np.uint64)
    p1 = write_cached_points(str(tmp_path), X, h, weights=np.array([1.0, 2.0, 0.0]))
    p2 = write_cached_points(str(tmp_path), X, h, weights=np.array([1.0, 2.0, 5.0]))
    p0 = write_cached_points(str(tmp_path), X, h)
    assert len({p0, p1, p2}) == 3   # other weights, another file
    assert read_cached_weights(p0) is None
    np.testing.assert_array_equal(read_cached_weights(p2), [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(read_cached_points(p1)[0], X)
    drop_cached_points([p0, p1, p2])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- seeding

@pytest.mark.parametrize('seed', [0, 3])
def test_weighted_kmeans_plusplus_is_sklearns_on_the_same_sample(data, seed):
    X, w, _ = data
    fn = PointStatsCombineFn(400, 5, seed)
    accs = [fn.add_input(fn.create_accumulator(), b) for b in weighted_batches(X, w, 600)]
    stats = fn.extract_output(fn.merge_accumulators(accs))
    assert stats.weight_sum == pytest.approx(w.sum())
    # the uniform sample keeps each point's weight
    rows = {tuple(x): wi for x, wi in zip(X, w)}
    np.testing.assert_array_equal(stats.sample_weights, [rows[tuple(x)] for x in stats.sample])
    np.testing.assert_allclose(stats.mean, X.mean(0), rtol=1e-12)   # unweighted, as sklearn
    ours = _seed_plusplus(stats, n_clusters=5, seed=seed)
    theirs, _ = sk_kmeans_plusplus(stats.sample - stats.mean, 5,
                                   sample_weight=stats.sample_weights, random_state=seed)
    np.testing.assert_array_equal(ours, theirs)
    # weighted 'random' never picks a point of weight 0 while others remain
    centred = {tuple(x): wi for x, wi in zip(stats.sample - stats.mean, stats.sample_weights)}
    picked = _seed_random(stats, n_clusters=5, seed=seed)
    assert all(centred[tuple(x)] > 0 for x in picked)


# ----------------------------------------------------------------------------- training

def test_weighted_training_is_sklearns(data, tmp_path):
    X, w, C0 = data
    wi = np.random.default_rng(2).integers(0, 4, len(X)).astype(float)   # integer weights
    # Each iteration is a stage of the graph, run or not: a cap per case just above the
    # iterations scikit-learn needs from the same centres (13, 12, 19), not 300, and
    # `converged` asserts that it stopped before its cap, so the stopping rule, not the
    # cap, ends both trainings.
    M = {'tol0': 15, 'tol': 14, 'int': 21, 'seeded': 16}

    def converged(sk, cap):
        assert sk.n_iter_ < cap, 'scikit-learn ran to the cap: raise it'
        return sk
    cases = {
        'tol0': (weighted_batches(X, w, 700), dict(n_clusters=5, init=C0, tol=0,
                                                   max_iter=M['tol0'])),
        'tol': (weighted_batches(X, w, 700), dict(n_clusters=5, init=C0, max_iter=M['tol'])),
        'cache': (weighted_batches(X, w, 400), dict(n_clusters=5, init=C0, tol=0,
                                                    max_iter=M['tol0'],
                                                    cache_dir=str(tmp_path / 'cache'))),
        'int': (weighted_batches(X, wi, 1000), dict(n_clusters=5, init=C0, tol=0,
                                                    max_iter=M['int'])),
        'few': (weighted_batches(X, w, 700), dict(n_clusters=5, init=C0, tol=0, max_iter=2)),
        'plusplus': (weighted_batches(X, w, 700), dict(n_clusters=5, random_state=0,
                                                       max_iter=M['seeded'])),
        'parallel': (weighted_batches(X, w, 700), dict(n_clusters=5, init='k-means||',
                                                       random_state=0, max_iter=M['seeded'])),
    }
    res = run_kmeans(tmp_path, cases)
    sk_tol0 = converged(sk_fit(X, C0, w, tol=0, max_iter=M['tol0']), M['tol0'])
    assert_same(res['tol0'], sk_tol0)
    assert_same(res['tol'], converged(sk_fit(X, C0, w, max_iter=M['tol']), M['tol']))
    assert_same(res['cache'], sk_tol0)
    assert_same(res['few'], sk_fit(X, C0, w, tol=0, max_iter=2))
    # weight 2 is the row twice
    dup = np.repeat(X, wi.astype(int), axis=0)
    assert_same(res['int'], converged(sk_fit(dup, C0, None, tol=0, max_iter=M['int']), M['int']))
    assert_same(res['int'], converged(sk_fit(X, C0, wi, tol=0, max_iter=M['int']), M['int']))
    assert res['tol0'].cluster_weights == pytest.approx(
        [w[res_lab == j].sum() for res_lab in [((X[:, None] - res['tol0'].centers) ** 2)
                                               .sum(-1).argmin(1)] for j in range(5)])
    assert sum(res['tol0'].cluster_sizes) == len(X)
    # seeded runs: from their own initial centres, the same as scikit-learn
    for name in ('plusplus', 'parallel'):
        r = res[name]
        assert_same(r, converged(sk_fit(X, r.initial_centers, w, max_iter=M['seeded']),
                                 M['seeded']))
    assert not os.path.exists(tmp_path / 'cache') or os.listdir(tmp_path / 'cache') == []


def test_weighted_empty_cluster_farthest_is_sklearns(tmp_path):
    # the second centre's nearest points weigh 0: its cluster is empty from the start
    X = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [1.0, 1.0], [3.0, 3.0], [3.1, 3.0]])
    w = np.array([1.0, 2.0, 1.0, 3.0, 0.0, 0.0])
    C0 = np.array([[0.5, 0.5], [3.0, 3.0]])
    M = 10   # a stage per iteration: a cap both runs stop well before (asserted), not 300
    res = run_kmeans(tmp_path, {
        'far': (weighted_batches(X, w, 4), dict(n_clusters=2, init=C0, tol=0, max_iter=M,
                                                empty_cluster='farthest')),
        'keep': (weighted_batches(X, w, 4), dict(n_clusters=2, init=C0, tol=0, max_iter=M))})
    sk = sk_fit(X, C0, w, tol=0, max_iter=M)
    assert sk.n_iter_ < M and res['keep'].n_iter < M
    assert_same(res['far'], sk)
    assert res['far'].n_relocated >= 1
    np.testing.assert_array_equal(res['keep'].centers[1], [3.0, 3.0])   # kept, weight 0
    assert res['keep'].cluster_weights[1] == 0.0 and res['keep'].cluster_sizes[1] == 2


def test_weights_summing_to_zero_are_an_error():
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(Exception, match='sample weights of the 10 points sum to 0'):
        with beam.Pipeline(runner='FnApiRunner') as p:
            p | beam.Create(weighted_batches(X, np.zeros(10), 5)) | KMeans(2, random_state=0,
                                                                           max_iter=3)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope='module')
def weighted_csv(tmp_path_factory, data):
    X, w, C0 = data
    d = tmp_path_factory.mktemp('wcsv')
    path = d / 'p.csv'
    path.write_text('id,a,b,c,w\n' + ''.join(
        f'{i},{float(x[0])!r},{float(x[1])!r},{float(x[2])!r},{float(wi)!r}\n'
        for i, (x, wi) in enumerate(zip(X, w))) + '9999,1,2,3,-2\n10000,1,2,3,\n')
    np.save(d / 'C0.npy', C0)
    return {'path': str(path), 'C0': str(d / 'C0.npy')}


def test_cli_weight_column_blocks_and_dead_letters(data, weighted_csv, tmp_path, capsys):
    X, w, C0 = data
    model = kmeans_cli.run(['--input', weighted_csv['path'], '--weight_column', 'w',
                            '--init', weighted_csv['C0'], '--tol', '0', '--block_size', '2',
                            '--model', str(tmp_path / 'm')])
    out = capsys.readouterr().out
    assert 'records_read=2502 records_ok=2500 records_refused=2' in out
    sk = sk_fit(X, C0, w, tol=0)
    np.testing.assert_allclose(model.centers, sk.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert model.inertia == pytest.approx(sk.inertia_, rel=1e-9) and model.n_iter == sk.n_iter_
    assert model.d == 3 and model.config['weight_column'] == 'w'
    (version,) = list_versions(str(tmp_path / 'm'))
    errors = [json.loads(line) for f in sorted(os.listdir(tmp_path / 'm' / version))
              if f.startswith('training-errors') for line in open(tmp_path / 'm' / version / f)]
    assert sorted(e['reason'] for e in errors) == ['missing weight', 'weight is negative']


def _train(csv, model_dir, *flags, env=None):
    return kmeans_process(csv['path'], model_dir, '--k', '5', '--weight_column', 'w',
                          '--random_state', '1', '--block_size', '2', *flags, env=env)


def test_killed_weighted_run_resumes_with_a_rebuilt_cache(weighted_csv, tmp_path):
    whole = _train(weighted_csv, tmp_path / 'whole')
    assert whole.returncode == 0, whole.stderr[-3000:]
    models = tmp_path / 'killed'
    killed = _train(weighted_csv, models, env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9, killed.stderr[-3000:]
    (version,) = os.listdir(models / '_runs')
    shutil.rmtree(models / '_runs' / version / 'cache')
    # the weight column is a training flag: resuming without it is refused
    argv = [sys.executable, '-m', 'beamml', 'kmeans', '--input', weighted_csv['path'],
            '--k', '5', '--random_state', '1', '--block_size', '2',
            '--model', str(models), '--feature_columns', 'a,b,c', '--resume']
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--weight_column was 'w', now None" in out.stderr
    resumed = _train(weighted_csv, models, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'rebuilding it from the input' in resumed.stderr
    assert model_doc(models) == model_doc(tmp_path / 'whole')   # every bit
