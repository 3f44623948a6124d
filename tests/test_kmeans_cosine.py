"""K-means with cosine distance (Spark MLlib's rule) and assignment with a cosine model.

The oracle is :func:`spark_cosine_lloyd`, a plain numpy transcription of Spark's
``CosineDistanceMeasure`` in Lloyd's loop (points scaled by ``1 / ||x||``, a
centre is ``sum / count`` scaled to unit norm, cost = sum of ``1 - cos``) with
beamml's stopping rule (labels unchanged, else the summed squared shift within
``tol x`` the mean per-feature variance of the unit points, else max_iter).
"""
from __future__ import annotations

import json
import os
import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import RunInference

from kmeans_cli import kmeans_process, model_doc, run_kmeans, save_result
from beamml.pipelines import assign, kmeans
from beamml.transforms.assignment import add_assignment
from beamml.transforms.distances import nearest_centroid_cosine, unit_rows
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadPoints, points_batch
from beamml.transforms.kmeans import KMeans
from beamml.pipelines.kmeans.checkpoint import TrainingRun
from beamml.transforms.model import CentroidModel, CentroidModelHandler
from faults import kill_at

ZERO = 'zero vector: cosine distance is undefined'


# ----------------------------------------------------------------------------- oracles

def spark_cosine_lloyd(X, C0, *, max_iter, tol=0.0, w=None):
    """Spark's cosine K-means from C0 with beamml's stopping rule; a dict of the result.

    With weights ``w`` (Spark's weightCol): a cluster's sum is of ``w x / ||x||``, its
    centre that sum over the cluster's weight, normalised; the cost is ``sum w (1 - cos)``.
    """
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = C0 / np.linalg.norm(C0, axis=1, keepdims=True)
    tol_abs = tol * np.mean(np.var(U, axis=0)) if tol else 0.0
    previous, history, reason = None, [], 'max_iter'
    for it in range(max_iter):
        D = 1.0 - U @ C.T
        labels = D.argmin(axis=1)
        history.append(float((w * D[np.arange(len(U)), labels]).sum()))
        sums = np.zeros_like(C)
        np.add.at(sums, labels, w[:, None] * U)
        counts = np.bincount(labels, weights=w, minlength=len(C))
        new = C.copy()
        full = counts > 0
        mean = sums[full] / counts[full, None]
        new[full] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        shift = float(((new - C) ** 2).sum())
        C = new
        if previous is not None and (labels == previous).all():
            reason = 'converged_labels'
            break
        if shift <= tol_abs:
            reason = 'converged_tol'
            break
        previous = labels
    D = 1.0 - U @ C.T
    labels = D.argmin(axis=1)
    return {'centers': C, 'labels': labels,
            'cost': float((w * D[np.arange(len(U)), labels]).sum()),
            'n_iter': it + 1, 'stop_reason': reason, 'history': history,
            'sizes': np.bincount(labels, minlength=len(C)).tolist()}


def brute_cosine(X, C):
    """Cosine distances by the definition, 1 - x.c / (|x| |c|): (labels, nearest, all)."""
    D = 1.0 - (X @ C.T) / np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(C, axis=1))
    return D.argmin(axis=1), D.min(axis=1), D


