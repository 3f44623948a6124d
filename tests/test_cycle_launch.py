"""``beamml cycle assign|monitor --template_parameters``: the Flex Template launch of a step
that an orchestrator starts itself (configs/airflow/beamml_daily_cycle.py's dataflow mode).
The oracle: the parameters, as the Flex launcher turns them into a command line
(``templates.flex_argv``), are the very flags the step runs the pipeline with, and each is
a parameter the checked-in template (configs/templates/*.json) declares and accepts."""
from __future__ import annotations

import datetime as dt
import json
import os
import re

import pytest
from inprocess import run_beamml

from beamml.pipelines._platform import templates
from beamml.pipelines.cycle import launch, steps
from beamml.transforms.model import CentroidModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = dt.date(2026, 11, 13)


@pytest.fixture
def cycle(tmp_path):
    mdir = str(tmp_path / 'models')
    CentroidModel([[0.0, 0.0], [5.0, 5.0]], version='v1').save(mdir)
    CentroidModel([[0.5, 0.0], [5.0, 5.5]], version='v2').save(mdir, make_latest=False)
    return steps.Cycle(str(tmp_path / 'in' / '{date}' / '*.csv'), mdir, str(tmp_path / 'work'),
                       monitor_config=str(tmp_path / 'monitor.yaml'),
                       gate=str(tmp_path / 'gate.yaml'), input_ready_marker='_READY',
                       wait_for_input=30.0)


def _write(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(doc, f)


def _declared(template: str) -> dict:
    with open(os.path.join(ROOT, 'configs', 'templates', f'{template}.json'),
              encoding='utf-8') as f:
        return {p['name']: p for p in json.load(f)['parameters']}


def _check_against_the_template(out: dict, argv: list[str]) -> None:
    declared = _declared(out['template'])
    params = out['parameters']
    assert set(params) <= set(declared)
    assert {n for n, p in declared.items() if not p['isOptional']} <= set(params)
    for name, value in params.items():
        assert isinstance(value, str)
        for regex in declared[name].get('regexes', []):
            assert re.fullmatch(regex, value), (name, value)
    launched = templates.flex_argv(out['template'], [f'--{k}={v}' for k, v in params.items()])
    assert launched == [f'{k}={v}' for k, v in zip(argv[0::2], argv[1::2])] + [
        '--runner=DataflowRunner']


def test_assign_launch_shadows_the_candidate_of_the_day_before(cycle):
    out = launch.template_launch(cycle, DAY, 'assign')
    assert (out['template'], out['complete'], out['date']) == ('assign', False, str(DAY))
    assert 'shadow_model' not in out['parameters']   # no candidate yesterday
    _check_against_the_template(out, steps.assign_argv(cycle, DAY))
    _write(cycle.day(DAY - dt.timedelta(days=1), steps.RETRAIN_FILE),
           {'status': 'trained', 'candidate_version': 'v2'})
    out = launch.template_launch(cycle, DAY, 'assign')
    p = out['parameters']
    assert (p['shadow_model'], p['gate']) == (os.path.join(cycle.model, 'v2'), cycle.gate)
    assert (p['date'], p['output'], p['model']) == (str(DAY), cycle.folder(DAY, 'assign'),
                                                    cycle.model)
    assert (p['input_ready_marker'], p['wait_for_input']) == ('_READY', '30.0')
    _check_against_the_template(out, steps.assign_argv(cycle, DAY))
    _write(cycle.folder(DAY, 'assign') + steps.SUCCESS, {'model': {'version': 'v1'}})
    assert launch.template_launch(cycle, DAY, 'assign')['complete'] is True


def test_monitor_launch_uses_the_version_the_days_assign_used(cycle):
    with pytest.raises(Exception, match='run the assign step of the day first'):
        launch.template_launch(cycle, DAY, 'monitor')
    _write(cycle.folder(DAY, 'assign') + steps.SUCCESS, {'model': {'version': 'v1'}})
    out = launch.template_launch(cycle, DAY, 'monitor')
    p = out['parameters']
    assert (out['template'], out['complete']) == ('monitor', False)
    assert p['model'] == os.path.join(cycle.model, 'v1')
    assert p['history'] == os.path.join(cycle.work, '*', 'monitor') + '/'
    assert p['monitor_config'] == cycle.monitor_config
    _check_against_the_template(out, steps.monitor_argv(cycle, DAY))


def test_the_command_prints_one_json_line_and_refuses_other_steps(cycle, tmp_path):
    flags = ['--date', str(DAY), '--input', cycle.input, '--model', cycle.model,
             '--work', cycle.work, '--gate', cycle.gate]
    out = run_beamml('cycle', 'assign', *flags, '--template_parameters')
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    doc = json.loads(line)
    assert doc['parameters']['output'] == cycle.folder(DAY, 'assign')
    assert not os.path.exists(cycle.work)   # nothing ran, nothing written
    for step in ('wait', 'gate', 'retrain', 'day'):
        bad = run_beamml('cycle', step, *flags, '--template_parameters')
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert 'goes with assign or monitor' in bad.stderr
    with pytest.raises(Exception, match='runs where the cycle runs'):
        launch.template_launch(cycle, DAY, 'gate')
