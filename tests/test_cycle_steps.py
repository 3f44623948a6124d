"""``beamml cycle``'s decisions without a pipeline: the gate step against every state of
``LATEST`` (and its retry after a crash), ``rollback``, the retrain step's adoption of a
killed attempt's candidate, and the one-line refusals. The day folders hold what the
assign and monitor steps leave (their ``_SUCCESS`` and decision files; the gate's
decision is the real gate's on a real comparison report); tests/test_cycle.py runs the
whole cycle with its pipelines.
"""
from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest
from inprocess import run_beamml

from beamml.pipelines.assign import deploy
from beamml.pipelines.cycle import rollback, steps
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.deployment import Gate
from beamml.transforms.deployment.kernels import comparison_report
from beamml.transforms.model import CentroidModel, latest_version, list_versions, set_latest

DAY = dt.date(2026, 11, 13)
GATE = {'thresholds': [{'metric': 'agreement', 'lower_bound': 0.5},
                       {'metric': 'inertia_per_point',
                        'change': {'relative': 0.0, 'direction': 'lower_is_better'}}]}


@pytest.fixture
def cycle(tmp_path):
    """A model directory (v1 production, v2 a candidate) and a cycle over tmp_path."""
    mdir = str(tmp_path / 'models')
    CentroidModel([[0.0, 0.0], [5.0, 5.0]], version='v1').save(mdir)
    CentroidModel([[0.5, 0.0], [5.0, 5.5]], version='v2').save(mdir, make_latest=False)
    c = steps.Cycle(str(tmp_path / 'in' / '{date}' / '*.csv'), mdir, str(tmp_path / 'work'),
                    gate=str(tmp_path / 'gate.yaml'))
    return c