def directions(n_per=250, d=5, k=4, seed=0):
    """Points around k directions, at magnitudes from 0.01 to 100 (so scaling matters)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(k, d))
    X = np.concatenate([(c + 0.45 * rng.normal(size=(n_per, d)))
                        * rng.uniform(0.01, 100, (n_per, 1)) for c in dirs])
    return X[rng.permutation(len(X))]


def assert_same_as_spark(result, ref, X):
    np.testing.assert_allclose(result.centers, ref['centers'], rtol=0, atol=1e-9)
    labels, _, _ = brute_cosine(X, result.centers)
    np.testing.assert_array_equal(labels, ref['labels'])
    assert result.inertia == pytest.approx(ref['cost'], rel=1e-9)
    np.testing.assert_allclose(result.inertia_history, ref['history'], rtol=1e-9)
    assert result.n_iter == ref['n_iter']
    assert result.stop_reason == ref['stop_reason']
    assert result.cluster_sizes == ref['sizes']


def write_csv(path, X, ids=None):
    cols = {'id': pa.array(np.arange(len(X)) if ids is None else ids)}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(X.shape[1])})
    pcsv.write_csv(pa.table(cols), str(path))
    return str(path)


def read_dead_letters(prefix_glob_dir, stem):
    out = []
    for f in sorted(os.listdir(prefix_glob_dir)):
        if f.startswith(stem) and f.endswith('.jsonl'):
            out += [json.loads(line) for line in open(os.path.join(prefix_glob_dir, f))]
    return out


# ----------------------------------------------------------------------------- kernels

def test_unit_rows_tiny_huge_and_zero_rows():
    X = np.array([[3.0, 4.0], [3e-310, 4e-310], [3e300, -4e300], [0.0, -0.0], [np.nan, 1.0]])
    U, zero = unit_rows(X)
    np.testing.assert_allclose(U[:3], [[0.6, 0.8], [0.6, 0.8], [0.6, -0.8]], rtol=1e-15)
    assert zero.tolist() == [False, False, False, True, False]
    assert (U[3] == 0).all() and np.isnan(U[4]).all()


def test_nearest_centroid_cosine_is_brute_force():
    rng = np.random.default_rng(3)
    X, C = rng.normal(size=(500, 6)) * 7, rng.normal(size=(5, 6)) * 3
    labels, dist, every = nearest_centroid_cosine(X, C, return_all=True)
    bl, bd, bD = brute_cosine(X, C)
    np.testing.assert_array_equal(labels, bl)
    np.testing.assert_allclose(dist, bd, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(every, bD, rtol=1e-12, atol=1e-14)
    # the scale of a point or a centre does not matter; ties go to the lowest index
    l2, d2 = nearest_centroid_cosine(X * 1e-5, C * 1e8)
    np.testing.assert_array_equal(l2, labels)
    lt, dt = nearest_centroid_cosine(np.array([[1.0, 1.0], [2.0, 0.0]]),
                                     np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]))
    assert lt.tolist() == [0, 0] and dt[1] == 0
    # a zero or non-finite row: -1 and NaN; a zero centre is refused
    lz, dz = nearest_centroid_cosine(np.array([[0.0, 0.0], [np.inf, 1.0], [0.0, 2.0]]),
                                     np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert lz.tolist() == [-1, -1, 1] and np.isnan(dz[:2]).all() and dz[2] == 0
    with pytest.raises(ValueError, match='zero vector'):
        nearest_centroid_cosine(X[:, :2], np.array([[1.0, 0.0], [0.0, 0.0]]))


# ----------------------------------------------------------------------------- training

def test_kmeans_cosine_is_sparks_rule_from_the_same_centres(tmp_path):
    X = directions()
    C0 = X[[0, 1, 2, 3]] * np.array([[2.0], [0.5], [30.0], [1.0]])   # not unit: normalised
    batches = [X[:317], X[317:600], X[600:]]
    # Each iteration is a stage of the graph, run or not: a cap of M, not 300. The oracle
    # converges here in <= 9 iterations; each reference below asserts it stopped by its rule.
    M = 20
    cases = {
        'tol0': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=4, distance='cosine')),
        'default_tol': (batches, dict(n_clusters=4, init=C0, max_iter=M, distance='cosine')),
        'tol_big': (batches, dict(n_clusters=4, init=C0, tol=0.05, max_iter=M,
                                  distance='cosine')),
        'cached': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=M, distance='cosine',
                                 cache_dir=str(tmp_path / 'cache'))),
        'float32': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=M,
                                  distance='cosine', dtype='float32',
                                  cache_dir=str(tmp_path / 'cache32'))),
        'euclidean': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=4)),
    }
    res = run_kmeans(tmp_path, cases)
    assert_same_as_spark(res['tol0'], spark_cosine_lloyd(X, C0, max_iter=4), X)
    ref = spark_cosine_lloyd(X, C0, max_iter=M, tol=1e-4)
    assert ref['n_iter'] > 2 and ref['stop_reason'] != 'max_iter'
    assert_same_as_spark(res['default_tol'], ref, X)
    ref = spark_cosine_lloyd(X, C0, max_iter=M, tol=0.05)
    assert ref['stop_reason'] == 'converged_tol'
    assert_same_as_spark(res['tol_big'], ref, X)
    ref = spark_cosine_lloyd(X, C0, max_iter=M)
    assert ref['stop_reason'] == 'converged_labels'
    assert_same_as_spark(res['cached'], ref, X)
    np.testing.assert_allclose(np.linalg.norm(res['cached'].centers, axis=1), 1, rtol=1e-15)
    np.testing.assert_allclose(res['cached'].initial_centers,
                               C0 / np.linalg.norm(C0, axis=1, keepdims=True), rtol=1e-15)
    assert not os.listdir(tmp_path / 'cache')   # dropped at the end
    # float32 points: the same rule, to float32's precision
    np.testing.assert_allclose(res['float32'].centers, ref['centers'], atol=1e-6)
    assert res['float32'].n_iter == ref['n_iter']
    assert res['float32'].inertia == pytest.approx(ref['cost'], rel=1e-6)
    # not the Euclidean training: the test tells the two apart
    assert np.abs(res['euclidean'].centers - res['tol0'].centers).max() > 0.1


def test_kmeans_cosine_with_sample_weights_is_sparks_weighted_rule(tmp_path):
    X = directions(seed=8)
    w = np.random.default_rng(8).uniform(0, 3, len(X))
    w[::50] = 0.0
    C0 = X[[0, 1, 2, 3]]
    batches = [points_batch(pa.array(np.arange(lo, min(lo + 400, len(X)))), X[lo:lo + 400],
                            weight=pa.array(w[lo:lo + 400])) for lo in range(0, len(X), 400)]
    M = 20   # a stage per iteration: a cap the oracle stops well before (asserted), not 300
    res = run_kmeans(tmp_path, {
        'w': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=M, distance='cosine')),
        'w_cached': (batches, dict(n_clusters=4, init=C0, tol=0, max_iter=M,
                                   distance='cosine', cache_dir=str(tmp_path / 'c')))})
    ref = spark_cosine_lloyd(X, C0, max_iter=M, w=w)
    assert ref['stop_reason'] == 'converged_labels'
    unweighted = spark_cosine_lloyd(X, C0, max_iter=M)
    assert np.abs(ref['centers'] - unweighted['centers']).max() > 1e-6   # the weights matter
    for r in res.values():
        np.testing.assert_allclose(r.centers, ref['centers'], rtol=0, atol=1e-9)
        assert r.inertia == pytest.approx(ref['cost'], rel=1e-9)
        np.testing.assert_allclose(r.inertia_history, ref['history'], rtol=1e-9)
        assert r.n_iter == ref['n_iter'] and r.stop_reason == ref['stop_reason']


@pytest.mark.parametrize('init', ['k-means++', 'k-means||', 'random'])
def test_kmeans_cosine_seeding_then_sparks_rule(tmp_path, init):
    """Seeding runs on the unit points; from its centres the training is Spark's rule."""
    X = directions(seed=5)
    M = 30   # a stage per iteration: a cap the oracle stops before (asserted), not 300
    res = run_kmeans(tmp_path, {'s': ([X[:400], X[400:]], dict(
        n_clusters=4, init=init, random_state=3, distance='cosine', max_iter=M))})['s']
    C0 = res.initial_centers
    np.testing.assert_allclose(np.linalg.norm(C0, axis=1), 1, rtol=1e-15)
    U = unit_rows(X)[0]
    # each seed is one of the unit points
    assert (np.abs(U[None, :, :] - C0[:, None, :]).max(-1).min(1) < 1e-15).all()
    ref = spark_cosine_lloyd(X, C0, max_iter=M, tol=1e-4)
    assert ref['stop_reason'] != 'max_iter'
    assert_same_as_spark(res, ref, X)


