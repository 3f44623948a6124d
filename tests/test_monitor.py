"""`beamml monitor`: statistics kernels, PSI / JS against numpy and scipy, baselines, drift
alarms through the CLI (exit 0 / 3), the retraining decision and --retrain."""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import jensenshannon

from beamml.pipelines import kmeans, monitor
from beamml.pipelines._platform.main import main_wrapper
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import CentroidModel, latest_version, list_versions
from beamml.transforms.monitoring import (MonitorConfig, bin_counts, histogram_quantiles,
                                          js_divergence, load_monitor_config, psi)
from beamml.transforms.monitoring.baseline import fine_edges
from beamml.transforms.monitoring.stats import finish_moments, merge_moments, moments_of

CENTERS = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])


def blobs(n: int, seed: int, weights=(1 / 3, 1 / 3, 1 / 3), std: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=weights)
    return CENTERS[labels] + rng.normal(scale=std, size=(n, 3))


def write_points(path, X):
    table = pa.table({'id': np.arange(len(X)),
                      'features': pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3)})
    pq.write_table(table, path)
    return str(path)


def write_scalar(path, X):
    pq.write_table(pa.table({'id': np.arange(len(X)), 'height': X[:, 0], 'weight': X[:, 1],
                             'age': X[:, 2]}), path)
    return str(path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Training data, a model trained by beamml kmeans (with its baseline.json) and copies."""
    d = tmp_path_factory.mktemp('monitor')
    X = blobs(3000, 1)
    train = write_points(d / 'train.parquet', X)
    model_dir = str(d / 'models')
    kmeans.run(['--input', train, '--k', '3', '--random_state', '0', '--model', model_dir])
    shifted = X.copy()
    shifted[:, [0, 2]] += 1.5 * X[:, [0, 2]].std(axis=0)
    return {'dir': d, 'X': X, 'train': train, 'models': model_dir,
            'shifted': write_points(d / 'shifted.parquet', shifted),
            'fresh': write_points(d / 'fresh.parquet', blobs(3000, 2)),
            'mixture': write_points(d / 'mixture.parquet',
                                    blobs(3000, 3, weights=(0.8, 0.1, 0.1), std=1.6))}


def cli(argv, capsys):
    code = main_wrapper(monitor.run, argv, prog='beamml monitor')
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err):
    """stderr without the progress log lines (``HH:MM:SS beamml: ...``)."""
    return [line for line in err.splitlines() if line and not re.match(r'\d\d:\d\d:\d\d ', line)]


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def alarms(out):
    with open(os.path.join(out, 'alarms.jsonl')) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- kernels

def test_moments_merged_equal_numpy_with_nan_and_inf():
    rng = np.random.default_rng(0)
    V = rng.normal(loc=[1e6, 0.0, -3.0], scale=[1.0, 1e-3, 5.0], size=(1000, 3))
    V[[3, 50], 0] = np.nan
    V[7, 1] = np.inf
    V[:, 2][V[:, 2] > 8] = -np.inf
    acc = moments_of(V[:0])
    for lo in range(0, 1000, 137):
        acc = merge_moments(acc, moments_of(V[lo:lo + 137]))
    out = finish_moments(acc)
    for j in range(3):
        x = V[:, j][np.isfinite(V[:, j])]
        assert out['count'][j] == len(x)
        assert out['nan'][j] == np.isnan(V[:, j]).sum()
        assert out['inf'][j] == np.isinf(V[:, j]).sum()
        np.testing.assert_allclose(out['mean'][j], x.mean(), rtol=1e-13)
        np.testing.assert_allclose(out['std'][j], x.std(), rtol=1e-10)
        assert out['min'][j] == x.min() and out['max'][j] == x.max()


def test_bin_counts_equal_numpy_histogram_plus_overflow_bins():
    rng = np.random.default_rng(1)
    V = rng.normal(size=(5000, 2)) * 2
    V[0, 0] = np.nan
    edges = fine_edges(np.array([-3.0, -1.0]), np.array([3.0, 1.0]), 40)
    V[1, 0], V[2, 1] = 3.0, -1.0   # on the closed last edge and on the first edge
    counts = bin_counts(V, edges)
    for j in range(2):
        x = V[:, j][np.isfinite(V[:, j])]
        np.testing.assert_array_equal(counts[j, 1:-1], np.histogram(x, edges[j])[0])
        assert counts[j, 0] == (x < edges[j, 0]).sum()
        assert counts[j, -1] == (x > edges[j, -1]).sum()
        assert counts[j].sum() == len(x)


def test_bin_counts_on_equal_width_edges_equal_a_binary_search_at_the_edges():
    """The arithmetic bin index (equal-width edges) against np.searchsorted, on values at,
    just above and just below every edge, far outside, at every scale."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        lo, hi = sorted(rng.normal(size=2) * 10.0 ** rng.integers(-5, 8))
        e = np.linspace(lo, hi, 201)
        x = np.concatenate([e, np.nextafter(e, np.inf), np.nextafter(e, -np.inf),
                            rng.uniform(lo - (hi - lo), hi + (hi - lo), 2000)])
        ref = np.searchsorted(e, x, side='right')
        ref[x == e[-1]] = 200
        np.testing.assert_array_equal(bin_counts(x[:, None], e[None])[0],
                                      np.bincount(ref, minlength=202))
    uneven = np.array([[0.0, 1.0, 5.0, 6.0]])   # not equal-width: the binary search
    np.testing.assert_array_equal(bin_counts(np.array([[-1, 0, 0.5, 1, 5.5, 6, 7.0]]).T,
                                             uneven)[0], [1, 2, 1, 2, 1])


def test_bin_counts_of_many_columns_at_once_equal_a_binary_search_per_column():
    """All columns binned together, in chunks of rows (more rows than one chunk), with
    NaN and +-inf in some columns, values on the edges, and columns of every scale."""
    from beamml.transforms.monitoring import stats
    rng = np.random.default_rng(11)
    n, c = stats._BIN_ROWS * 2 + 123, 6
    scale = 10.0 ** rng.integers(-6, 9, size=c)
    V = rng.normal(size=(n, c)) * scale
    lo, hi = np.quantile(V, 0.05, axis=0), np.quantile(V, 0.95, axis=0)
    lo[2] = hi[2] = V[7, 2]   # a constant column's edges: [v - 0.5, v + 0.5]
    edges = fine_edges(lo, hi, 50)
    for j in range(c):   # values on, and one ulp beside, every edge of every column
        V[:51, j] = edges[j]
        V[51:102, j] = np.nextafter(edges[j], -np.inf)
    V[rng.random((n, c)) < 0.01] = np.nan
    V[rng.random((n, c)) < 0.005] = np.inf
    V[rng.random((n, c)) < 0.005] = -np.inf
    counts = bin_counts(V, edges)
    for j in range(c):
        x = V[:, j][np.isfinite(V[:, j])]
        ref = np.searchsorted(edges[j], x, side='right')
        ref[x == edges[j, -1]] = 50
        np.testing.assert_array_equal(counts[j], np.bincount(ref, minlength=52))
    assert bin_counts(V[:0], edges).sum() == 0


def test_column_minima_and_maxima_equal_numpys_for_every_row_count():
    from beamml.transforms.monitoring.stats import _column_extreme
    rng = np.random.default_rng(5)
    for n in (1, 2, 63, 64, 65, 1000, 4097):
        V = rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-3, 3, size=3)
        V[rng.random((n, 3)) < 0.1] = np.inf
        for ufunc, ref in ((np.minimum, V.min(axis=0)), (np.maximum, V.max(axis=0))):
            np.testing.assert_array_equal(_column_extreme(ufunc, V), ref)
            np.testing.assert_array_equal(_column_extreme(ufunc, V[::2]), ref if n == 1 else
                                          ufunc.reduce(V[::2], axis=0))


