"""K-means with n_init: several seedings trained side by side in the same passes."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs

from kmeans_cli import kmeans_process, model_doc, run_kmeans
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.kmeans import KMeans, lloyd_pass, lloyd_pass_runs, row_hashes
from beamml.transforms.model import CentroidModel, list_versions
from faults import kill_at


def sk_fit(X, C0, w=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return SKKMeans(len(C0), init=C0, n_init=1, algorithm='lloyd', **kw).fit(
            X, sample_weight=w)


def batches(X, size=700):
    return [X[i:i + size] for i in range(0, len(X), size)]


@pytest.fixture(scope='module')
def data():
    # overlapping blobs: seedings end in different local minima
    X, _ = make_blobs(3000, centers=6, n_features=3, cluster_std=2.5, random_state=7)
    return X


# ----------------------------------------------------------------------------- the kernel

@pytest.mark.parametrize('kw', [{}, {'exact_distances': True}, {'weighted': True}],
                         ids=['e-step', 'final', 'weighted'])
def test_runs_side_by_side_give_each_run_what_it_gives_alone(kw):
    """One product against 4 runs' centres: each run's labels, sums, counts, inertia and
    signature are those of lloyd_pass on that run alone, bit for bit (float64)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40_000, 5))   # several tasks and chunks, a partial last chunk
    runs = [rng.normal(size=(7, 5)) for _ in range(4)]
    w = rng.random(len(X)) if kw.pop('weighted', False) else None
    hashes = row_hashes(X)
    together = lloyd_pass_runs(X, runs, hashes=hashes, return_labels=True,
                               sample_weight=w, **kw)
    assert len(together) == 4
    for C, got in zip(runs, together):
        alone = lloyd_pass(X, C, hashes=hashes, return_labels=True, sample_weight=w, **kw)
        np.testing.assert_array_equal(got.labels, alone.labels)
        np.testing.assert_array_equal(got.sums, alone.sums)
        np.testing.assert_array_equal(got.counts, alone.counts)
        assert got.inertia == alone.inertia and got.signature == alone.signature
        if w is not None:
            np.testing.assert_array_equal(got.weights, alone.weights)
    # and against a brute-force numpy oracle
    D = ((X[:, None, :] - runs[2][None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(together[2].labels, D.argmin(axis=1))


@pytest.mark.parametrize('empty_cluster', ['keep', 'farthest'])
def test_a_step_of_runs_is_each_runs_own_step(empty_cluster):
    """lloyd_step + next_state on KMeansRuns (no Beam): each run moves as it does alone,
    an empty cluster (a centre far from every point) included; a stopped run stays."""
    from beamml.transforms.kmeans import CentroidCombineFn, KMeansRuns, RunsCombineFn
    from beamml.transforms.kmeans.lloyd import KMeansState, lloyd_step, next_state
    rng = np.random.default_rng(4)
    X = rng.normal(size=(900, 2))
    parts = [(X[i:i + 300], row_hashes(X[i:i + 300])) for i in range(0, 900, 300)]

    def state(C, **kw):
        return KMeansState(centers=C, mean=np.zeros(2), tol=0.0, n_samples=900,
                           initial_centers=C.copy(), **kw)
    runs = [state(X[:3].copy()), state(np.vstack([X[3:5], [[50.0, 50.0]]])),
            state(X[5:8].copy(), n_iter=4, stopped=True, stop_reason='converged_tol')]
    farthest = empty_cluster == 'farthest'
    inner = CentroidCombineFn(3, track_farthest=farthest)
    fn = RunsCombineFn(inner, 3)
    together = KMeansRuns(runs=runs, seeds=[0, 1, 2])
    acc = fn.create_accumulator()
    for part in parts:
        acc = fn.add_input(acc, lloyd_step(part, together, exact_distances=farthest))
    after = next_state(together, [acc], combine_fn=fn, max_iter=10, empty_cluster=empty_cluster)
    assert after.runs[2] is runs[2]
    for r in (0, 1):
        one = inner.create_accumulator()
        for part in parts:
            one = inner.add_input(one, lloyd_step(part, runs[r], exact_distances=farthest))
        alone = next_state(runs[r], [one], combine_fn=inner, max_iter=10,
                           empty_cluster=empty_cluster)
        np.testing.assert_array_equal(after.runs[r].centers, alone.centers)
        assert after.runs[r].n_relocated == alone.n_relocated
        assert after.runs[r].inertia_history == alone.inertia_history
    assert after.runs[1].n_relocated == (1 if farthest else 0)
    assert (after.runs[1].centers[2] == [50.0, 50.0]).all() != farthest


def test_runs_of_another_shape_are_refused():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match='every run needs'):
        lloyd_pass_runs(X, [np.zeros((2, 2)), np.zeros((3, 2))])


# ----------------------------------------------------------------------------- the transform

def test_n_init_keeps_the_lowest_inertia_and_each_run_equals_scikit_learn(tmp_path, data):
    X = data
    res = run_kmeans(tmp_path, {
        'four': (batches(X), dict(n_clusters=6, n_init=4, random_state=3,
                                  init_sample_size=500, max_iter=60)),
        'one': (batches(X), dict(n_clusters=6, random_state=3, init_sample_size=500,
                                 max_iter=60)),
    })
    four, one = res['four'], res['one']
    assert four.n_init == 4 and len(four.inits) == 4 and one.n_init == 1 and one.inits is None
    assert [run['seed'] for run in four.inits] == [3, 4, 5, 6]
    starts = [np.array(run['initial_centers']) for run in four.inits]
    assert len({s.tobytes() for s in starts}) == 4, 'the seedings are not distinct'
    # each run is scikit-learn's training from that run's initial centres
    for run, C0 in zip(four.inits, starts):
        sk = sk_fit(X, C0, max_iter=60)
        assert run['inertia'] == pytest.approx(sk.inertia_, rel=1e-10)
        assert run['n_iter'] == sk.n_iter_
    inertias = [run['inertia'] for run in four.inits]
    assert len(set(np.round(inertias, 6))) > 1, 'every run found the same minimum'
    assert four.best_init == int(np.argmin(inertias)) and four.inertia == min(inertias)
    sk = sk_fit(X, starts[four.best_init], max_iter=60)
    np.testing.assert_allclose(four.centers, sk.cluster_centers_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(four.initial_centers, starts[four.best_init])
    # run 0 is the n_init=1 training, bit for bit
    np.testing.assert_array_equal(starts[0], one.initial_centers)
    assert inertias[0] == one.inertia and four.inits[0]['n_iter'] == one.n_iter


def test_n_init_with_weights_farthest_and_cosine(tmp_path, data):
    """Each run of n_init=3 is the n_init=1 training from its initial centres (weighted:
    scikit-learn's fit(X, sample_weight); 'farthest' and cosine: beamml's own one run)."""
    X = data[:1200]
    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    from beamml.transforms.io import points_batch
    import pyarrow as pa
    wb = [points_batch(pa.array(np.arange(i, min(i + 500, len(X)))), X[i:i + 500],
                       weight=pa.array(w[i:i + 500])) for i in range(0, len(X), 500)]
    common = dict(n_clusters=5, n_init=3, random_state=2, init_sample_size=300, max_iter=25)
    res = run_kmeans(tmp_path, {
        'weighted': (wb, common),
        'farthest': (batches(X), dict(common, empty_cluster='farthest')),
        'cosine': (batches(X + 1.0), dict(common, distance='cosine')),
    })
    for run in res['weighted'].inits:
        sk = sk_fit(X, np.array(run['initial_centers']), w, max_iter=25)
        assert run['inertia'] == pytest.approx(sk.inertia_, rel=1e-10)
        assert run['n_iter'] == sk.n_iter_
    alone = {}
    for name, data_, kw in (('farthest', batches(X), dict(empty_cluster='farthest')),
                            ('cosine', batches(X + 1.0), dict(distance='cosine'))):
        for r, run in enumerate(res[name].inits):
            alone[f'{name}{r}'] = (data_, dict(kw, n_clusters=5, max_iter=25,
                                               init=np.array(run['initial_centers'])))
    alone = run_kmeans(tmp_path, alone)
    for name in ('farthest', 'cosine'):
        for r, run in enumerate(res[name].inits):
            one = alone[f'{name}{r}']
            assert run['inertia'] == pytest.approx(one.inertia, rel=1e-12), (name, r)
            assert run['n_iter'] == one.n_iter, (name, r)
        best = alone[f'{name}{res[name].best_init}']
        np.testing.assert_allclose(res[name].centers, best.centers, rtol=1e-12, atol=1e-12)


def test_n_init_auto_is_scikit_learns_and_given_centres_are_one_run():
    assert KMeans(3, init='random').n_init == 10
    assert KMeans(3).n_init == 1 and KMeans(3, init='k-means||').n_init == 1
    assert KMeans(2, init=np.zeros((2, 2))).n_init == 1
    with pytest.raises(BeammlError, match='n_init=3 needs a seeding method'):
        KMeans(2, init=np.zeros((2, 2)), n_init=3)
    for bad in (0, -1, 1.5, 'all'):
        with pytest.raises(BeammlError, match="n_init must be 'auto' or an integer >= 1"):
            KMeans(2, n_init=bad)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope='module')
def blobs_csv(tmp_path_factory, data):
    path = tmp_path_factory.mktemp('ninit') / 'blobs.csv'
    path.write_text('id,a,b,c\n' + ''.join(
        f'{i},{a!r},{b!r},{c!r}\n' for i, (a, b, c) in enumerate(data.tolist())))
    return str(path)


def test_cli_records_every_run_and_resumes_bit_for_bit(tmp_path, blobs_csv):
    flags = ('--k', '6', '--n_init', '3', '--random_state', '5', '--block_size', '2',
             '--init_sample_size', '500')
    whole = kmeans_process(blobs_csv, tmp_path / 'whole', *flags)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert 'runs going)' in whole.stderr
    line = next(ln for ln in whole.stdout.splitlines() if ln.startswith('n_init=3: kept run'))
    doc = model_doc(tmp_path / 'whole')
    assert len(doc['init_inertias']) == 3 and doc['inertia'] == min(doc['init_inertias'])
    assert doc['config']['n_init'] == 3
    assert line.split()[-3:] == [f'{v:.10g}' for v in doc['init_inertias']]
    model = CentroidModel.load(str(tmp_path / 'whole'))
    assert model.init_inertias == doc['init_inertias']
    (version,) = list_versions(str(tmp_path / 'whole'))
    training = json.load(open(os.path.join(tmp_path / 'whole', version, 'training.json')))
    assert [run['seed'] for run in training['inits']] == [5, 6, 7]
    # killed after block 1, resumed: the same model bit for bit
    models = tmp_path / 'killed'
    killed = kmeans_process(blobs_csv, models, *flags,
                            env=kill_at('kmeans.after_first_block'))
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = kmeans_process(blobs_csv, models, *flags, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert model_doc(models)['centers'] == doc['centers']
    assert model_doc(models)['init_inertias'] == doc['init_inertias']
    # another --n_init cannot resume it
    killed = kmeans_process(blobs_csv, tmp_path / 'k2', *flags,
                            env=kill_at('kmeans.after_first_block'))
    other = kmeans_process(blobs_csv, tmp_path / 'k2', *flags[:3], '2', *flags[4:],
                           '--resume')
    assert other.returncode == 2 and '--n_init was 3, now 2' in other.stderr


def test_cli_refuses_a_bad_n_init(tmp_path, blobs_csv):
    out = kmeans_process(blobs_csv, tmp_path / 'm', '--k', '3', '--n_init', '0')
    assert out.returncode == 2
    assert "--n_init: must be 'auto' or an integer >= 1, got '0'" in out.stderr