def test_kmeans_cosine_empty_cluster_keep_and_farthest(tmp_path):
    # four points near +x and +y; the third centre (-x, -y) takes no point
    X = np.array([[1.0, 0.1], [3.0, 0.2], [0.1, 2.0], [0.2, 1.0], [1.0, 1.0]])
    C0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    res = run_kmeans(tmp_path, {
        'keep': ([X], dict(n_clusters=3, init=C0, tol=0, max_iter=5, distance='cosine')),
        'far': ([X], dict(n_clusters=3, init=C0, tol=0, max_iter=5, distance='cosine',
                          empty_cluster='farthest'))})
    keep = res['keep']
    assert keep.cluster_sizes[2] == 0
    assert keep.centers[2].tolist() == unit_rows(C0[2:])[0][0].tolist()   # kept, bit for bit
    assert_same_as_spark(keep, spark_cosine_lloyd(X, C0, max_iter=5), X)
    far = res['far']
    assert far.n_relocated >= 1 and min(far.cluster_sizes) >= 1
    np.testing.assert_allclose(np.linalg.norm(far.centers, axis=1), 1, rtol=1e-15)
    # the relocated centre is the unit point with the largest 1 - cos to its centre
    _, d, _ = brute_cosine(X, unit_rows(C0)[0][:2])
    far_point = unit_rows(X)[0][np.argmax(d)]
    assert np.abs(far.centers - far_point).max(axis=1).min() < 1e-12