def test_histogram_quantiles_within_two_fine_bins():
    rng = np.random.default_rng(2)
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    for x in (rng.normal(size=20000), rng.exponential(size=20000), rng.uniform(size=7)):
        edges = fine_edges(np.array([x.min()]), np.array([x.max()]))
        counts = bin_counts(x[:, None], edges)[0]
        got = np.array(histogram_quantiles(counts, edges[0], x.min(), x.max(), qs))
        width = edges[0, 1] - edges[0, 0]
        if len(x) > 1000:
            np.testing.assert_allclose(got, np.quantile(x, qs), atol=2 * width + 1e-12)
        # any size: between the order statistics around rank q * N, give or take a bin
        s = np.sort(x)
        r = np.array(qs) * len(x)
        lo = s[np.clip(np.floor(r).astype(int) - 1, 0, len(x) - 1)]
        hi = s[np.clip(np.ceil(r).astype(int), 0, len(x) - 1)]
        assert np.all(got >= lo - width) and np.all(got <= hi + width), (got, lo, hi)
    # later data beyond the baseline's range: within the overflow bin, up to the max
    y = rng.normal(size=5000) + 10
    edges = fine_edges(np.array([-3.0]), np.array([3.0]))
    got = histogram_quantiles(bin_counts(y[:, None], edges)[0], edges[0], y.min(), y.max())
    assert all(3.0 <= g <= y.max() for g in got)


