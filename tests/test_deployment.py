"""Shadow and canary deployment in `beamml assign`, and the promote/keep gate.

Oracles: numpy brute-force labels (np.argmin over full distance matrices) and
scipy.optimize.linear_sum_assignment for the best relabelling; a pure-Python FNV-1a /
splitmix64 for the id hash; a second Python process for the split's stability.
"""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import linear_sum_assignment

from beamml.pipelines import assign
from beamml.pipelines.assign import deploy as assign_deploy
from beamml.pipelines._platform import streams
from beamml.pipelines._platform.main import main_wrapper
from beamml.transforms.deployment import (Gate, ShadowComparisonFn, Threshold, agreement,
                                          canary_mask, comparison_report, id_hash,
                                          max_weight_matching, unit_hash)
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.rows import points_batch
from beamml.transforms.model import CentroidModel, latest_version, set_latest

from test_streaming import make_stream, parse, read_jsonl, stream_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers

def make_points(path, X, ids=None):
    ids = np.arange(len(X), dtype=np.int64) if ids is None else ids
    cols = {'id': pa.array(ids)}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(X.shape[1])})
    pq.write_table(pa.table(cols), path)


def blobs(n=900, d=3, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(5, d)) * 6
    return C[rng.integers(0, 5, n)] + rng.normal(size=(n, d)), C


def brute(X, C, cosine=False):
    """Labels and per-point loss by brute force (squared distance, or 1 - cos)."""
    if cosine:
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        V = C / np.linalg.norm(C, axis=1, keepdims=True)
        D = 1 - U @ V.T
    else:
        D = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    lab = D.argmin(1)
    return lab, D[np.arange(len(X)), lab]


def read_rows(prefix):
    paths = sorted(glob.glob(f'{prefix}-?????-of-?????.parquet'))
    assert paths
    return pa.concat_tables([pq.read_table(p) for p in paths]).sort_by('id')


def run_assign(argv):
    return assign.run(argv + ['--runner', 'FnApiRunner'])


def cli(argv, capsys):
    code = main_wrapper(assign.run, argv, prog='beamml assign')
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def setup(tmp_path):
    """Points (blobs around 5 centres), production v1 (k=4), shadow v2 (k=5), both saved
    in one model directory whose LATEST is v1."""
    X, C = blobs()
    make_points(str(tmp_path / 'pts.parquet'), X)
    rng = np.random.default_rng(3)
    mdir = str(tmp_path / 'models')
    v1 = CentroidModel(C[:4] + rng.normal(size=(4, 3)), version='v1')
    v1.save(mdir)
    v2 = CentroidModel(C + 0.1 * rng.normal(size=C.shape), version='v2')
    v2.save(mdir, make_latest=False)
    return tmp_path, X, v1, v2, mdir


# ----------------------------------------------------------------------------- matching

@pytest.mark.parametrize('shape', [(1, 1), (1, 6), (6, 1), (4, 4), (3, 7), (9, 5), (40, 33)])
def test_matching_equals_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(20):
        W = rng.integers(0, 4 if trial % 2 else 1000, shape).astype(float)   # ties / not
        rows, cols = max_weight_matching(W)
        r2, c2 = linear_sum_assignment(W, maximize=True)
        assert W[rows, cols].sum() == W[r2, c2].sum()
        assert len(rows) == min(shape) and len(set(rows)) == len(rows)
        assert len(set(cols)) == len(cols) and (np.diff(rows) > 0).all()


def test_matching_large_and_degenerate():
    rng = np.random.default_rng(5)
    W = rng.random((200, 150))
    rows, cols = max_weight_matching(W)
    r2, c2 = linear_sum_assignment(W, maximize=True)
    assert W[rows, cols].sum() == pytest.approx(W[r2, c2].sum(), rel=1e-12)
    assert max_weight_matching(np.zeros((0, 3)))[0].size == 0
    rows, cols = max_weight_matching(np.zeros((3, 3)))      # every matching is best
    assert sorted(cols) == [0, 1, 2]
    with pytest.raises(ValueError):
        max_weight_matching(np.array([[np.nan]]))


def test_agreement_of_a_permuted_labelling_is_one():
    a = np.array([0, 0, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])
    table = np.zeros((3, 3), int)
    np.add.at(table, (a, perm[a]), 1)
    assert agreement(table)[0] == 1.0
    assert agreement(np.zeros((2, 3), int))[0] is None