def _write(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(doc, f)


def assigned(c: steps.Cycle, version: str, shadow: str | None = None,
             loss=(10.0, 8.0)) -> str | None:
    """The day's assign folder as the assign step leaves it: ``_SUCCESS`` naming the
    version, and with a shadow the gate's ``part-decision.json`` on a comparison whose
    production and candidate inertia sums are ``loss`` (100 points)."""
    folder = c.folder(DAY, steps.ASSIGN)
    _write(folder + steps.SUCCESS, {'model': {'version': version},
                                    'counts': {'records_ok': 100}})
    if shadow is None:
        return None
    production = CentroidModel.load(os.path.join(c.model, version))
    candidate = CentroidModel.load(os.path.join(c.model, shadow))
    gate = Gate.from_dict(GATE)
    plan = deploy.DeployPlan('shadow', production, candidate, gate=gate, gate_path=c.gate)
    path = folder + 'part-decision.json'
    deploy.write_decision(comparison_report(np.diag([50, 50]), list(loss)), plan, path)
    return path


def test_a_passing_gate_promotes_once_and_writes_rollback_first(cycle, capsys):
    decision_file = assigned(cycle, 'v1', 'v2')
    doc = steps.gate(cycle, DAY)
    assert (doc['decision'], doc['promoted'], doc['latest']) == ('promote', True, 'v2')
    assert latest_version(cycle.model) == 'v2'
    note = json.load(open(os.path.join(cycle.model, 'ROLLBACK')))
    assert (note['previous_version'], note['promoted_version']) == ('v1', 'v2')
    assert json.load(open(decision_file))['promoted'] is True
    capsys.readouterr()
    files = {p: os.stat(p).st_mtime_ns for p in (cycle.day(DAY, 'gate.json'),
                                                  os.path.join(cycle.model, 'ROLLBACK'))}
    assert steps.gate(cycle, DAY) == doc   # a rerun: said, nothing written
    assert 'done already: promote' in capsys.readouterr().out
    assert {p: os.stat(p).st_mtime_ns for p in files} == files


def test_a_retry_after_latest_moved_records_the_promotion_and_leaves_rollback(cycle):
    """The first attempt moved LATEST and died before gate.json was written."""
    assigned(cycle, 'v1', 'v2')
    steps.gate(cycle, DAY)
    note = open(os.path.join(cycle.model, 'ROLLBACK')).read()
    os.remove(cycle.day(DAY, 'gate.json'))
    doc = steps.gate(cycle, DAY)
    assert (doc['decision'], doc['promoted']) == ('promote', True)
    assert 'earlier attempt' in doc['reason']
    assert open(os.path.join(cycle.model, 'ROLLBACK')).read() == note   # still v1 -> v2


def test_a_passing_gate_keeps_when_latest_moved_since_the_shadow_run(cycle):
    CentroidModel([[1.0, 1.0], [4.0, 4.0]], version='v3').save(cycle.model)   # LATEST v3
    assigned(cycle, 'v1', 'v2')
    doc = steps.gate(cycle, DAY)
    assert (doc['decision'], doc['promoted']) == ('keep', False)
    assert 'LATEST moved from v1 to v3' in doc['reason']
    assert latest_version(cycle.model) == 'v3'
    assert not os.path.exists(os.path.join(cycle.model, 'ROLLBACK'))


def test_a_failing_gate_keeps_and_says_which_threshold(cycle):
    assigned(cycle, 'v1', 'v2', loss=(8.0, 10.0))   # the candidate's inertia is higher
    doc = steps.gate(cycle, DAY)
    assert (doc['decision'], doc['promoted']) == ('keep', False)
    assert doc['reason'] == 'failed: inertia_per_point change_relative'
    assert latest_version(cycle.model) == 'v1'


def test_no_shadow_is_decision_none_and_no_assign_is_one_line(cycle):
    with pytest.raises(BeammlError, match='has no _SUCCESS: run the assign step'):
        steps.gate(cycle, DAY)
    assigned(cycle, 'v1')
    doc = steps.gate(cycle, DAY)
    assert (doc['decision'], doc['production_version'], doc['latest']) == ('none', 'v1', 'v1')


def test_rollback_undoes_the_last_promotion_once(cycle, capsys):
    with pytest.raises(BeammlError, match='no promotion to undo; give --to'):
        rollback.rollback(cycle.model)
    assigned(cycle, 'v1', 'v2')
    steps.gate(cycle, DAY)
    assert rollback.rollback(cycle.model) == {'from': 'v2', 'to': 'v1', 'changed': True}
    assert latest_version(cycle.model) == 'v1'
    note = json.load(open(os.path.join(cycle.model, 'ROLLBACK')))
    assert (note['rolled_back_from'], note['rolled_back_to']) == ('v2', 'v1')
    assert rollback.rollback(cycle.model)['changed'] is False   # twice: nothing to do
    assert 'is v1 already; nothing to do' in capsys.readouterr().out
    set_latest(cycle.model, 'v2')
    CentroidModel([[1.0, 1.0], [4.0, 4.0]], version='v3').save(cycle.model)
    with pytest.raises(BeammlError, match='LATEST of .* is v3, not v2'):
        rollback.rollback(cycle.model)   # someone moved LATEST since: not undone blindly
    assert latest_version(cycle.model) == 'v3'
    assert rollback.rollback(cycle.model, 'v2')['changed'] is True
    with pytest.raises(BeammlError):
        rollback.rollback(cycle.model, 'nope')   # not a version: LATEST stays
    assert latest_version(cycle.model) == 'v2'


def test_the_command_line_refusals_are_one_line(cycle, tmp_path):
    flags = ['--model', cycle.model, '--work', cycle.work]
    out = run_beamml('cycle', 'assign', '--date', str(DAY), *flags)
    assert out.returncode == 2 and 'cycle assign needs --input' in out.stderr
    out = run_beamml('cycle', 'assign', '--date', str(DAY), '--input', 'x/*.csv', *flags)
    assert out.returncode == 2 and 'has no {date} placeholder' in out.stderr
    out = run_beamml('cycle', 'rollback', '--model', cycle.model)
    assert out.returncode == 2 and 'no promotion to undo' in out.stderr
    out = run_beamml('cycle', 'status', '--work', str(tmp_path / 'none'))
    assert out.returncode == 0 and 'no day of the cycle' in out.stdout


def _monitored(c: steps.Cycle, fired: list[str]) -> None:
    folder = c.folder(DAY, steps.MONITOR)
    _write(folder + 'decision.json', {'retrain': bool(fired), 'fired': fired})
    _write(folder + steps.SUCCESS, {})


def test_retrain_adopts_the_candidate_a_killed_attempt_completed(cycle, tmp_path):
    """retrain.json says training (the versions there were); a version trained on the
    same window appeared since: the retry records it and trains nothing."""
    config = tmp_path / 'monitor.yaml'
    config.write_text("rules:\n  - {name: r, metric: psi, threshold: 0.2}\n"
                      f"retrain: {{input: '{tmp_path}/in/{{date}}/*.csv'}}\n")
    c = steps.Cycle(cycle.input, cycle.model, cycle.work, monitor_config=str(config))
    assigned(c, 'v1')
    _monitored(c, ['r'])
    window = f'{tmp_path}/in/{DAY}/*.csv'
    _write(c.day(DAY, steps.RETRAIN_FILE), {'status': 'training', 'window': window,
                                            'versions_before': list_versions(c.model)})
    trained = CentroidModel([[0.2, 0.0], [5.0, 5.2]], version='v9', input_pattern=window)
    trained.save(c.model, make_latest=False)
    doc = steps.retrain(c, DAY)
    assert (doc['status'], doc['candidate_version'], doc['window']) == ('trained', 'v9', window)
    assert latest_version(c.model) == 'v1'
    assert json.load(open(c.day(DAY, steps.RETRAIN_FILE)))['status'] == 'trained'


def test_retrain_skips_when_no_rule_fired_or_latest_moved(cycle):
    assigned(cycle, 'v1')
    with pytest.raises(BeammlError, match='run the monitor step of the day first'):
        steps.retrain(cycle, DAY)
    _monitored(cycle, [])
    assert steps.retrain(cycle, DAY)['reason'] == 'no retraining rule fired'
    os.remove(cycle.day(DAY, steps.RETRAIN_FILE))
    _monitored(cycle, ['r'])
    set_latest(cycle.model, 'v2')   # promoted (or rolled back) today
    doc = steps.retrain(cycle, DAY)
    assert doc['status'] == 'skipped' and 'LATEST moved from v1 to v2 today' in doc['reason']