def reference_psi(b, a, eps):
    b = np.asarray(b, float) / np.sum(b) + eps
    a = np.asarray(a, float) / np.sum(a) + eps
    return np.sum((a - b) * np.log(a / b))


@pytest.mark.parametrize('seed', range(5))
def test_psi_and_js_against_numpy_and_scipy(seed):
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 100, 12)
    a = rng.integers(0, 100, 12)
    b[[0, -1]] = 0   # empty overflow bins in the baseline
    a[3] = 0
    for eps in (1e-6, 1e-3):
        assert psi(b, a, eps) == pytest.approx(reference_psi(b, a, eps), rel=1e-12)
        p, q = b / b.sum() + eps, a / a.sum() + eps
        assert js_divergence(b, a, eps) == pytest.approx(
            jensenshannon(p, q, base=2) ** 2, rel=1e-9, abs=1e-15)
    assert psi(b, b) == pytest.approx(0.0, abs=1e-15)
    assert js_divergence(b, b) == pytest.approx(0.0, abs=1e-15)
    disjoint = js_divergence([1, 0], [0, 1], 1e-12)
    assert 0.999 < disjoint <= 1.0


# ----------------------------------------------------------------------------- baselines

def test_kmeans_writes_the_baseline_beside_the_model(trained):
    model = CentroidModel.load(trained['models'])
    version_dir = os.path.dirname(model.path)
    base = read(version_dir, 'baseline.json')
    X = trained['X']
    assert base['rows'] == 3000 and base['names'] == ['features_0', 'features_1', 'features_2']
    assert base['clusters']['counts'] == model.cluster_sizes
    for j, name in enumerate(base['names']):
        f = base['features'][name]
        assert f['count'] == 3000 and f['nan'] == 0
        assert f['mean'] == pytest.approx(X[:, j].mean(), rel=1e-12)
        assert f['std'] == pytest.approx(X[:, j].std(), rel=1e-12)
        assert (f['min'], f['max']) == (X[:, j].min(), X[:, j].max())
        edges = np.array(f['histogram']['edges'])
        assert f['histogram']['counts'][1:-1] == np.histogram(X[:, j], edges)[0].tolist()
        width = edges[1] - edges[0]
        assert f['quantiles']['p50'] == pytest.approx(np.median(X[:, j]), abs=2 * width)
    norms = np.linalg.norm(X, axis=1)
    assert base['l2_norm']['mean'] == pytest.approx(norms.mean(), rel=1e-12)
    _, dist = model.nearest(X)
    assert base['distance']['mean'] == pytest.approx(dist.mean(), rel=1e-12)
    # the far threshold: a fine edge with at most 1% at or beyond it, the share exact
    assert base['far_share'] == pytest.approx((dist >= base['far_threshold']).mean(), abs=0)
    assert 0.0 < base['far_share'] <= 0.01
    width = np.diff(base['distance']['histogram']['edges'][:2])[0]
    assert base['far_threshold'] == pytest.approx(np.quantile(dist, 0.99), abs=2 * width)


def test_make_baseline_from_any_data_set(trained, tmp_path, capsys):
    out = str(tmp_path / 'base')
    code, stdout, err = cli(['--make_baseline', '--input', trained['train'], '--output', out],
                            capsys)
    assert code == 0, err
    base = read(out, 'baseline.json')
    assert 'distance' not in base and 'clusters' not in base
    assert os.path.exists(os.path.join(out, '_SUCCESS'))
    assert f'baseline: {out}/baseline.json' in stdout
    # the model's baseline agrees on the feature statistics
    model_base = read(os.path.dirname(CentroidModel.load(trained['models']).path),
                      'baseline.json')
    for name in base['names']:
        assert base['features'][name]['histogram'] == model_base['features'][name]['histogram']