# ----------------------------------------------------------------------------- shadow

def test_shadow_agreement_equals_numpy_and_scipy(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup
    out = str(tmp_path / 'out' / 'assigned')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--shadow_model', f'{mdir}/v2', '--output', out])
    doc = json.loads(open(assign.shadow_path(out)).read())
    a, la = brute(X, v1.centers)
    b, lb = brute(X, v2.centers)
    table = np.zeros((4, 5), np.int64)
    np.add.at(table, (a, b), 1)
    r, c = linear_sum_assignment(table, maximize=True)
    assert doc['contingency'] == table.tolist()
    assert doc['agreement'] == pytest.approx(table[r, c].sum() / len(X), abs=0)
    assert 0.5 < doc['agreement'] < 1.0       # k=4 against k=5: not all agree
    assert doc['points'] == len(X) and doc['shadow_refused'] == 0
    assert (doc['production_version'], doc['candidate_version']) == ('v1', 'v2')
    assert doc['production']['inertia'] == pytest.approx(la.sum(), rel=1e-9)
    assert doc['candidate']['inertia'] == pytest.approx(lb.sum(), rel=1e-9)
    assert doc['candidate']['inertia_per_point'] == pytest.approx(lb.mean(), rel=1e-9)
    assert doc['production']['cluster_counts'] == np.bincount(a, minlength=4).tolist()
    assert doc['candidate']['cluster_shares'] == pytest.approx(
        np.bincount(b, minlength=5) / len(X), abs=1e-15)
    assert 'shadow v2 vs v1: agreement' in capsys.readouterr().out
    success = json.loads(open(out + '-_SUCCESS').read())
    assert out + '-shadow.json' in success['outputs']


def test_production_rows_are_unchanged_by_a_shadow(setup):
    tmp_path, X, v1, v2, mdir = setup
    plain, shadowed = str(tmp_path / 'a' / 'assigned'), str(tmp_path / 'b' / 'assigned')
    base = ['--input', str(tmp_path / 'pts.parquet'), '--model', mdir, '--all_distances']
    run_assign(base + ['--output', plain])
    run_assign(base + ['--output', shadowed, '--shadow_model', f'{mdir}/v2'])
    (fa,), (fb,) = (glob.glob(f'{p}-?????-of-?????.parquet') for p in (plain, shadowed))
    assert open(fa, 'rb').read() == open(fb, 'rb').read()
    assert read_rows(plain).equals(read_rows(shadowed))
    summary = json.loads(open(assign.summary_path(shadowed)).read())
    assert summary == json.loads(open(assign.summary_path(plain)).read())


def test_shadow_cosine_model_refusing_a_point(tmp_path):
    """A cosine shadow cannot assign a zero vector that the Euclidean production model
    can: the point is counted in shadow_refused and left out of the table."""
    X = np.array([[1.0, 0.1], [0.0, 0.0], [0.2, 3.0], [-2.0, 0.5], [3.0, 3.1]])
    make_points(str(tmp_path / 'p.parquet'), X)
    prod = CentroidModel([[1.0, 0.0], [0.0, 2.0]], version='p1')
    prod.save(str(tmp_path / 'prod'))
    cos = CentroidModel([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], version='c1',
                        distance='cosine')
    cos.save(str(tmp_path / 'cand'))
    out = str(tmp_path / 'o' / 'a')
    run_assign(['--input', str(tmp_path / 'p.parquet'), '--model', str(tmp_path / 'prod'),
                '--shadow_model', str(tmp_path / 'cand'), '--output', out])
    doc = json.loads(open(assign.shadow_path(out)).read())
    keep = np.array([0, 2, 3, 4])
    a, la = brute(X[keep], prod.centers)
    b, lb = brute(X[keep], cos.centers, cosine=True)
    table = np.zeros((2, 3), int)
    np.add.at(table, (a, b), 1)
    assert doc['shadow_refused'] == 1 and doc['points'] == 4
    assert doc['contingency'] == table.tolist()
    assert doc['candidate']['inertia'] == pytest.approx(lb.sum(), rel=1e-9, abs=1e-15)
    assert len(read_rows(out)) == 5


# ----------------------------------------------------------------------------- canary

def _fnv_splitmix_reference(value) -> int:
    """The id hash in plain Python integers (the oracle)."""
    mask = (1 << 64) - 1
    if isinstance(value, str):
        h = 0xCBF29CE484222325
        for byte in value.encode('utf-8'):
            h = ((h ^ byte) * 0x100000001B3) & mask
    else:
        h = value & mask
    z = (h + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_id_hash_equals_a_python_reference():
    ints = [0, 1, -1, 2 ** 63 - 1, -2 ** 63, 123456789]
    strs = ['', 'a', 'héllo', 'id-000042', '日本', 'x' * 70]
    assert id_hash(pa.array(ints, pa.int64())).tolist() == [
        _fnv_splitmix_reference(v) for v in ints]
    assert id_hash(pa.array(strs)).tolist() == [_fnv_splitmix_reference(v) for v in strs]
    # a slice, a large_string and an int32 column hash as the same values
    assert id_hash(pa.array(['q'] + strs).slice(1)).tolist() == id_hash(pa.array(strs)).tolist()
    assert (id_hash(pa.array(strs, pa.large_string())) == id_hash(pa.array(strs))).all()
    assert (id_hash(pa.array([1, 2], pa.int32())) == id_hash(pa.array([1, 2]))).all()
    assert id_hash(pa.array([], pa.string())).size == 0
    with pytest.raises(BeammlError, match='null'):
        id_hash(pa.array([1, None]))


@pytest.mark.parametrize('fraction', [0.05, 0.2, 0.5])
def test_canary_fraction_within_one_percent_on_100000_ids(fraction):
    int_ids = pa.array(np.arange(100_000, dtype=np.int64))
    str_ids = pa.array([f'user-{i}' for i in range(100_000)])
    for ids in (int_ids, str_ids):
        share = canary_mask(ids, fraction).mean()
        assert abs(share - fraction) < 0.01, (ids.type, share)
    u = unit_hash(int_ids)
    assert (u >= 0).all() and (u < 1).all()
    assert not canary_mask(int_ids, 0.0).any() and canary_mask(int_ids, 1.0).all()
    with pytest.raises(BeammlError):
        canary_mask(int_ids, 1.5)


def test_canary_split_is_the_same_in_another_process():
    code = ('import sys, numpy as np, pyarrow as pa\n'
            'from beamml.transforms.deployment import canary_mask\n'
            'm1 = canary_mask(pa.array(np.arange(20000, dtype=np.int64) * 7919 - 10**6), 0.1)\n'
            'm2 = canary_mask(pa.array([f"u{i}" for i in range(20000)]), 0.1)\n'
            'sys.stdout.write(np.packbits(np.r_[m1, m2]).tobytes().hex())\n')
    env = {**os.environ, 'PYTHONPATH': ROOT, 'PYTHONHASHSEED': '12345'}
    other = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                           text=True, check=True).stdout
    m1 = canary_mask(pa.array(np.arange(20000, dtype=np.int64) * 7919 - 10 ** 6), 0.1)
    m2 = canary_mask(pa.array([f'u{i}' for i in range(20000)]), 0.1)
    assert other == np.packbits(np.r_[m1, m2]).tobytes().hex()


def test_canary_rows_name_their_model(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup
    out = str(tmp_path / 'out' / 'canary')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--canary_model', f'{mdir}/v2', '--canary_fraction', '0.3', '--output', out])
    rows = read_rows(out)
    ids = rows.column('id')
    to_canary = canary_mask(ids, 0.3)
    versions = np.array(rows.column('model_version').to_pylist())
    assert (versions == np.where(to_canary, 'v2', 'v1')).all()
    Xs = X[ids.to_numpy()]
    expect = np.where(to_canary, brute(Xs, v2.centers)[0], brute(Xs, v1.centers)[0])
    assert (rows.column('cluster').to_numpy() == expect).all()
    summary = json.loads(open(assign.summary_path(out)).read())
    prod, can = summary['models']
    assert (prod['version'], can['version']) == ('v1', 'v2')
    assert can['points'] == int(to_canary.sum()) and prod['points'] == len(X) - can['points']
    assert can['cluster_sizes'] == np.bincount(expect[to_canary], minlength=5).tolist()
    assert summary['cluster_sizes'] == prod['cluster_sizes']
    assert f"canary v2: {can['points']} points" in capsys.readouterr().out


@pytest.mark.parametrize('fraction,version', [('0', 'v1'), ('1', 'v2')])
def test_canary_fraction_zero_and_one(setup, fraction, version):
    tmp_path, X, v1, v2, mdir = setup
    out = str(tmp_path / 'out' / f'c{fraction}')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--canary_model', f'{mdir}/v2', '--canary_fraction', fraction,
                '--output', out])
    assert set(read_rows(out).column('model_version').to_pylist()) == {version}


