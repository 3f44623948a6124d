"""`beamml kmeans` in blocks: checkpoints, a killed run resumed, cost after convergence."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from kmeans_cli import kmeans_process, model_doc
from beamml.pipelines import kmeans
from beamml.transforms.model import list_versions
from faults import kill_at


@pytest.fixture(scope='module')
def blobs(tmp_path_factory):
    """1,200 points in 4 overlapping blobs: a dozen iterations before the labels settle."""
    d = tmp_path_factory.mktemp('blobs')
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (300, 2)) for c in [(0, 0), (3, 3), (0, 4), (5, 0)]])
    path = d / 'blobs.csv'
    path.write_text('id,a,b\n' + ''.join(f'{i},{float(x)!r},{float(y)!r}\n' for i, (x, y) in enumerate(X)))
    return {'path': str(path), 'X': X}


def _train(blobs, model_dir, *flags, env=None):
    return kmeans_process(blobs['path'], model_dir, '--k', '4', '--random_state', '1',
                          *flags, env=env)


def test_blocks_give_what_one_block_gives(blobs, tmp_path):
    """Blocks of 2 iterations (6 pipeline runs) and one block of the whole --max_iter: the
    same training. (--max_iter 30, not 300: a block has a graph stage per iteration, run
    or not; the training converges in about a dozen, asserted below, so 30 is one block.)"""
    one = kmeans.run(['--input', blobs['path'], '--k', '4', '--random_state', '1',
                      '--model', str(tmp_path / 'one'), '--block_size', '30',
                      '--max_iter', '30'])
    many = kmeans.run(['--input', blobs['path'], '--k', '4', '--random_state', '1',
                       '--model', str(tmp_path / 'many'), '--block_size', '2',
                       '--max_iter', '30'])
    assert one.n_iter == many.n_iter > 4 and many.stop_reason == 'converged_labels'
    assert one.stop_reason == 'converged_labels' and one.n_iter < 30
    np.testing.assert_allclose(many.centers, one.centers, rtol=1e-12, atol=1e-12)
    assert many.inertia == pytest.approx(one.inertia, rel=1e-12)
    assert many.cluster_sizes == one.cluster_sizes
    # the same as scikit-learn from the same initial centres
    from sklearn.cluster import KMeans as SkKMeans
    c0 = np.array(json.load(open(os.path.join(
        tmp_path / 'many', many.version, 'training.json')))['initial_centers'])
    sk = SkKMeans(4, init=c0, n_init=1, algorithm='lloyd', max_iter=300).fit(blobs['X'])
    assert sk.n_iter_ == many.n_iter
    np.testing.assert_allclose(many.centers, sk.cluster_centers_, rtol=1e-9)
    # a finished run leaves its version only: no run folder, no cache
    assert set(os.listdir(tmp_path / 'many')) == {'LATEST', many.version}


def test_a_killed_run_resumes_to_the_same_model_bit_for_bit(blobs, tmp_path):
    whole = _train(blobs, tmp_path / 'whole', '--block_size', '3')
    assert whole.returncode == 0, whole.stderr[-3000:]
    for lose_cache in (False, True):
        models = tmp_path / f'killed-{lose_cache}'
        killed = _train(blobs, models, '--block_size', '3',
                        env=kill_at('kmeans.after_first_block'))
        assert killed.returncode == -9, killed.stderr[-3000:]   # SIGKILL: no clean-up ran
        assert list_versions(str(models)) == []
        (version,) = os.listdir(models / '_runs')
        assert os.path.exists(models / '_runs' / version / 'block-0001.json')
        if lose_cache:
            shutil.rmtree(models / '_runs' / version / 'cache')
        resumed = _train(blobs, models, '--block_size', '3', '--resume')
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert 'resuming after block 1 (3 iteration(s) done)' in resumed.stderr
        assert ('rebuilding it from the input' in resumed.stderr) == lose_cache
        assert 'records_read=1200 records_ok=1200 records_refused=0' in resumed.stdout
        assert list_versions(str(models)) == [version]
        assert model_doc(models) == model_doc(tmp_path / 'whole')   # every bit
        assert set(os.listdir(models)) == {'LATEST', version}


def test_resume_refuses_other_flags_and_nothing_to_resume(blobs, tmp_path):
    models = tmp_path / 'm'
    out = _train(blobs, models, '--resume')
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        'beamml kmeans: error: --resume: ') and 'no unfinished training' in out.stderr
    killed = _train(blobs, models, '--block_size', '2', env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9
    out = _train(blobs, models, '--block_size', '2', '--tol', '0.5', '--resume')
    assert out.returncode == 2
    assert "--tol was 0.0001, now 0.5" in out.stderr.strip().splitlines()[-1]
    out = _train(blobs, models, '--block_size', '2', '--resume', 'no-such-version')
    assert out.returncode == 2 and 'no-such-version' in out.stderr.strip().splitlines()[-1]


def test_resume_refuses_an_input_that_changed(blobs, tmp_path):
    """(Without --random_state: the resumed run takes the seed the first one drew.)"""
    data = tmp_path / 'data.csv'
    shutil.copy(blobs['path'], data)
    models = tmp_path / 'ok'
    killed = kmeans_process(data, models, '--k', '4', '--block_size', '2',
                            env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9
    out = kmeans_process(data, models, '--k', '4', '--block_size', '2', '--resume')
    assert out.returncode == 0, out.stderr[-2000:]
    models = tmp_path / 'm'
    killed = kmeans_process(data, models, '--k', '4', '--block_size', '2',
                            env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9
    with open(data, 'a') as f:
        f.write('99999,1.0,2.0\n')
    out = kmeans_process(data, models, '--k', '4', '--block_size', '2', '--resume')
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert 'the input changed since the run started' in last and 'bytes, now' in last
    assert str(data) in last


def test_resume_of_a_run_killed_in_its_first_block_removes_it(blobs, tmp_path):
    models = tmp_path / 'm'
    killed = _train(blobs, models, '--block_size', '2', env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9
    (version,) = os.listdir(models / '_runs')
    os.remove(models / '_runs' / version / 'block-0001.json')   # as if killed during block 1
    out = _train(blobs, models, '--block_size', '2', '--resume')
    assert out.returncode == 2
    assert 'its first block never finished' in out.stderr and 'was removed' in out.stderr
    assert not os.path.exists(models / '_runs')


def test_no_block_runs_after_convergence(tmp_path, caplog):
    """The default --max_iter 300 on tiny data: one pipeline run when it converges in
    the first block, so about the time of a norms run (it was 300 unrolled stages)."""
    (tmp_path / 'p.csv').write_text('id,a,b\n' + ''.join(
        f'{i},{i % 3 * 10 + i / 100},{i % 3}\n' for i in range(100)))
    import logging
    log = logging.getLogger('beamml')
    log.addHandler(caplog.handler)   # beamml's logger does not propagate (its own format)
    try:
        with caplog.at_level(logging.INFO, logger='beamml'):
            model = kmeans.run(['--input', str(tmp_path / 'p.csv'), '--k', '3',
                                '--random_state', '0', '--model', str(tmp_path / 'm')])
    finally:
        log.removeHandler(caplog.handler)
    err = caplog.text
    assert model.n_iter <= kmeans.BLOCK_SIZE and model.stop_reason == 'converged_labels'
    assert 'block 1 done' in err and 'block 2' not in err


def test_fewer_distinct_points_than_k_with_given_centres_trains_with_a_warning(tmp_path, capsys):
    """As scikit-learn: given initial centres, k above the number of distinct points is a
    warning (and duplicate or empty centres), not an error; with k-means++ it still is."""
    import warnings

    from sklearn.cluster import KMeans as SkKMeans
    from beamml.transforms.core.errors import BeammlError
    X = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 4.0], [4.0, 4.0], [4.0, 4.0]])
    (tmp_path / 'p.csv').write_text('id,a,b\n' + ''.join(
        f'{i},{a},{b}\n' for i, (a, b) in enumerate(X)))
    C0 = np.array([[0.0, 0.5], [4.0, 3.0], [9.0, 9.0]])
    np.save(tmp_path / 'c0.npy', C0)
    model = kmeans.run(['--input', str(tmp_path / 'p.csv'), '--init', str(tmp_path / 'c0.npy'),
                        '--empty_cluster', 'farthest', '--model', str(tmp_path / 'm')])
    err = capsys.readouterr().err
    assert 'warning: the input has only 2 distinct point(s) for k=3' in err
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        sk = SkKMeans(3, init=C0, n_init=1, algorithm='lloyd').fit(X)
    # both fit every distinct point exactly (scikit-learn's spare centre goes elsewhere)
    assert model.inertia == sk.inertia_ == 0.0
    assert sorted(map(tuple, model.centers.tolist())) == [(0.0, 0.0), (4.0, 4.0), (4.0, 4.0)]
    with pytest.raises(BeammlError, match='k=3 is greater than the number of distinct points'):
        kmeans.run(['--input', str(tmp_path / 'p.csv'), '--k', '3',
                    '--model', str(tmp_path / 'm2')])


def test_dtype_float32_is_an_opt_in_close_to_float64(blobs, tmp_path):
    runs = {dt: kmeans.run(['--input', blobs['path'], '--k', '4', '--random_state', '1',
                            '--model', str(tmp_path / dt), '--dtype', dt])
            for dt in ('float64', 'float32')}
    a, b = runs['float64'], runs['float32']
    assert b.config['dtype'] == 'float32' and a.config['dtype'] == 'float64'
    assert a.n_iter == b.n_iter and a.cluster_sizes == b.cluster_sizes
    np.testing.assert_allclose(b.centers, a.centers, rtol=1e-6)
    assert b.inertia == pytest.approx(a.inertia, rel=1e-6)
    # the points really were kept in float32: the centres are close, not equal
    assert not np.array_equal(b.centers, a.centers)


def test_identical_input_files_count_twice_in_every_block(blobs, tmp_path):
    """Two identical files make identical batches, which share one cache file (named by
    content): the manifest lists it twice, so later blocks see every point twice too."""
    for name in ('a.csv', 'b.csv'):
        shutil.copy(blobs['path'], tmp_path / name)
    X = np.concatenate([blobs['X'], blobs['X']])
    model = kmeans.run(['--input', str(tmp_path / '*.csv'), '--k', '4', '--random_state', '1',
                        '--model', str(tmp_path / 'm'), '--block_size', '1'])
    assert model.n_iter > 2 and sum(model.cluster_sizes) == len(X)
    from sklearn.cluster import KMeans as SkKMeans
    c0 = np.array(json.load(open(os.path.join(
        tmp_path / 'm', model.version, 'training.json')))['initial_centers'])
    sk = SkKMeans(4, init=c0, n_init=1, algorithm='lloyd', max_iter=300).fit(X)
    assert sk.n_iter_ == model.n_iter
    np.testing.assert_allclose(model.centers, sk.cluster_centers_, rtol=1e-9)


def test_output_writes_the_training_labels_as_scikit_learn_labels_(blobs, tmp_path, capsys):
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans as SkKMeans
    model = kmeans.run(['--input', blobs['path'], '--k', '4', '--random_state', '1',
                        '--model', str(tmp_path / 'm'), '--output', str(tmp_path / 'lab/l'),
                        '--block_size', '3'])
    assert 'labels: ' in capsys.readouterr().out
    (path,) = (tmp_path / 'lab').glob('l-*.parquet')
    t = pq.read_table(str(path)).sort_by('id')
    assert t.column_names == ['id', 'cluster', 'distance', 'model_version']
    c0 = np.array(json.load(open(os.path.join(
        tmp_path / 'm', model.version, 'training.json')))['initial_centers'])
    sk = SkKMeans(4, init=c0, n_init=1, algorithm='lloyd', max_iter=300).fit(blobs['X'])
    assert t.column('cluster').to_pylist() == sk.labels_.tolist()
    X = blobs['X']
    want = np.linalg.norm(X - model.centers[sk.labels_], axis=1)
    np.testing.assert_allclose(t.column('distance').to_numpy(), want, rtol=1e-9, atol=1e-12)
    assert set(t.column('model_version').to_pylist()) == {model.version}
    assert model.cluster_sizes == np.bincount(sk.labels_).tolist()