def test_kmeans_cosine_refuses_zero_vectors_and_bad_parameters(tmp_path):
    X = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    with pytest.raises(Exception, match='zero vector'):
        run_kmeans(tmp_path, {'z': ([X], dict(n_clusters=2, init='random', random_state=0,
                                               distance='cosine', max_iter=3))})
    with pytest.raises(BeammlError, match='distance must be one of euclidean, cosine') as e:
        KMeans(2, distance='manhattan')
    assert e.value.parameters == ('distance',)
    with pytest.raises(BeammlError, match='initial centre 1 is a zero vector') as e:
        KMeans(2, init=np.array([[1.0, 0.0], [0.0, 0.0]]), distance='cosine')
    assert e.value.parameters == ('init',)


# ----------------------------------------------------------------------------- reading

def test_read_points_refuse_zero_gives_dead_letters_with_file_row_line(tmp_path):
    path = tmp_path / 'p.csv'
    path.write_text('id,a,b\n0,1,2\n1,0,0\n2,0,-0.0\n3,nan,0\n4,0,3\n')
    out = tmp_path / 'out'
    out.mkdir()
    with beam.Pipeline(runner='FnApiRunner') as p:
        for name, flag in (('on', True), ('off', False)):
            r = p | f'Read_{name}' >> ReadPoints(str(path), refuse_zero=flag)
            (r.batches | f'Ids_{name}' >> beam.FlatMap(lambda b: b.column('id').to_pylist())
             | f'L_{name}' >> beam.combiners.ToList() | f'S_{name}' >> beam.Map(
                 lambda ids, n: save_result(sorted(ids), str(out), f'{n}-ids'), name))
            (r.errors | f'EL_{name}' >> beam.combiners.ToList() | f'ES_{name}' >> beam.Map(
                save_result, str(out), f'{name}-errors'))
    got = {}
    for f in os.listdir(out):
        got[f.rsplit('-', 1)[0]] = pickle.load(open(out / f, 'rb'))
    assert got['on-ids'] == [0, 4] and got['off-ids'] == [0, 1, 2, 4]
    errors = sorted(got['on-errors'], key=lambda e: e['row'])
    assert [(e['file'], e['row'], e['line'], e['reason']) for e in errors] == [
        (str(path), 1, 3, ZERO), (str(path), 2, 4, ZERO), (str(path), 3, 5, 'NaN feature value')]
    assert [e['reason'] for e in got['off-errors']] == ['NaN feature value']


# ----------------------------------------------------------------------------- the model

def test_model_records_the_distance_and_old_models_are_euclidean(tmp_path):
    C = np.array([[1.0, 0.0], [0.6, 0.8]])
    m = CentroidModel(C, version='v1', distance='cosine')
    m.save(str(tmp_path))
    doc = json.load(open(tmp_path / 'v1' / 'model.json'))
    assert doc['distance'] == 'cosine'
    loaded = CentroidModel.load(str(tmp_path))
    assert loaded.distance == 'cosine' and loaded == m
    assert pickle.loads(pickle.dumps(loaded)).distance == 'cosine'
    # a model.json written before the field existed
    del doc['distance']
    old = tmp_path / 'old.json'
    old.write_text(json.dumps(doc))
    assert CentroidModel.load(str(old)).distance == 'euclidean'
    assert CentroidModel(C).to_dict()['distance'] == 'euclidean'
    doc['distance'] = 'manhattan'
    old.write_text(json.dumps(doc))
    with pytest.raises(BeammlError, match='distance must be one of euclidean, cosine'):
        CentroidModel.load(str(old))
    with pytest.raises(BeammlError, match='centre 1 of a cosine model is a zero vector'):
        CentroidModel([[1.0, 0.0], [0.0, 0.0]], distance='cosine')