# ----------------------------------------------------------------------------- the gate

def _report(prod_loss, cand_loss, agree_table):
    return comparison_report(np.asarray(agree_table), [prod_loss, cand_loss])


DIAG = [[50, 0], [0, 50]]          # agreement 1
HALF = [[25, 25], [25, 25]]        # agreement 0.5


@pytest.mark.parametrize('threshold,report,passed', [
    # value thresholds (GenericValueThreshold): lower and upper bounds, inclusive
    ({'metric': 'agreement', 'lower_bound': 0.9}, _report(10, 10, DIAG), True),
    ({'metric': 'agreement', 'lower_bound': 0.9}, _report(10, 10, HALF), False),
    ({'metric': 'agreement', 'lower_bound': 0.5, 'upper_bound': 0.5}, _report(1, 1, HALF),
     True),
    ({'metric': 'inertia_per_point', 'upper_bound': 0.1}, _report(1, 12, DIAG), False),
    ({'metric': 'max_cluster_share', 'upper_bound': 0.5}, _report(1, 1, DIAG), True),
    # relative change, lower is better: the candidate at most 5% worse
    ({'metric': 'inertia_per_point', 'change': {'relative': 0.05,
                                                'direction': 'lower_is_better'}},
     _report(100, 104, DIAG), True),
    ({'metric': 'inertia_per_point', 'change': {'relative': 0.05,
                                                'direction': 'lower_is_better'}},
     _report(100, 106, DIAG), False),
    # absolute change, lower is better: v_c - v_b <= A
    ({'metric': 'inertia', 'change': {'absolute': 5, 'direction': 'lower_is_better'}},
     _report(100, 105, DIAG), True),
    ({'metric': 'inertia', 'change': {'absolute': -1, 'direction': 'lower_is_better'}},
     _report(100, 100, DIAG), False),
    # higher is better: v_c - v_b >= A (relative: (v_c - v_b) / v_b >= R)
    ({'metric': 'min_cluster_share', 'change': {'absolute': 0.0,
                                                'direction': 'higher_is_better'}},
     comparison_report(np.array([[50, 0], [10, 40]]), [1, 1]), False),   # 0.5 -> 0.4
    ({'metric': 'min_cluster_share', 'change': {'absolute': -0.15,
                                                'direction': 'higher_is_better'}},
     comparison_report(np.array([[50, 0], [10, 40]]), [1, 1]), True),
    ({'metric': 'inertia', 'change': {'relative': -0.2, 'direction': 'higher_is_better'}},
     _report(100, 81, DIAG), True),
    ({'metric': 'inertia', 'change': {'relative': -0.2, 'direction': 'higher_is_better'}},
     _report(100, 79, DIAG), False),
    # a zero baseline: no change is 0, any change is infinite
    ({'metric': 'inertia', 'change': {'relative': 0.5, 'direction': 'lower_is_better'}},
     _report(0, 0, DIAG), True),
    ({'metric': 'inertia', 'change': {'relative': 0.5, 'direction': 'lower_is_better'}},
     _report(0, 1e-9, DIAG), False),
])
def test_gate_on_constructed_cases(threshold, report, passed):
    gate = Gate.from_dict({'thresholds': [threshold]})
    result = gate.decide(report)
    assert result['passed'] is passed
    assert result['decision'] == ('promote' if passed else 'keep')
    assert all(c['passed'] is passed for c in result['checks'])