# ----------------------------------------------------------------------------- alarms

def test_unshifted_copy_fires_no_alarm(trained, tmp_path, capsys):
    for data in ('train', 'fresh'):   # the training data again, a new sample of it
        out = str(tmp_path / data)
        code, stdout, err = cli(['--input', trained[data], '--model', trained['models'],
                                 '--output', out], capsys)
        assert code == 0, err
        assert 'monitor: no alarm' in stdout
        assert alarms(out) == []
        drift = read(out, 'drift.json')
        assert all(not m['psi']['alarm'] for m in drift['features'].values())
        assert read(out, 'decision.json')['retrain'] is False
    stats = read(str(tmp_path / 'train'), 'statistics.json')
    X = trained['X']
    assert stats['rows'] == 3000
    assert stats['features']['features_1']['mean'] == pytest.approx(X[:, 1].mean(), rel=1e-12)
    drift = read(str(tmp_path / 'train'), 'drift.json')
    assert drift['features']['features_0']['psi']['value'] == pytest.approx(0.0, abs=1e-12)
    assert drift['model']['mean_distance_ratio']['value'] == pytest.approx(1.0, rel=1e-12)


def test_shifted_copy_fires_psi_and_js_on_exactly_the_shifted_features(trained, tmp_path,
                                                                       capsys):
    out = str(tmp_path / 'shifted')
    code, stdout, err = cli(['--input', trained['shifted'], '--model', trained['models'],
                             '--output', out], capsys)
    assert code == 3, err
    (line,) = error_lines(err)
    assert 'alarm(s) fired (exit code 3)' in line
    found = alarms(out)
    for metric in ('psi', 'js'):
        features = {a['feature'] for a in found if a['metric'] == metric}
        assert features - {'l2_norm'} == {'features_0', 'features_2'}
    for a in found:
        assert set(a) == {'metric', 'feature', 'value', 'threshold', 'window_start',
                          'window_end'}
        assert a['value'] > a['threshold'] and a['window_start'] is None
    line = [x for x in stdout.splitlines() if x.startswith('monitor: ')][0]
    assert line.startswith(f'monitor: {len(found)} alarm(s): psi features_0=')
    # the drift values are those of the reference on the stored histograms
    report = read(out, 'report_data.json')
    f0 = [f for f in report['features'] if f['name'] == 'features_0'][0]
    assert f0['psi']['value'] == pytest.approx(
        reference_psi(f0['baseline_drift_counts'], f0['current_drift_counts'], 1e-6), rel=1e-12)
    p = np.array(f0['baseline_drift_counts']) / 3000 + 1e-6
    q = np.array(f0['current_drift_counts']) / 3000 + 1e-6
    assert f0['js']['value'] == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)
    assert sum(f0['current_counts']) == 3000 and len(f0['edges']) == 201


def test_another_mixture_fires_cluster_share_and_far_point_alarms(trained, tmp_path, capsys):
    out = str(tmp_path / 'mixture')
    code, stdout, err = cli(['--input', trained['mixture'], '--model', trained['models'],
                             '--output', out], capsys)
    assert code == 3, err
    metrics = {a['metric'] for a in alarms(out)}
    assert {'cluster_share_linf', 'far_share_ratio'} <= metrics
    drift = read(out, 'drift.json')
    base = read(os.path.dirname(CentroidModel.load(trained['models']).path), 'baseline.json')
    stats = read(out, 'statistics.json')
    linf = np.max(np.abs(np.array(stats['clusters']['shares']) -
                         np.array(base['clusters']['shares'])))
    assert drift['model']['cluster_share_linf']['value'] == pytest.approx(linf)
    assert drift['model']['far_share_ratio']['value'] == pytest.approx(
        stats['far_share'] / base['far_share'])
    decision = read(out, 'decision.json')
    assert decision['retrain'] and decision['fired'] == ['far_share_doubled']