def test_add_assignment_and_the_handler_use_the_model_distance():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, 3)) * rng.uniform(0.1, 50, (200, 1))
    C = rng.normal(size=(4, 3)) * 5
    cosine, euclid = CentroidModel(C, distance='cosine'), CentroidModel(C)
    X[[5, 50]] = 0.0
    batch = points_batch(pa.array(np.arange(200)), X)
    out, refused = add_assignment(batch, cosine, all_distances=True)
    assert refused.tolist() == [5, 50]
    keep = np.setdiff1d(np.arange(200), [5, 50])
    bl, bd, bD = brute_cosine(X[keep], C)
    np.testing.assert_array_equal(out.column('cluster').to_numpy(), bl)
    np.testing.assert_allclose(out.column('distance').to_numpy(), bd, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.stack(out.column('distances').to_pylist()), bD, rtol=1e-12,
                               atol=1e-14)
    e_out, e_refused = add_assignment(batch, euclid)
    assert len(e_refused) == 0   # the origin is a point like any other for Euclidean
    assert (e_out.column('cluster').to_numpy()[keep] != bl).any()
    # RunInference: the handler uses the model's distance too; a zero vector: -1, NaN
    handler = CentroidModelHandler('unused')
    results = handler.run_inference([X[0], X[5], X[7]], cosine)
    assert [r.inference[0] for r in results] == [bl[0], -1, bl[6]]
    assert results[0].inference[1] == pytest.approx(bd[0], rel=1e-12)
    assert np.isnan(results[1].inference[1])
    (two_d,) = handler.run_inference([X[keep]], cosine)
    np.testing.assert_array_equal(two_d.inference[0], bl)


def test_run_inference_with_a_saved_cosine_model(tmp_path):
    C = np.array([[1.0, 0.0], [0.0, 1.0]])
    CentroidModel(C, version='v1', distance='cosine').save(str(tmp_path / 'm'))
    out = tmp_path / 'out'
    out.mkdir()
    with beam.Pipeline(runner='FnApiRunner') as p:
        (p | beam.Create([np.array([10.0, 9.0]), np.array([0.1, 0.2])])
         | RunInference(CentroidModelHandler(str(tmp_path / 'm')))
         | beam.Map(lambda r: (int(r.inference[0]), float(r.inference[1])))
         | beam.combiners.ToList() | beam.Map(lambda v: save_result(sorted(v), str(out), 'r')))
    (f,) = os.listdir(out)
    got = pickle.load(open(out / f, 'rb'))
    assert [c for c, _ in got] == [0, 1]
    assert got[0][1] == pytest.approx(1 - 10 / np.hypot(10, 9), rel=1e-12)


# ----------------------------------------------------------------------------- the CLIs

@pytest.fixture(scope='module')
def cloud(tmp_path_factory):
    d = tmp_path_factory.mktemp('cosine')
    X = directions(n_per=150, d=3, k=3, seed=11)
    X[[17, 200]] = 0.0   # zero vectors: dead letters with their file, row and line
    path = write_csv(d / 'points.csv', X)
    C0 = X[[0, 1, 2]].copy()
    np.save(d / 'c0.npy', C0)
    return {'path': path, 'X': X, 'C0': C0, 'c0': str(d / 'c0.npy'),
            'ok': np.setdiff1d(np.arange(len(X)), [17, 200])}