def test_gate_records_values_bounds_and_changes():
    gate = Gate.from_dict({'thresholds': [
        {'metric': 'agreement', 'lower_bound': 0.9},
        {'metric': 'inertia_per_point', 'upper_bound': 2.0,
         'change': {'absolute': 0.1, 'relative': 0.05, 'direction': 'lower_is_better'}}]})
    result = gate.decide(_report(100, 103, DIAG))       # 1.00 -> 1.03 per point
    kinds = [(c['metric'], c['kind'], c['passed']) for c in result['checks']]
    assert kinds == [('agreement', 'lower_bound', True),
                     ('inertia_per_point', 'upper_bound', True),
                     ('inertia_per_point', 'change_absolute', True),
                     ('inertia_per_point', 'change_relative', True)]
    rel = result['checks'][3]
    assert (rel['value'], rel['baseline']) == (1.03, 1.0)
    assert rel['change'] == pytest.approx(0.03)
    assert Gate.from_dict(gate.to_dict()).to_dict() == gate.to_dict()
    empty = gate.decide(comparison_report(np.zeros((2, 2), int), [0, 0]))
    assert empty['decision'] == 'keep' and empty['reason'] == 'no point was compared'


@pytest.mark.parametrize('doc,message', [
    ({'thresholds': [{'metric': 'nope', 'lower_bound': 1}]}, 'is not one of'),
    ({'thresholds': [{'metric': 'agreement'}]}, 'no lower_bound'),
    ({'thresholds': [{'metric': 'agreement', 'change': {'absolute': 0,
                                                        'direction': 'higher_is_better'}}]},
     'no production baseline'),
    ({'thresholds': [{'metric': 'inertia', 'change': {'absolute': 0}}]}, 'direction must'),
    ({'thresholds': [{'metric': 'inertia', 'lower_bound': 'x'}]}, 'must be a number'),
    ({'thresholds': [{'metric': 'inertia', 'upper': 1}]}, 'unknown key'),
    ({'thresholds': []}, 'no thresholds'),
    ([1, 2], 'expected a mapping'),
    ({'treshold': [{'metric': 'agreement', 'lower_bound': 0.9}]},
     "unknown key 'treshold'; the only key allowed is thresholds"),
    ({'thresholds': [{'metric': 'agreement', 'lower_bound': 0.9}], 'promote': True},
     "unknown key 'promote'; the only key allowed is thresholds"),
    ({}, 'expected a mapping with one key, thresholds'),
])
def test_gate_config_errors_are_one_line(doc, message):
    with pytest.raises(BeammlError, match=message) as e:
        Gate.from_dict(doc)
    assert '\n' not in str(e.value)