def test_scalar_columns_are_named_as_in_the_input(tmp_path, capsys):
    X = blobs(2000, 5)
    train = write_scalar(tmp_path / 'train.parquet', X)
    Y = X.copy()
    Y[:, 1] += 2 * X[:, 1].std()
    now = write_scalar(tmp_path / 'now.parquet', Y)
    base = str(tmp_path / 'base')
    assert cli(['--make_baseline', '--input', train, '--output', base], capsys)[0] == 0
    out = str(tmp_path / 'out')
    code, stdout, err = cli(['--input', now, '--baseline', base, '--output', out], capsys)
    assert code == 3, err
    assert {a['feature'] for a in alarms(out) if a['metric'] == 'psi'} - {'l2_norm'} == {'weight'}
    assert 'psi weight=' in stdout
    # thresholds per feature from the config
    cfg = tmp_path / 'monitor.yaml'
    cfg.write_text('features:\n  weight: {psi: 100, js: 1}\n  l2_norm: {psi: 100, js: 1}\n')
    code, stdout, _ = cli(['--input', now, '--baseline', base, '--output', str(tmp_path / 'o2'),
                           '--config', str(cfg)], capsys)
    assert code == 0 and 'monitor: no alarm' in stdout
    wrong = write_points(tmp_path / 'list.parquet', X)
    code, _, err = cli(['--input', wrong, '--baseline', base, '--output', str(tmp_path / 'o3')],
                       capsys)
    assert code == 2 and 'has the features features_0, features_1, features_2' in err


# ----------------------------------------------------------------------------- rules

def test_consecutive_rule_over_the_dated_runs(trained, tmp_path, capsys):
    cfg = tmp_path / 'monitor.yaml'
    cfg.write_text(f"""
rules:
  - {{name: psi_3_runs, metric: psi, threshold: 0.2, consecutive: 3}}
history: '{tmp_path}/runs/*/'
""")
    days = [('2026-11-20', 'shifted'), ('2026-11-21', 'shifted'), ('2026-11-22', 'shifted'),
            ('2026-11-23', 'train'), ('2026-11-24', 'shifted')]
    decisions = {}
    for day, data in days:
        out = f'{tmp_path}/runs/{day}/'
        code, _, err = cli(['--input', trained[data], '--model', trained['models'],
                            '--output', out, '--config', str(cfg)], capsys)
        assert code == (3 if data == 'shifted' else 0), err
        decisions[day] = read(out, 'decision.json')
    fired = {day: d['retrain'] for day, d in decisions.items()}
    assert fired == {'2026-11-20': False, '2026-11-21': False, '2026-11-22': True,
                     '2026-11-23': False, '2026-11-24': False}
    rule = decisions['2026-11-22']['rules'][0]
    assert rule['fired'] and {e['feature'] for e in rule['evidence']} >= {'features_0',
                                                                           'features_2'}
    ev = [e for e in rule['evidence'] if e['feature'] == 'features_0'][0]
    assert len(ev['values']) == 3 and all(v > 0.2 for v in ev['values'])
    assert ev['windows'][-1] == f'{tmp_path}/runs/2026-11-22/'
    series = read(f'{tmp_path}/runs/2026-11-22/', 'report_data.json')['windows']
    assert [w['run'] for w in series] == [f'{tmp_path}/runs/{d}/' for d, _ in days[:3]]
    assert series[-1]['psi']['features_0'] == ev['values'][-1]


def test_retrain_writes_a_candidate_version_without_moving_latest(trained, tmp_path, capsys):
    import shutil
    models = str(tmp_path / 'models')
    shutil.copytree(trained['models'], models)
    before = latest_version(models)
    cfg = tmp_path / 'monitor.yaml'
    cfg.write_text(f"retrain:\n  input: '{trained['dir']}/{{date}}.parquet'\n  max_iter: 20\n")
    os.symlink(trained['shifted'], trained['dir'] / '2026-11-22.parquet')
    out = str(tmp_path / 'out')
    code, stdout, err = cli(['--input', trained['shifted'], '--model', models, '--output', out,
                             '--config', str(cfg), '--retrain', '--date', '2026-11-22'], capsys)
    assert code == 3, err
    assert latest_version(models) == before
    versions = list_versions(models)
    assert len(versions) == 2
    candidate = [v for v in versions if v != before][0]
    assert f'candidate model: {models}/{candidate} (version {candidate}; LATEST not moved)' \
        in stdout
    assert os.path.exists(os.path.join(models, candidate, 'baseline.json'))
    new = CentroidModel.load(os.path.join(models, candidate))
    assert new.k == 3 and new.input_pattern == f'{trained["dir"]}/2026-11-22.parquet'
    decision = read(out, 'decision.json')
    assert decision['retrain_input'] == f'{trained["dir"]}/2026-11-22.parquet'


