"""Flex Templates: the checked-in metadata is the generator's, from the pipelines' own
parsers; the container's entry submits without waiting; the scheduling examples pass
parameters the templates declare. No network, no Docker, no Airflow."""
from __future__ import annotations

import argparse
import ast
import json
import os
import re

import apache_beam as beam
import pytest

from beamml.transforms.core.errors import BeammlError
from beamml.pipelines._platform import templates
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.main import main_wrapper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'configs', 'templates')
ALL = templates.templates()
DATAFLOW = ['--project=my-project', '--region=us-central1', '--temp_location=gs://bkt-tmp/tmp']


def _checked_in(name: str) -> dict:
    with open(os.path.join(FOLDER, f'{name}.json'), encoding='utf-8') as f:
        return json.load(f)


class _Stop(Exception):
    pass


def _real_parser(pipeline: str) -> argparse.ArgumentParser:
    """The parser ``parse_args`` builds for the pipeline (caught at its first parse)."""
    module = templates.Template(pipeline, pipeline, False).module
    seen = []
    original = argparse.ArgumentParser.parse_known_args

    def catch(self, *a, **kw):
        seen.append(self)
        raise _Stop

    argparse.ArgumentParser.parse_known_args = catch
    try:
        with pytest.raises(_Stop):
            parse_args(templates.options_class(module), [], prog=f'beamml {pipeline}',
                              streaming=True)
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return seen[0]


def test_every_pipeline_has_a_batch_template_and_the_streaming_ones_a_streaming_one():
    assert set(ALL) == {'norms', 'index_ids', 'assign', 'evaluate', 'pca',
                        'assign_streaming', 'evaluate_streaming', 'kmeans_streaming',
                        'monitor', 'monitor_streaming'}
    for name, t in ALL.items():
        assert _checked_in(name)['streaming'] is t.streaming


@pytest.mark.parametrize('name', sorted(ALL))
def test_parameters_are_the_parsers_own_flags(name):
    t = ALL[name]
    parser = _real_parser(t.pipeline)
    dests = [a.dest for a in parser._actions if a.option_strings and a.dest != 'help']
    assert 'config' in dests and 'anonymous_storage' in dests   # parse_args adds them
    group = {a.dest for g in parser._action_groups if g.title == templates.STREAMING_GROUP
             for a in g._group_actions}
    assert bool(group) == (t.pipeline in ('assign', 'evaluate', 'kmeans', 'monitor'))
    from beamml.pipelines._platform.runs import RUN_FLAGS
    left_out = set(templates.NOT_PARAMETERS) | (
        set(getattr(t.module, '_BATCH_ONLY', {})) | set(RUN_FLAGS) if t.streaming else group)
    expected = [a for a in parser._actions   # deprecated names (hidden from --help) are not
                if a.option_strings and a.dest != 'help' and a.dest not in left_out
                and a.help != argparse.SUPPRESS]
    params = _checked_in(name)['parameters']
    assert [p['name'] for p in params] == [a.dest for a in expected]
    # isOptional is argparse's required, and in batch the flags class's REQUIRED_IN_BATCH
    required = set() if t.streaming else set(templates.options_class(t.module).REQUIRED_IN_BATCH
                                             if hasattr(templates.options_class(t.module),
                                                        'REQUIRED_IN_BATCH') else ())
    assert [p['isOptional'] for p in params] == [
        not (a.required or a.dest in required) for a in expected]
    for p in params:
        assert p['label'] and p['helpText']
        assert '%%' not in p['helpText'] and '%(' not in p['helpText']   # as --help shows it


@pytest.mark.parametrize('name', sorted(ALL))
def test_checked_in_metadata_is_the_generators_output(name):
    with open(os.path.join(FOLDER, f'{name}.json'), encoding='utf-8') as f:
        text = f.read()
    assert text == templates.render(ALL[name]), (
        f'configs/templates/{name}.json is not what the pipeline flags give: run make templates')