def test_threshold_of_an_undefined_value_fails():
    report = comparison_report(np.zeros((2, 2), int), [0, 0])
    (check,) = Threshold('inertia_per_point', upper_bound=10).check(report)
    assert check['value'] is None and check['passed'] is False


# ----------------------------------------------------------------------------- promotion

def _write_gate(path, lower_agreement, relative):
    with open(path, 'w') as f:
        f.write('thresholds:\n'
                f'  - metric: agreement\n    lower_bound: {lower_agreement}\n'
                '  - metric: inertia_per_point\n'
                f'    change: {{relative: {relative}, direction: lower_is_better}}\n')
    return str(path)


def test_promote_on_pass_moves_latest_and_records_the_previous_version(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup       # v2 (k=5) fits the 5 blobs better than v1
    gate = _write_gate(tmp_path / 'gate.yaml', 0.5, 0.0)
    out = str(tmp_path / 'out' / 'assigned')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--shadow_model', f'{mdir}/v2', '--gate', gate, '--promote_on_pass',
                '--output', out])
    decision = json.loads(open(assign.decision_path(out)).read())
    assert decision['decision'] == 'promote' and decision['promoted'] is True
    assert decision['previous_version'] == 'v1' and decision['candidate_version'] == 'v2'
    assert latest_version(mdir) == 'v2'
    note = json.loads(open(os.path.join(mdir, 'ROLLBACK')).read())
    assert (note['previous_version'], note['promoted_version']) == ('v1', 'v2')
    assert 'LATEST of' in capsys.readouterr().out
    set_latest(mdir, note['previous_version'])           # the rollback
    assert latest_version(mdir) == 'v1'