def test_kmeans_no_latest(tmp_path, trained, capsys):
    models = str(tmp_path / 'm')
    kmeans.run(['--input', trained['train'], '--k', '2', '--model', models,
                '--random_state', '1'])
    first = latest_version(models)
    kmeans.run(['--input', trained['train'], '--k', '2', '--model', models,
                '--random_state', '1', '--no_latest'])
    assert latest_version(models) == first and len(list_versions(models)) == 2
    assert 'LATEST not moved' in capsys.readouterr().out


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize('text, message', [
    ('thresholds:\n  psy: 0.2\n', "thresholds: unknown key 'psy'"),
    ('windows: 3\n', "unknown key 'windows'"),
    ('rules:\n  - {metric: psi, consecutive: 0}\n', 'consecutive must be an integer >= 1'),
    ('rules:\n  - {metric: l1}\n', 'metric must be one of psi, js'),
    ('features:\n  a: {psi: high}\n', "features.a.psi must be a number, got 'high'"),
    ('thresholds: [1, 2\n', 'is not valid YAML'),
    ('thresholds: {psi: -1}\n', 'thresholds.psi must be >= 0, got -1'),
    ('features:\n  features_0: {js: -0.1}\n', 'features.features_0.js must be >= 0'),
    ('rules:\n  - {metric: js, threshold: -0.5}\n', 'rules[0]: threshold must be >= 0'),
    ('features:\n  height: {psi: 0.5}\n',
     "features.height: no feature 'height' in the baseline "),
    ('rules:\n  - {metric: psi, feature: features_9, consecutive: 2}\n',
     "rules[0].feature: no feature 'features_9' in the baseline "),
    ('rules:\n  - {metric: far_share_ratio, feature: features_0}\n',
     "rules[0]: feature 'features_0' goes with a per-feature metric (psi, js)"),
])
def test_config_errors_are_one_line(text, message, tmp_path, trained, capsys):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text(text)
    code, _, err = cli(['--input', trained['train'], '--model', trained['models'],
                        '--output', str(tmp_path / 'o'), '--config', str(cfg)], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and message in err, err
    if 'no feature' in message:   # the features there are, as drift.json names them
        assert err.rstrip().endswith('; the features are features_0, features_1, '
                                     'features_2, l2_norm'), err
    assert not os.path.exists(tmp_path / 'o')


def test_config_defaults_and_the_shipped_config():
    c = MonitorConfig()
    assert c.thresholds == {'psi': 0.2, 'js': 0.1, 'cluster_share_linf': 0.1,
                            'mean_distance_ratio': 1.5, 'far_share_ratio': 2.0,
                            'label_rate_diff': 0.1, 'prediction_rate_diff': 0.1,
                            'precision_drop': 0.05, 'recall_drop': 0.05, 'accuracy_drop': 0.05,
                            'f1_drop': 0.05}
    assert c.epsilon == 1e-6 and [r['name'] for r in c.rules] == ['psi_3_windows',
                                                                  'far_share_doubled']
    shipped = load_monitor_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                               'monitor.yaml'))
    assert shipped.thresholds == c.thresholds and shipped.epsilon == c.epsilon
    assert [r['name'] for r in shipped.rules] == [r['name'] for r in c.rules]


def test_missing_baseline_and_flags(tmp_path, trained, capsys):
    code, _, err = cli(['--input', trained['train'], '--output', str(tmp_path / 'o')], capsys)
    assert code == 2 and '--model' in err
    code, _, err = cli(['--input', trained['train'], '--baseline', str(tmp_path),
                        '--output', str(tmp_path / 'o')], capsys)
    assert code == 2 and 'no baseline at' in err
    assert err.rstrip().endswith('or make one with beamml monitor --make_baseline)'), err
    code, _, err = cli(['--input', trained['train'], '--baseline', str(tmp_path),
                        '--output', str(tmp_path / 'o'), '--retrain'], capsys)
    assert code == 2 and '--retrain needs --model' in err
    with pytest.raises(BeammlError):
        load_monitor_config(str(tmp_path / 'missing.yaml'))
    assert glob.glob(str(tmp_path / 'o*')) == []