def test_cli_kmeans_cosine_then_assign(cloud, tmp_path, capsys):
    models = str(tmp_path / 'models')
    model = kmeans.run(['--input', cloud['path'], '--init', cloud['c0'], '--distance', 'cosine',
                        '--model', models, '--max_refused_fraction', '0.1',
                        '--output', str(tmp_path / 'labels'), '--output_format', 'csv'])
    out = capsys.readouterr().out
    assert 'records_read=450 records_ok=448 records_refused=2' in out
    X = cloud['X'][cloud['ok']]
    ref = spark_cosine_lloyd(X, cloud['C0'], max_iter=300, tol=1e-4)
    loaded = CentroidModel.load(models)
    assert loaded.distance == 'cosine' and loaded.config['distance'] == 'cosine'
    np.testing.assert_allclose(loaded.centers, ref['centers'], rtol=0, atol=1e-9)
    assert loaded.n_iter == ref['n_iter'] and loaded.stop_reason == ref['stop_reason']
    assert loaded.inertia == pytest.approx(ref['cost'], rel=1e-9)
    assert loaded.cluster_sizes == ref['sizes']
    errors = read_dead_letters(os.path.join(models, model.version), 'training-errors')
    assert sorted((e['row'], e['line'], e['reason']) for e in errors) == [
        (17, 19, ZERO), (200, 202, ZERO)]
    assert {e['file'] for e in errors} == {cloud['path']}
    labels = pcsv.read_csv(f'{tmp_path}/labels-00000-of-00001.csv').sort_by('id')
    np.testing.assert_array_equal(labels.column('id').to_numpy(), cloud['ok'])
    np.testing.assert_array_equal(labels.column('cluster').to_numpy(), ref['labels'])
    _, bd, _ = brute_cosine(X, loaded.centers)
    np.testing.assert_allclose(labels.column('distance').to_numpy(), bd, atol=1e-12)

    # assign with that model: cosine distances; the zero vectors are its dead letters
    assign.run(['--input', cloud['path'], '--model', models, '--output',
                str(tmp_path / 'assigned'), '--max_refused_fraction', '0.1'])
    out = capsys.readouterr().out
    assert 'records_read=450 records_ok=448 records_refused=2' in out
    got = pq.read_table(f'{tmp_path}/assigned-00000-of-00001.parquet').sort_by('id')
    np.testing.assert_array_equal(got.column('id').to_numpy(), cloud['ok'])
    bl, bd, _ = brute_cosine(X, loaded.centers)
    np.testing.assert_array_equal(got.column('cluster').to_numpy(), bl)
    np.testing.assert_allclose(got.column('distance').to_numpy(), bd, rtol=1e-12, atol=1e-14)
    errors = read_dead_letters(str(tmp_path), 'assigned-errors')
    assert sorted((e['file'], e['row'], e['line'], e['reason']) for e in errors) == [
        (cloud['path'], 17, 19, ZERO), (cloud['path'], 200, 202, ZERO)]


def _train(cloud, model_dir, *flags, env=None):
    return kmeans_process(cloud['path'], model_dir, '--k', '3', '--random_state', '4',
                          '--max_refused_fraction', '0.1', '--tol', '0', *flags, env=env)


def test_resume_keeps_the_distance(cloud, tmp_path):
    whole = _train(cloud, tmp_path / 'whole', '--distance', 'cosine', '--block_size', '3')
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert model_doc(tmp_path / 'whole')['distance'] == 'cosine'
    assert model_doc(tmp_path / 'whole')['n_iter'] > 3   # blocks of 3: more than one block
    models = tmp_path / 'killed'
    killed = _train(cloud, models, '--distance', 'cosine', '--block_size', '3',
                    env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9, killed.stderr[-3000:]
    (version,) = os.listdir(models / '_runs')
    # another distance is refused, naming the flag
    other = _train(cloud, models, '--block_size', '3', '--resume')
    assert other.returncode == 2
    assert "--distance was 'cosine', now 'euclidean'" in other.stderr.strip().splitlines()[-1]
    # the cache lost too: rebuilt from the input as unit points, the same files
    import shutil
    shutil.rmtree(models / '_runs' / version / 'cache')
    resumed = _train(cloud, models, '--distance', 'cosine', '--block_size', '3', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'rebuilding it from the input' in resumed.stderr
    assert model_doc(models) == model_doc(tmp_path / 'whole')   # every bit


def test_a_run_saved_before_the_distance_flag_resumes_as_euclidean(tmp_path):
    run = TrainingRun(str(tmp_path), 'v1')
    flags = {'k': 3, 'tol': 0.0, 'random_state': 1}
    run.start(flags, {'random_state': 1}, str(tmp_path / 'cache'))
    info = json.load(open(tmp_path / '_runs' / 'v1' / 'run.json'))
    del info['flags']['distance']   # what an earlier beamml wrote
    (tmp_path / '_runs' / 'v1' / 'run.json').write_text(json.dumps(info))
    old = TrainingRun(str(tmp_path), 'v1')
    assert old.changed_flags({**flags, 'distance': 'euclidean'}) == []
    assert old.changed_flags({**flags, 'distance': 'cosine'}) == [
        "--distance was 'euclidean', now 'cosine'"]