def test_promote_on_pass_keeps_latest_when_the_gate_fails(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup
    gate = _write_gate(tmp_path / 'gate.yaml', 0.999, 0.0)   # agreement < 0.999
    out = str(tmp_path / 'out' / 'assigned')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--shadow_model', f'{mdir}/v2', '--gate', gate, '--promote_on_pass',
                '--output', out])
    decision = json.loads(open(assign.decision_path(out)).read())
    assert decision['decision'] == 'keep' and decision['promoted'] is False
    assert decision['reason'] == 'failed: agreement lower_bound'
    assert latest_version(mdir) == 'v1' and not os.path.exists(os.path.join(mdir, 'ROLLBACK'))
    assert 'stays v1' in capsys.readouterr().out


def test_without_promote_on_pass_the_gate_only_decides(setup):
    tmp_path, X, v1, v2, mdir = setup
    gate = _write_gate(tmp_path / 'gate.yaml', 0.5, 0.0)
    out = str(tmp_path / 'out' / 'assigned')
    run_assign(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                '--shadow_model', f'{mdir}/v2', '--gate', gate, '--output', out])
    decision = json.loads(open(assign.decision_path(out)).read())
    assert decision['decision'] == 'promote' and decision['promoted'] is False
    assert latest_version(mdir) == 'v1'
    assert out + '-decision.json' in json.loads(open(out + '-_SUCCESS').read())['outputs']


def test_promotion_refused_when_latest_moved_during_the_run(setup):
    tmp_path, X, v1, v2, mdir = setup
    v3 = CentroidModel(v1.centers + 1, version='v3')
    v3.save(mdir, make_latest=False)
    args = parse(assign.AssignOptions, ['--model', mdir, '--shadow_model', f'{mdir}/v2',
                                        '--gate', _write_gate(tmp_path / 'g.yaml', 0, 1),
                                        '--promote_on_pass', '--input', 'x', '--output', 'o'])
    plan = assign_deploy.deployment_plan(args, v1, 3)
    path = str(tmp_path / 'decision.json')
    assign_deploy.write_decision(comparison_report(np.eye(2, dtype=int) * 5, [1, 1]), plan,
                                 path)
    set_latest(mdir, 'v3')
    with pytest.raises(BeammlError, match='moved from v1 to v3'):
        assign_deploy.promote('o', plan, path)
    assert latest_version(mdir) == 'v3'


# ----------------------------------------------------------------------------- streaming

def test_streaming_shadow_per_window(tmp_path):
    mdir = str(tmp_path / 'models')
    prod = CentroidModel([[0.0, 0.0], [10.0, 10.0]], version='p1')
    prod.save(mdir)
    cand = CentroidModel([[10.0, 10.0], [0.0, 0.0], [5.0, 5.0]], version='c1')
    cand.save(mdir, make_latest=False)
    rng = np.random.default_rng(7)
    X = rng.uniform(-1, 11, size=(12, 2))
    t = [1, 2, 3, 4, 5, 6, 31, 32, 33, 34, 35, 36]     # windows [0, 10) and [30, 40)

    def batch(i):
        return points_batch(pa.array([i]), X[i:i + 1])
    events = [('at', 0), ('add', [(t[i], batch(i)) for i in range(6)]),
              ('at', 20), ('add', [(t[i], batch(i)) for i in range(6, 12)])]
    out = str(tmp_path / 'out' / 'assigned')
    gate = _write_gate(tmp_path / 'gate.yaml', 0.9, 0.5)
    args = parse(assign.AssignOptions, [
        '--model', mdir, '--shadow_model', f'{mdir}/c1', '--gate', gate, '--output', out,
        '--output_format', 'jsonl', '--input_subscription', 'projects/p/subscriptions/s',
        '--window_size', '10', '--allowed_lateness', '0'])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args, accumulating=False)
        assign.build_streaming(p, args, CentroidModel.load(mdir), source=source,
                               id_type=pa.int64())
    records = read_jsonl(out + '-shadow-*.jsonl')
    assert sorted(records) == [
        'assigned-shadow-1970-01-01T00:00:00.000Z-1970-01-01T00:00:10.000Z-pane-0-on_time.jsonl',
        'assigned-shadow-1970-01-01T00:00:30.000Z-1970-01-01T00:00:40.000Z-pane-0-on_time.jsonl']
    for (name, (record,)), idx in zip(sorted(records.items()), (range(6), range(6, 12))):
        idx = np.array(list(idx))
        a, la = brute(X[idx], prod.centers)
        b, lb = brute(X[idx], cand.centers)
        table = np.zeros((2, 3), int)
        np.add.at(table, (a, b), 1)
        r, c = linear_sum_assignment(table, maximize=True)
        assert record['contingency'] == table.tolist()
        assert record['agreement'] == table[r, c].sum() / len(idx)
        assert record['production']['inertia'] == pytest.approx(la.sum(), rel=1e-9)
        assert record['candidate']['inertia'] == pytest.approx(lb.sum(), rel=1e-9)
        assert (record['production_version'], record['candidate_version']) == ('p1', 'c1')
        assert record['gate']['decision'] in ('promote', 'keep')
        assert record['timing'] == 'on_time' and record['pane'] == 0
    rows = {r['id']: r for rs in read_jsonl(out + '-1970*.jsonl').values() for r in rs}
    assert sorted(rows) == list(range(12))
    assert {r['model_version'] for r in rows.values()} == {'p1'}