# ----------------------------------------------------------------------------- streaming

def test_streaming_alarms_per_window_and_the_consecutive_rule(trained, tmp_path):
    """A TestStream of five 10 s windows: the training data, then three windows of the
    shifted copy, then the training data again: alarms in exactly the shifted windows,
    with their bounds; the rule 'psi > 0.2 in 3 consecutive windows' fires in the third
    shifted window only."""
    import argparse

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from beamml.pipelines.monitor import streaming as monitor_streaming
    from beamml.pipelines._platform import streams
    from beamml.transforms.io.rows import points_batch

    X = trained['X']
    shifted = pq.read_table(trained['shifted']).column('features').combine_chunks()
    S = shifted.flatten().to_numpy().reshape(-1, 3)
    windows = [X, S, S, S, X]
    ts = TestStream().advance_watermark_to(0)
    for w, data in enumerate(windows):
        batches = [points_batch(pa.array(np.arange(lo, lo + 500) + 10000 * w), data[lo:lo + 500])
                   for lo in range(0, 3000, 500)]
        ts = ts.add_elements([TimestampedValue(b, 10 * w + 1 + i) for i, b in enumerate(batches)])
        ts = ts.advance_watermark_to(10 * w + 10)
    ts = ts.advance_processing_time(3600).advance_watermark_to_infinity()
    cfg = tmp_path / 'monitor.yaml'
    cfg.write_text('rules:\n  - {name: psi3, metric: psi, threshold: 0.2, consecutive: 3}\n')
    out = str(tmp_path / 'stream')
    ap = argparse.ArgumentParser()
    monitor.MonitorOptions._add_argparse_args(ap)
    args = ap.parse_args(['--model', trained['models'], '--output', out, '--window_size', '10',
                          '--input_subscription', 'projects/p/subscriptions/s',
                          '--monitor_config', str(cfg)])
    ctx = monitor.load_inputs(args)
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        source = streams.window_and_gate(p | ts, args)
        monitor_streaming.build_streaming(p, args, ctx, source=source)

    def per_window(name):
        found = {}
        for path in sorted(glob.glob(f'{out}/{name}-1970*.jsonl')):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    found.setdefault(r['window_start'], []).append(r)
        return found

    starts = [f'1970-01-01T00:00:{10 * w:02d}.000Z' for w in range(5)]
    drift = per_window('drift')
    assert sorted(drift) == starts
    assert all(len(v) == 1 and v[0]['timing'] == 'on_time' for v in drift.values())
    alarm = per_window('alarms')
    assert sorted(alarm) == starts[1:4]
    for start in starts[1:4]:
        psi_features = {a['feature'] for a in alarm[start] if a['metric'] == 'psi'}
        assert psi_features - {'l2_norm'} == {'features_0', 'features_2'}
        assert all(a['window_start'] == start and a['window_end'] for a in alarm[start])
    # window 1 drift equals the batch run's on the same data
    assert drift[starts[0]][0]['features']['features_0']['psi']['value'] == pytest.approx(0, abs=1e-12)
    decision = per_window('decision')
    assert {s: v[0]['retrain'] for s, v in decision.items()} == dict(zip(
        starts, [False, False, False, True, False]))
    (rule,) = decision[starts[3]][0]['rules']
    assert rule['fired'] and len(rule['evidence'][0]['values']) == 3
    stats = per_window('statistics')
    assert stats[starts[2]][0]['rows'] == 3000
    report = per_window('report_data')
    assert report[starts[2]][0]['clusters']['current_shares']