def test_no_stale_template_files_and_check_mode(tmp_path, capsys):
    have = {f[:-5] for f in os.listdir(FOLDER) if f.endswith('.json')}
    assert have == set(ALL), 'run make templates'
    assert templates.main(['--check', FOLDER]) == 0
    out = tmp_path / 'templates'
    assert templates.main(['--write', str(out)]) == 0
    doc = json.loads((out / 'norms.json').read_text())
    doc['parameters'] = [p for p in doc['parameters'] if p['name'] != 'order']
    (out / 'norms.json').write_text(json.dumps(doc))
    (out / 'old.json').write_text('{}')
    capsys.readouterr()
    assert templates.main(['--check', str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'norms.json (+order)' in err and 'old.json' in err
    assert 'make templates' in err


def _values(action):
    """Values the flag takes: its default and its choices (true/false for a switch)."""
    if templates.takes_no_value(action):
        return ['true', 'false']
    values = [] if action.default is None else [str(action.default)]
    return values + [str(c) for c in action.choices or []]


@pytest.mark.parametrize('name', sorted(ALL))
def test_regexes_take_defaults_and_choices_and_refuse_nonsense(name):
    t = ALL[name]
    actions = {a.dest: a for a in templates.parameter_actions(t)}
    with_regex = 0
    for p in _checked_in(name)['parameters']:
        if 'regexes' not in p:
            continue
        with_regex += 1
        action = actions[p['name']]
        for value in _values(action):
            assert all(re.fullmatch(r, value) for r in p['regexes']), (p['name'], value)
        for bad in ('not a value', '1;2', ''):
            assert not all(re.fullmatch(r, bad) for r in p['regexes']), (p['name'], bad)
    assert with_regex >= 3


def test_regexes_by_type():
    def matches(regex, value):
        return re.fullmatch(regex, value) is not None

    from beamml.pipelines._platform import runs, values
    from beamml.pipelines.kmeans import n_init_flag
    assert matches(runs.run_date.regex, 'yesterday') and matches(runs.run_date.regex, '2026-11-22')
    assert not matches(runs.run_date.regex, '22/11/2026')
    assert matches(templates._INT, '-3') and not matches(templates._INT, '1.5')
    assert matches(templates._NUMBER, '1e-4') and not matches(templates._NUMBER, 'nan')
    assert matches(values.fraction.regex, '0.25') and not matches(values.fraction.regex, '1.5')
    assert matches(values.seconds.regex, '3600') and not matches(values.seconds.regex, '-1')
    assert matches(n_init_flag.regex, 'auto') and not matches(n_init_flag.regex, '0')


def test_flex_arguments_for_flags_without_a_value():
    argv = templates.flex_argv('norms', ['--input=a=b.csv', '--overwrite=true',
                                         '--allow_nan=FALSE', '--ascending=True', '--order=l2'])
    assert argv == ['--input=a=b.csv', '--overwrite', '--ascending', '--order=l2',
                    '--runner=DataflowRunner']
    assert templates.flex_argv('assign', ['--streaming=true', '--runner=X'],
                               streaming=True) == ['--streaming', '--runner=X']
    assert templates.flex_argv('assign', ['--runner', 'X'], streaming=True) == [
        '--runner', 'X', '--streaming']
    # why: argparse refuses a value for a switch; after the translation parse_args takes it
    from beamml.pipelines.norms import NormsOptions
    from beamml.pipelines._platform.cli import parse_args
    with pytest.raises(BeammlError, match="--overwrite: ignored explicit argument 'true'"):
        parse_args(NormsOptions, ['--input=x', '--output=y', '--overwrite=true'],
                          prog='beamml norms')
    args, _ = parse_args(NormsOptions, templates.flex_argv(
        'norms', ['--input=x', '--output=y', '--overwrite=true', '--runner=FnApiRunner']),
        prog='beamml norms')
    assert args.overwrite is True


class _Submitted:
    """What Pipeline.run gives here: a submitted job; waiting for it fails the test."""
    waited = False

    def job_id(self):
        return 'fake-job-id'

    def wait_until_finish(self, duration=None):
        _Submitted.waited = True
        raise AssertionError('the launcher waited for the job (wait_until_finish)')


@pytest.fixture
def submitted(monkeypatch):
    runs = []

    def run(self, test_runner_api='AUTO'):
        runs.append(self.options)
        return _Submitted()

    _Submitted.waited = False
    monkeypatch.setattr(beam.Pipeline, 'run', run)
    # Beam's option check of a real (not dry-run) Dataflow submission asks Cloud Storage
    # whether the temp bucket has soft delete on; the launcher VM can, this test cannot
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    monkeypatch.setattr(GoogleCloudOptions, '_warn_if_soft_delete_policy_enabled',
                        lambda self, arg_name: None)
    return runs


def _points(tmp_path):
    (tmp_path / 'p.csv').write_text('id,a,b\n1,0,0\n2,1,1\n')
    return str(tmp_path / 'p.csv')


def test_launcher_submits_and_does_not_wait(tmp_path, monkeypatch, capsys, submitted):
    monkeypatch.setenv('BEAMML_LAUNCH_ONLY', '1')
    argv = [f'--input={_points(tmp_path)}', f'--output={tmp_path}/out/n',
            '--overwrite=true'] + DATAFLOW   # as the Flex launcher passes them: no runner
    rc = templates.launch(argv, {templates.TEMPLATE_VARIABLE: 'norms'})
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert 'submitted Dataflow job fake-job-id; not waiting for it' in out.out
    assert not _Submitted.waited
    from apache_beam.options.pipeline_options import StandardOptions
    assert [o.view_as(StandardOptions).runner for o in submitted] == ['DataflowRunner']


def test_the_same_launch_without_launch_only_would_wait(tmp_path, monkeypatch, submitted):
    """The fake result catches a wait: without BEAMML_LAUNCH_ONLY the run waits."""
    monkeypatch.delenv('BEAMML_LAUNCH_ONLY', raising=False)
    argv = [f'--input={_points(tmp_path)}', f'--output={tmp_path}/out/n'] + DATAFLOW
    with pytest.raises(AssertionError, match='wait_until_finish'):
        templates.launch(argv, {templates.TEMPLATE_VARIABLE: 'norms'})
    assert _Submitted.waited


def test_batch_kmeans_refuses_launch_only_hence_no_template(tmp_path, monkeypatch, capsys,
                                                           submitted):
    monkeypatch.setenv('BEAMML_LAUNCH_ONLY', '1')
    from beamml.pipelines import kmeans
    rc = main_wrapper(kmeans.run, [f'--input={_points(tmp_path)}', '--k=2',
                                          f'--model={tmp_path}/m',
                                          '--runner=DataflowRunner'] + DATAFLOW)
    err = capsys.readouterr().err
    assert rc == 2 and 'BEAMML_LAUNCH_ONLY' in err and not submitted
    assert 'kmeans' in templates.NO_BATCH_TEMPLATE and 'kmeans' not in ALL


def test_launcher_without_a_template_name_is_one_line(capsys):
    assert templates.launch([], {}) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'BEAMML_TEMPLATE' in err


def _dockerfile() -> list[tuple[str, str]]:
    with open(os.path.join(FOLDER, 'Dockerfile'), encoding='utf-8') as f:
        lines = [ln.strip() for ln in f.read().replace('\\\n', ' ').splitlines()]
    return [tuple(ln.split(None, 1)) for ln in lines if ln and not ln.startswith('#')]


def test_dockerfile_is_a_python_launcher_that_does_not_wait():
    steps = _dockerfile()
    assert steps[0][0] == 'FROM'
    assert re.fullmatch(r'gcr\.io/dataflow-templates-base/python311-template-launcher-base'
                        r'(:[\w.-]+)?', steps[0][1])
    env = dict(s[1].split('=', 1) for s in steps if s[0] == 'ENV')
    assert env['BEAMML_LAUNCH_ONLY'] == '1'
    assert env['BEAMML_TEMPLATE'] == '${BEAMML_TEMPLATE}'
    assert ('ARG', 'BEAMML_TEMPLATE') in steps
    copies = {}   # image path -> repository path
    for kind, rest in steps:
        if kind == 'COPY':
            *sources, dest = rest.split()
            for s in sources:
                assert os.path.exists(os.path.join(ROOT, s)), s
                copies[dest.rstrip('/') + '/' + os.path.basename(s) if dest.endswith('/')
                       else dest] = s
    py_file = env['FLEX_TEMPLATE_PYTHON_PY_FILE']
    assert copies.get(py_file) == 'configs/templates/launch.py'
    assert os.path.isfile(os.path.join(ROOT, copies[py_file]))
    assert copies.get(env['FLEX_TEMPLATE_PYTHON_SETUP_FILE']) == 'setup.py'
    workdir = [s[1] for s in steps if s[0] == 'WORKDIR'][-1]
    assert any(s[0] == 'RUN' and re.search(r'pip install .*' + re.escape(workdir) + r'/?$', s[1])
               for s in steps)   # installs beamml from the copied setup.py
    with open(os.path.join(ROOT, copies[py_file]), encoding='utf-8') as f:
        assert 'launch(sys.argv[1:])' in f.read()


def _airflow_body() -> tuple[dict, ast.Module]:
    with open(os.path.join(ROOT, 'configs', 'airflow', 'beamml_daily_assign.py'),
              encoding='utf-8') as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == [
                'BODY']:
            return ast.literal_eval(node.value), tree
    raise AssertionError('no module-level BODY literal')


def _scheduler_body() -> dict:
    with open(os.path.join(ROOT, 'configs', 'scheduler', 'assign_daily.json'),
              encoding='utf-8') as f:
        return json.load(f)


ENVIRONMENT = {'numWorkers', 'maxWorkers', 'zone', 'serviceAccountEmail', 'tempLocation',
               'machineType', 'additionalExperiments', 'network', 'subnetwork',
               'additionalUserLabels', 'kmsKeyName', 'ipConfiguration', 'workerRegion',
               'workerZone', 'enableStreamingEngine', 'flexrsGoal', 'stagingLocation',
               'sdkContainerImage', 'diskSizeGB', 'autoscalingAlgorithm',
               'dumpHeapOnOom', 'saveHeapDumpsToGcsPath', 'launcherMachineType'}


@pytest.mark.parametrize('which', ['scheduler', 'airflow'])
def test_scheduling_bodies_launch_the_assign_template(which):
    body = _scheduler_body() if which == 'scheduler' else _airflow_body()[0]
    launch = body['launchParameter']
    assert set(launch) <= {'jobName', 'containerSpecGcsPath', 'parameters', 'environment',
                           'launchOptions', 'transformNameMappings', 'update'}
    assert launch['jobName']
    path = launch['containerSpecGcsPath']
    assert path.startswith('gs://') and path.endswith('/assign.json')
    template = {p['name']: p for p in _checked_in('assign')['parameters']}
    params = launch['parameters']
    assert set(params) <= set(template), set(params) - set(template)
    assert {n for n, p in template.items() if not p['isOptional']} <= set(params)
    assert {'input', 'output', 'model', 'date'} <= set(params)   # required in batch too
    assert all(isinstance(v, str) for v in params.values())   # the API takes strings
    assert '{date}' in params['input'] and '{date}' in params['output']
    assert params['date'] == ('yesterday' if which == 'scheduler' else '{{ ds }}')
    for name, value in params.items():
        value = value.replace('{{ ds }}', '2026-11-22')   # as Airflow renders it
        for r in template[name].get('regexes', []):
            assert re.fullmatch(r, value), (name, value)
    env = launch['environment']
    assert set(env) <= ENVIRONMENT and env['tempLocation'].startswith('gs://')


def test_airflow_dag_uses_the_flex_template_operator_with_the_body():
    _, tree = _airflow_body()
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert ('airflow.providers.google.cloud.operators.dataflow',
            'DataflowStartFlexTemplateOperator') in imports
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, 'id', None) == 'DataflowStartFlexTemplateOperator']
    assert len(calls) == 1
    kw = {k.arg: k.value for k in calls[0].keywords}
    assert getattr(kw['body'], 'id', None) == 'BODY'
    assert {'project_id', 'location', 'task_id'} <= set(kw)