def test_streaming_canary_uses_the_same_split(tmp_path):
    mdir = str(tmp_path / 'models')
    CentroidModel([[0.0, 0.0], [10.0, 10.0]], version='p1').save(mdir)
    CentroidModel([[5.0, 5.0]], version='c1').save(mdir, make_latest=False)
    X = np.random.default_rng(8).normal(size=(40, 2))
    events = [('at', 0), ('add', [(1 + i % 5, points_batch(pa.array([i]), X[i:i + 1]))
                                  for i in range(40)])]
    out = str(tmp_path / 'out' / 'assigned')
    args = parse(assign.AssignOptions, [
        '--model', mdir, '--canary_model', f'{mdir}/c1', '--canary_fraction', '0.4',
        '--output', out, '--output_format', 'jsonl', '--input_subscription',
        'projects/p/subscriptions/s', '--window_size', '10'])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args, accumulating=False)
        assign.build_streaming(p, args, CentroidModel.load(mdir), source=source,
                               id_type=pa.int64())
    rows = {r['id']: r for rs in read_jsonl(out + '-1970*.jsonl').values() for r in rs}
    mask = canary_mask(pa.array(np.arange(40)), 0.4)
    assert [rows[i]['model_version'] for i in range(40)] == [
        'c1' if m else 'p1' for m in mask]


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize('extra,message', [
    (['--canary_model', 'M2', '--canary_fraction', '1.5'],
     "--canary_fraction: '1.5' is not a fraction between 0 and 1"),
    (['--canary_model', 'M2', '--canary_fraction', '-0.1'], 'is not a fraction between 0 and 1'),
    (['--canary_fraction', '0.1'], '--canary_fraction needs --canary_model'),
    (['--canary_model', 'M2'], '--canary_model needs --canary_fraction'),
    (['--shadow_model', 'M2', '--canary_model', 'M2', '--canary_fraction', '0.1'],
     'cannot be combined'),
    (['--gate', 'g.yaml'], '--gate needs --shadow_model'),
    (['--shadow_model', 'M2', '--promote_on_pass'], '--promote_on_pass needs --gate'),
    (['--shadow_model', 'M2', '--gate', 'g.yaml', '--promote_on_pass', '--streaming',
      '--input_subscription', 'projects/my-project/subscriptions/points'], 'batch only'),
])
def test_bad_combinations_are_one_line(tmp_path, capsys, extra, message):
    code, err = cli(['--input', 'x.parquet', '--model', 'M', '--output',
                     str(tmp_path / 'o')] + extra, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_launch_only_and_dry_run_cannot_promote(tmp_path, capsys, monkeypatch):
    # Beam's check of a Dataflow submission asks Cloud Storage about the temp bucket
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    monkeypatch.setattr(GoogleCloudOptions, '_warn_if_soft_delete_policy_enabled',
                        lambda self, arg_name: None)
    dataflow = ['--runner', 'DataflowRunner', '--project', 'my-project', '--region',
                'europe-west1', '--temp_location', 'gs://bkt/tmp']
    base = ['--input', str(tmp_path / 'x.parquet'), '--model', 'M', '--shadow_model', 'M/v2',
            '--gate', 'g.yaml', '--promote_on_pass', '--output', str(tmp_path / 'o')]
    code, err = cli(base + dataflow + ['--dry_run', 'True'], capsys)
    assert code == 2 and 'with --dry_run' in err and len(err.splitlines()) == 1, err
    monkeypatch.setenv('BEAMML_LAUNCH_ONLY', '1')
    code, err = cli(base + dataflow, capsys)
    assert code == 2 and 'launch-only' in err and len(err.splitlines()) == 1, err


def test_dimension_mismatch_between_models_is_one_line(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup
    CentroidModel(np.ones((2, 4)), version='w4').save(str(tmp_path / 'wide'))
    for flag in (['--shadow_model', str(tmp_path / 'wide')],
                 ['--canary_model', str(tmp_path / 'wide'), '--canary_fraction', '0.5']):
        code, err = cli(['--input', str(tmp_path / 'pts.parquet'), '--model', mdir,
                         '--output', str(tmp_path / 'o' / 'a'), '--runner', 'FnApiRunner']
                        + flag, capsys)
        assert code == 2 and 'has d=4 features but --model v1 has d=3' in err, err
        assert err.splitlines()[-1].startswith('beamml assign: error: ')
        assert len([line for line in err.splitlines() if 'error' in line]) == 1


def test_canary_of_the_same_version_and_promote_of_a_loose_model(setup, capsys):
    tmp_path, X, v1, v2, mdir = setup
    base = ['--input', str(tmp_path / 'pts.parquet'), '--model', mdir, '--output',
            str(tmp_path / 'o' / 'a'), '--runner', 'FnApiRunner']
    code, err = cli(base + ['--canary_model', f'{mdir}/v1', '--canary_fraction', '0.5'],
                    capsys)
    assert code == 2 and 'must differ from --model version v1' in err
    loose = tmp_path / 'loose.json'
    loose.write_text(v2.to_json())
    code, err = cli(base + ['--shadow_model', str(loose), '--gate',
                            _write_gate(tmp_path / 'g.yaml', 0.5, 0), '--promote_on_pass'],
                    capsys)
    assert code == 2 and 'is not a version of a model directory' in err, err
    code, err = cli(base + ['--canary_model', f'{mdir}/v2', '--canary_fraction', '0.5',
                            '--all_distances'], capsys)
    assert code == 2 and 'drop --all_distances' in err


def test_comparison_fn_refuses_to_merge_other_shapes():
    fn = ShadowComparisonFn()
    a, b = fn.create_accumulator(), fn.create_accumulator()
    batch = pa.RecordBatch.from_pydict({'cluster': [0], 'shadow_cluster': [1], 'loss': [1.0],
                                        'shadow_loss': [2.0]})
    fn.add_input(a, batch.replace_schema_metadata({'k': '2', 'shadow_k': '2'}))
    fn.add_input(b, batch.replace_schema_metadata({'k': '2', 'shadow_k': '3'}))
    with pytest.raises(ValueError):
        fn.merge_accumulators([a, b])
    assert math.isclose(fn.extract_output(a)['candidate']['inertia'], 2.0)


def test_shadow_of_one_point_beside_a_refused_one(tmp_path):
    """A NaN row is a dead letter of the production model and not compared; one point
    gives agreement 1 and the candidate's empty clusters."""
    pq.write_table(pa.table({'id': [1, 2], 'x0': [0.5, float('nan')], 'x1': [0.5, 1.0]}),
                   str(tmp_path / 'p.parquet'))
    CentroidModel([[0.0, 0.0], [5.0, 5.0]], version='a1').save(str(tmp_path / 'm'))
    CentroidModel([[9.0, 9.0], [1.0, 1.0], [0.0, 3.0]], version='b1').save(
        str(tmp_path / 'm'), make_latest=False)
    out = str(tmp_path / 'o' / 'a')
    run_assign(['--input', str(tmp_path / 'p.parquet'), '--allow_nan',
                '--max_refused_fraction', '1', '--model', str(tmp_path / 'm'),
                '--shadow_model', str(tmp_path / 'm' / 'b1'), '--output', out])
    doc = json.loads(open(assign.shadow_path(out)).read())
    assert doc['points'] == 1 and doc['agreement'] == 1.0
    assert doc['contingency'] == [[0, 1, 0], [0, 0, 0]]
    assert doc['candidate']['empty_clusters'] == 2
    assert doc['candidate']['inertia'] == pytest.approx(0.5, rel=1e-12)
    assert len(read_rows(out)) == 1