def test_nan_and_inf_are_counted_per_feature_with_allow_nan(trained, tmp_path, capsys):
    X = blobs(500, 9)
    X[3, 0] = X[10, 0] = np.nan
    X[7, 2] = np.inf
    lines = ['id,a,b,c'] + [f'{i},' + ','.join(repr(float(v)) for v in x)
                            for i, x in enumerate(X)]
    path = tmp_path / 'p.csv'
    path.write_text('\n'.join(lines) + '\n')
    base = str(tmp_path / 'base')
    code, _, err = cli(['--make_baseline', '--input', str(path), '--allow_nan', '--output', base,
                        '--feature_columns', 'a,b,c'], capsys)
    assert code == 0, err
    doc = read(base, 'baseline.json')
    assert (doc['features']['a']['nan'], doc['features']['a']['count']) == (2, 498)
    assert (doc['features']['c']['inf'], doc['features']['c']['count']) == (1, 499)
    finite = X[:, 0][np.isfinite(X[:, 0])]
    assert doc['features']['a']['mean'] == pytest.approx(finite.mean(), rel=1e-12)
    assert doc['l2_norm']['nan'] == 2 and doc['l2_norm']['inf'] == 1
    code, stdout, err = cli(['--input', str(path), '--allow_nan', '--baseline', base,
                             '--feature_columns', 'a,b,c', '--output', str(tmp_path / 'out')],
                            capsys)
    assert code == 0 and 'monitor: no alarm' in stdout, err


# ----------------------------------------------------------------------------- prediction logs

def write_logs(path, truth, prediction):
    pq.write_table(pa.table({'id': np.arange(len(truth)), 'label': truth.astype(np.int64),
                             'predicted': prediction.astype(np.int64)}), path)
    return str(path)


def test_prediction_logs_rates_and_metrics_against_sklearn(tmp_path, capsys):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    rng = np.random.default_rng(11)
    truth = rng.random(4000) < 0.3
    good = np.where(rng.random(4000) < 0.92, truth, ~truth)       # the baseline's model
    worse = rng.random(4000) < 0.45                                 # more positives
    bad = np.where(rng.random(4000) < 0.7, worse, ~worse)
    flags = ['--task', 'classification', '--truth_column', 'label',
             '--prediction_column', 'predicted']
    base = str(tmp_path / 'base')
    code, _, err = cli(['--make_baseline', '--input', write_logs(tmp_path / 'a.parquet', truth,
                                                                 good), '--output', base] + flags,
                       capsys)
    assert code == 0, err
    doc = read(base, 'baseline.json')['logs']
    assert doc['label_rate'] == pytest.approx(truth.mean())
    assert doc['prediction_rate'] == pytest.approx(good.mean())
    for name, fn in (('precision', precision_score), ('recall', recall_score),
                     ('accuracy', accuracy_score), ('f1', f1_score)):
        assert doc[name] == pytest.approx(fn(truth, good), rel=1e-12)
    # the same logs: no alarm; another model's logs: the rates and the metrics alarm
    out = str(tmp_path / 'same')
    code, stdout, err = cli(['--input', write_logs(tmp_path / 's.parquet', truth, good),
                             '--baseline', base, '--output', out] + flags, capsys)
    assert code == 0 and 'monitor: no alarm' in stdout, err
    out = str(tmp_path / 'bad')
    code, stdout, err = cli(['--input', write_logs(tmp_path / 'b.parquet', worse, bad),
                             '--baseline', base, '--output', out] + flags, capsys)
    assert code == 3, err
    drift = read(out, 'drift.json')['logs']
    assert drift['label_rate_diff']['value'] == pytest.approx(abs(worse.mean() - truth.mean()))
    assert drift['accuracy_drop']['value'] == pytest.approx(
        accuracy_score(truth, good) - accuracy_score(worse, bad))
    fired = {a['metric'] for a in alarms(out)}
    assert {'label_rate_diff', 'prediction_rate_diff', 'accuracy_drop', 'f1_drop'} <= fired
    assert all(a['feature'] is None for a in alarms(out))
    report = read(out, 'report_data.json')
    assert report['logs']['current']['accuracy'] == pytest.approx(accuracy_score(worse, bad))
    # a logs baseline needs --task, a points baseline does not go with it
    code, _, err = cli(['--input', str(tmp_path / 'b.parquet'), '--baseline', base,
                        '--output', str(tmp_path / 'x')], capsys)
    assert code == 2 and 'monitor them with --task classification' in err
    points = str(tmp_path / 'points')
    cli(['--make_baseline', '--input', write_points(tmp_path / 'p.parquet', blobs(100, 1)),
         '--output', points], capsys)
    code, _, err = cli(['--input', str(tmp_path / 'b.parquet'), '--baseline', points,
                        '--output', str(tmp_path / 'y')] + flags, capsys)
    assert code == 2 and 'is a points baseline' in err
