"""`beamml kmeans` end to end: run([...]) into tmp_path, checked against scikit-learn."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs

from beamml.pipelines import kmeans
from beamml.pipelines._platform.main import main_wrapper
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import CentroidModel, latest_version, list_versions


def write_points(path, X, ids=None):
    cols = {'id': pa.array(np.arange(len(X)) if ids is None else ids)}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(X.shape[1])})
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.fixture(scope='module')
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp('blobs')
    # from C0 below, scikit-learn stops after 9 iterations with tol=1e-4, 13 with tol=0
    X, y = make_blobs(n_samples=800, n_features=3, centers=4, cluster_std=1.0,
                      center_box=(-8, 8), random_state=2)
    write_points(d / 'part-0.parquet', X[:500])
    write_points(d / 'part-1.parquet', X[500:], ids=np.arange(500, 800))
    C0 = X[[3, 100, 200, 300]].copy()
    np.save(d / 'c0.npy', C0)
    return {'pattern': str(d / 'part-*.parquet'), 'X': X, 'y': y, 'C0': C0,
            'c0': str(d / 'c0.npy'), 'dir': d}


def test_train_from_initial_centres_matches_sklearn(blobs, tmp_path, capsys):
    model_dir = str(tmp_path / 'models')
    model = kmeans.run(['--input', blobs['pattern'], '--init', blobs['c0'], '--max_iter', '4',
                        '--tol', '0', '--model', model_dir])
    out = capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        sk = SKKMeans(4, init=blobs['C0'], n_init=1, algorithm='lloyd', max_iter=4,
                      tol=0).fit(blobs['X'])
    loaded = CentroidModel.load(model_dir)
    np.testing.assert_allclose(loaded.centers, sk.cluster_centers_, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(loaded.centers, model.centers)  # exact JSON round trip
    assert loaded.k == 4 and loaded.d == 3
    assert loaded.n_iter == sk.n_iter_ == 4 and loaded.stop_reason == 'max_iter'
    assert loaded.inertia == pytest.approx(sk.inertia_, rel=1e-9)
    assert len(loaded.inertia_history) == 4
    assert loaded.cluster_sizes == np.bincount(sk.labels_).tolist()
    assert loaded.input_pattern == blobs['pattern']
    assert loaded.config['init'] == blobs['c0'] and loaded.config['k'] == 4
    version = latest_version(model_dir)
    assert list_versions(model_dir) == [version] == [loaded.version]
    assert 'records_read=800 records_ok=800 records_refused=0' in out
    assert f'kmeans: k=4 d=3 n_iter=4 stop_reason=max_iter inertia={sk.inertia_:.10g}' in out
    vdir = os.path.join(model_dir, version)
    summary = json.load(open(os.path.join(vdir, kmeans.RESULT_FILE)))
    np.testing.assert_allclose(summary['initial_centers'], blobs['C0'], rtol=1e-12)
    assert os.path.exists(os.path.join(vdir, 'training-errors-00000-of-00001.jsonl'))
    # a second run is a new version, and LATEST moves to it
    kmeans.run(['--input', blobs['pattern'], '--k', '4', '--max_iter', '2',
                '--random_state', '0', '--model', model_dir])
    assert len(list_versions(model_dir)) == 2
    assert latest_version(model_dir) != version


def test_kmeans_parallel_default_tol_and_csv_centres(blobs, tmp_path, capsys):
    # initial centres as a CSV point cloud; default tol: n_iter as scikit-learn's
    (tmp_path / 'c0.csv').write_text('a,b,c\n' + '\n'.join(
        ','.join(repr(float(v)) for v in row) for row in blobs['C0']) + '\n')
    model = kmeans.run(['--input', blobs['pattern'], '--init', str(tmp_path / 'c0.csv'),
                        '--max_iter', '12', '--model', str(tmp_path / 'm1')])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        sk = SKKMeans(4, init=blobs['C0'], n_init=1, algorithm='lloyd', max_iter=12).fit(
            blobs['X'])
    assert sk.n_iter_ < 12
    assert model.n_iter == sk.n_iter_
    assert model.stop_reason == 'converged_tol'
    np.testing.assert_allclose(model.centers, sk.cluster_centers_, rtol=1e-9, atol=1e-12)
    # k-means|| on the same data: the four blobs are found
    model = kmeans.run(['--input', blobs['pattern'], '--k', '4', '--init', 'k-means||',
                        '--max_iter', '5', '--random_state', '3',
                        '--model', str(tmp_path / 'm2')])
    assert model.config['init'] == 'k-means||' and model.config['random_state'] == 3
    assert sorted(model.cluster_sizes) == pytest.approx(sorted(np.bincount(blobs['y'])), abs=40)


def test_dead_letters_are_written_and_training_goes_on(tmp_path, capsys):
    rows = ['id,a,b'] + [f'{i},{i % 7},{(i * 3) % 11}' for i in range(60)] + ['60,x,1']
    (tmp_path / 'p.csv').write_text('\n'.join(rows) + '\n')
    model_dir = str(tmp_path / 'models')
    model = kmeans.run(['--input', str(tmp_path / 'p.csv'), '--k', '3', '--max_iter', '3',
                        '--random_state', '1', '--model', model_dir,
                        '--max_refused_fraction', '0.05'])
    out = capsys.readouterr().out
    assert 'records_read=61 records_ok=60 records_refused=1' in out
    assert sum(model.cluster_sizes) == 60
    vdir = os.path.join(model_dir, model.version)
    with open(os.path.join(vdir, 'training-errors-00000-of-00001.jsonl')) as f:
        letters = [json.loads(line) for line in f]
    assert len(letters) == 1 and letters[0]['row'] == 60 and 'x' in str(letters[0]['record'])


def test_flag_errors(blobs, tmp_path):
    base = ['--input', blobs['pattern'], '--model', str(tmp_path / 'm')]
    with pytest.raises(BeammlError, match='--k is required'):
        kmeans.run(base)
    with pytest.raises(BeammlError, match="--k: '0' is not an integer >= 1"):
        kmeans.run(base + ['--k', '0'])
    with pytest.raises(BeammlError, match='hold 4 centres but k=5'):
        kmeans.run(base + ['--k', '5', '--init', blobs['c0']])
    np.save(tmp_path / 'c2.npy', np.zeros((4, 2)))
    with pytest.raises(BeammlError, match='2 features but the data have 3'):
        kmeans.run(base + ['--init', str(tmp_path / 'c2.npy')])
    with pytest.raises(BeammlError, match='drop --allow_nan'):
        kmeans.run(base + ['--k', '2', '--allow_nan'])
    with pytest.raises(BeammlError, match='max_iter'):
        kmeans.run(base + ['--k', '2', '--max_iter', '0'])
    with pytest.raises(BeammlError, match='no input file'):
        kmeans.run(['--input', str(tmp_path / 'none*.parquet'), '--k', '2',
                    '--model', str(tmp_path / 'm')])
    with pytest.raises(BeammlError, match="--empty_cluster: invalid choice: 'drop'"):
        kmeans.run(base + ['--k', '2', '--empty_cluster', 'drop'])
    assert not os.path.exists(str(tmp_path / 'm'))  # nothing written


def test_cli_words_the_parameters_as_its_flags(blobs, tmp_path, capsys):
    base = ['--input', blobs['pattern'], '--model', str(tmp_path / 'm')]
    for flags, line in [(['--k', '0'], "argument --k: '0' is not an integer >= 1 "
                                       '(see beamml kmeans --help)'),
                        (['--k', '2', '--max_iter', '0'],
                         '--max_iter must be an integer >= 1, got 0'),
                        (['--k', '2', '--init_steps', '0'], '--init_steps must be >= 1, got 0')]:
        assert main_wrapper(kmeans.run, base + flags, prog='beamml kmeans') == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f'beamml kmeans: error: {line}'
    assert not os.path.exists(str(tmp_path / 'm'))


def test_run_raises_the_recursion_limit_only_around_the_run(blobs, tmp_path, monkeypatch):
    seen, real = [], kmeans.recursion_limit_for

    @contextlib.contextmanager
    def spy(max_iter):
        with real(max_iter):
            seen.append((max_iter, sys.getrecursionlimit()))
            yield

    monkeypatch.setattr(kmeans, 'recursion_limit_for', spy)
    before = sys.getrecursionlimit()
    kmeans.run(['--input', blobs['pattern'], '--init', blobs['c0'], '--max_iter', '2',
                '--model', str(tmp_path / 'm')])
    assert seen == [(2, max(before, 1000 + 2 * 2))]
    assert sys.getrecursionlimit() == before


def test_data_errors_at_run_time(tmp_path, capsys):
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 4, axis=0)
    path = write_points(tmp_path / 'dup.parquet', X)
    model_dir = str(tmp_path / 'm')
    with pytest.raises(BeammlError, match=r'k=3 is greater than the number of distinct points'):
        kmeans.run(['--input', path, '--k', '3', '--model', model_dir, '--max_iter', '2'])
    empty = write_points(tmp_path / 'empty.parquet', np.empty((0, 2)))  # a schema, no row
    with pytest.raises(BeammlError, match=r'empty\.parquet: no data rows \(1 file\(s\)'):
        kmeans.run(['--input', empty, '--k', '1', '--model', model_dir, '--max_iter', '2'])
    (tmp_path / 'nan.csv').write_text('id,a,b\n1,nan,2\n2,3,inf\n')  # every row refused
    with pytest.raises(BeammlError, match='no valid point'):
        kmeans.run(['--input', str(tmp_path / 'nan.csv'), '--k', '1', '--model', model_dir,
                    '--max_iter', '2'])
    assert not os.path.exists(os.path.join(model_dir, 'LATEST'))
    # through the CLI wrapper: one line, exit code 2
    code = main_wrapper(kmeans.run, ['--input', path, '--k', '3', '--model', model_dir,
                                     '--max_iter', '1'], prog='beamml kmeans')
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('beamml kmeans: error: k=3 is greater than the number of '
                              'distinct points (2 among 8 rows)')


def test_model_dir_on_gcs(blobs, gcs_bucket, capsys):
    model_dir = f'{gcs_bucket}/models/blobs'
    model = kmeans.run(['--input', blobs['pattern'], '--init', blobs['c0'], '--max_iter', '2',
                        '--tol', '0', '--model', model_dir])
    loaded = CentroidModel.load(model_dir)
    np.testing.assert_array_equal(loaded.centers, model.centers)
    assert loaded.version == model.version
