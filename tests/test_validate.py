"""`beamml validate`: every pipeline translates to a Dataflow job with no network at all."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import one_sdist_build_at_a_time
from offline import no_network_reason, run_offline

from beamml.pipelines import validate
from beamml.transforms.core.errors import BeammlError
from beamml.pipelines.__main__ import main
from beamml.transforms.model import CentroidModel

DATAFLOW = ['--project', 'my-project', '--region', 'us-central1',
            '--temp_location', 'gs://beamml-bkt/tmp']


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('validate')
    (d / 'p.csv').write_text('id,a,b\n1,0,0\n2,1,1\n3,5,5\n4,6,6\n')
    (d / 'logs.csv').write_text('truth,prediction,q_id,predicted_rank,truth_relevance\n'
                                '1,0,1,0,1\n0,0,1,1,0\n')
    (d / 'events.csv').write_text('user_id,item\nu1,a\nu2,b\n')
    CentroidModel(np.array([[0.0, 0.0], [5.0, 5.0]])).save(str(d / 'models'))
    return d


def _cases(d):
    # a dry run reads no input: a CSV's feature columns come from the flags
    return {
        'norms': ['--input', f'{d}/p.csv', '--feature_columns', 'a,b',
                  '--output', 'gs://beamml-bkt/out/n'],
        'index_ids': ['--input', f'{d}/events.csv', '--id_column', 'user_id',
                      '--output', 'gs://beamml-bkt/out/i'],
        'assign': ['--input', f'{d}/p.csv', '--feature_columns', 'a,b',
                   '--model', f'{d}/models', '--output', 'gs://beamml-bkt/out/a'],
        'kmeans': ['--input', f'{d}/p.csv', '--feature_columns', 'a,b', '--k', '2',
                   '--max_iter', '3', '--model', 'gs://beamml-bkt/models'],
        'evaluate': ['--input', f'{d}/logs.csv', '--task', 'classification',
                     '--output', 'gs://beamml-bkt/out/e'],
    }


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = ['norms', 'index_ids', 'assign', 'kmeans', 'evaluate']
STREAMING = ['assign', 'evaluate', 'kmeans']


@pytest.fixture(scope='module')
def offline(inputs, tmp_path_factory):
    """Every pipeline's ``validate`` (batch, one staging ``--setup_file`` as an sdist, and
    streaming), run with no network in one process (tests/offline.py), each case with a
    temporary folder of its own."""
    cases = {}
    for name in BATCH:
        # norms also stages beamml as an sdist (--setup_file) in a temporary folder
        staged = ['--setup_file', './setup.py'] if name == 'norms' else []
        cases[f'batch:{name}'] = {
            'argv': ['validate', name, *_cases(inputs)[name], *DATAFLOW, *staged],
            'cwd': ROOT, 'tmpdir': str(tmp_path_factory.mktemp(f'tmp-{name}'))}
    for name in STREAMING:
        cases[f'streaming:{name}'] = {
            'argv': ['validate', name, *_streaming_cases(inputs)[name], *DATAFLOW],
            'cwd': None, 'tmpdir': str(tmp_path_factory.mktemp(f'tmp-s-{name}'))}
    with one_sdist_build_at_a_time():   # the sdist is built in this checkout (conftest)
        return cases, run_offline(cases, tmp_path_factory.mktemp('offline'))


@pytest.mark.parametrize('name', BATCH)
def test_validate_every_pipeline_offline(name, offline):
    cases, results = offline
    out = results[f'batch:{name}']
    assert out['returncode'] == 0, out['stderr'][-2000:]
    assert 'type=batch' in out['stdout']
    assert 'sdk_image: ' in out['stdout'] and 'beam_python' in out['stdout']
    assert 'steps:' in out['stdout']
    assert 'Traceback' not in out['stderr']
    assert os.listdir(cases[f'batch:{name}']['tmpdir']) == []   # no temporary folder left


@pytest.mark.parametrize('flags, message', [
    (['--project', 'p', '--region', 'us-central1', '--temp_location', 'gs://beamml-bkt/tmp'],
     'Dataflow would refuse'),
    (['--project', 'my-project', '--region', 'us-central1', '--temp_location', 'gs://b/tmp'],
     "'b' is not a valid bucket name"),
    (['--project', 'my-project', '--region', 'us-central1'], 'needs --temp_location'),
])
def test_validate_refuses_what_dataflow_would_in_one_line(flags, message, inputs, capsys):
    rc = main(['validate', 'norms'] + _cases(inputs)['norms'] + flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_validate_usage_and_unknown_pipeline(capsys):
    assert main(['validate']) == 0
    assert 'beamml validate <pipeline>' in capsys.readouterr().out
    assert main(['validate', 'demo']) == 2
    assert "cannot validate 'demo'" in capsys.readouterr().err
    with pytest.raises(BeammlError, match='drop --runner'):
        validate.dry_run_argv(['--runner', 'FnApiRunner'])
    with pytest.raises(BeammlError, match='never submits a job'):
        validate.dry_run_argv(['--dry_run=False'])
    assert validate.dry_run_argv(['--runner=DataflowRunner']) == [
        '--runner=DataflowRunner', '--dry_run', 'True',
        '--experiments', 'disable_logging_submission_environment']
    # a user's experiments stay; the one that skips Beam's pip freeze is added once
    own = ['--experiments=a,disable_logging_submission_environment', '--experiments', 'b']
    assert validate.dry_run_argv(own) == [*own, '--runner', 'DataflowRunner',
                                          '--dry_run', 'True']


def _streaming_cases(d):
    sub = 'projects/my-project/subscriptions/points'
    return {
        'assign': ['--streaming', '--input_subscription', sub, '--model', f'{d}/models',
                   '--output_topic', 'projects/my-project/topics/out',
                   '--dead_letter_topic', 'projects/my-project/topics/dlq'],
        'evaluate': ['--streaming', '--task', 'ranking', '--input_subscription', sub,
                     '--window_size', '300', '--window_period', '60',
                     '--output', 'gs://beamml-bkt/out/e'],
        'kmeans': ['--streaming', '--k', '2', '--dimension', '2', '--input_subscription', sub,
                   '--model', 'gs://beamml-bkt/models'],
    }


@pytest.mark.parametrize('name', STREAMING)
def test_streaming_pipelines_translate_offline_to_streaming_jobs(name, offline):
    out = offline[1][f'streaming:{name}']
    assert out['returncode'] == 0, out['stderr'][-2000:]
    assert 'type=streaming' in out['stdout'] and 'Traceback' not in out['stderr']
    assert 'ReadPubSub' in out['stdout']


@pytest.mark.parametrize('name', ['assign', 'evaluate', 'kmeans'])
def test_streaming_jobs_are_unbounded_with_no_default_trigger_global_group(name, inputs):
    """The job's PCollections are unbounded (but the one-element model/Create inputs), and
    no GroupByKey groups an unbounded input in the global window with the default trigger
    (Dataflow would hold it for ever)."""
    from apache_beam.portability.api import beam_runner_api_pb2 as pb
    from beamml.pipelines import assign, evaluate, kmeans
    module = {'assign': assign, 'evaluate': evaluate, 'kmeans': kmeans}[name]
    argv = validate.dry_run_argv(_streaming_cases(inputs)[name] + DATAFLOW)
    result = module.run(argv)
    assert int(result.job.proto.type) == 2   # JOB_TYPE_STREAMING
    proto = result.job.proto_pipeline
    comps = proto.components
    unbounded = [c for c in comps.pcollections.values()
                 if c.is_bounded == pb.IsBounded.UNBOUNDED]
    assert len(unbounded) > len(comps.pcollections) / 2
    for t in comps.transforms.values():
        if t.spec.urn != 'beam:transform:group_by_key:v1':
            continue
        for pc_id in t.inputs.values():
            pc = comps.pcollections[pc_id]
            if pc.is_bounded != pb.IsBounded.UNBOUNDED:
                continue
            ws = comps.windowing_strategies[pc.windowing_strategy_id]
            fn = ws.window_fn.urn
            default = ws.trigger.WhichOneof('trigger') == 'default'
            assert not (fn == 'beam:window_fn:global_windows:v1' and default), t.unique_name


# ----------------------------------------------------------------------------- no storage

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A local model directory with its baseline (beamml kmeans), a prediction-logs
    baseline, a gate and a monitoring config: the local files a dry run is built from."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from beamml.pipelines import kmeans, monitor
    d = tmp_path_factory.mktemp('trained')
    X = np.random.default_rng(0).normal(size=(200, 2))
    pq.write_table(pa.table({'id': np.arange(200), 'features': pa.array(
        list(X), pa.list_(pa.float64(), 2))}), d / 'p.parquet')
    (d / 'logs.jsonl').write_text(''.join(f'{{"id": {i}, "truth": {i % 2}, "prediction": '
                                          f'{i % 3 == 0:d}}}\n' for i in range(20)))
    (d / 'rank.csv').write_text('q_id,predicted_rank,truth_relevance\n1,0,1\n1,1,0\n2,0,1\n')
    (d / 'events.csv').write_text('user_id,item\nu1,a\nu2,b\n')
    kmeans.run(['--input', str(d / 'p.parquet'), '--k', '2', '--max_iter', '3',
                '--model', str(d / 'km')])
    monitor.run(['--make_baseline', '--task', 'classification', '--input',
                 str(d / 'logs.jsonl'), '--output', str(d / 'logs_baseline') + '/'])
    (d / 'gate.yaml').write_text('thresholds:\n  - metric: agreement\n    lower_bound: 0.5\n')
    (d / 'monitor.yaml').write_text('thresholds: {psi: 0.3}\n')
    return d


SUB = 'projects/my-project/subscriptions/points'


def _every_pipeline(d, data):
    """Each pipeline's flags (batch, and streaming from a watched pattern): ``data`` says
    where the input is, ``data('x.parquet')``; the model, baseline, gate and monitoring
    config are local files."""
    km, watch = str(d / 'km'), ['--watch_interval', '10']
    return {
        'norms': ['norms', '--input', data('p.parquet'), '--dimension', '2',
                  '--output', 'gs://bkt-out/n'],
        'index_ids': ['index_ids', '--input', data('events.csv'), '--id_column', 'user_id',
                      '--output', 'gs://bkt-out/i'],
        'assign': ['assign', '--input', data('p.parquet'), '--model', km,
                   '--shadow_model', km, '--gate', str(d / 'gate.yaml'),
                   '--output', 'gs://bkt-out/a'],
        'evaluate': ['evaluate', '--input', data('rank.csv'), '--task', 'ranking',
                     '--output', 'gs://bkt-out/e/'],
        'kmeans': ['kmeans', '--input', data('p.parquet'), '--dimension', '2', '--k', '2',
                   '--model', 'gs://bkt-out/models'],
        'pca': ['pca', '--input', data('p.parquet'), '--dimension', '2',
                '--n_components', '2', '--output', 'gs://bkt-out/p/'],
        'monitor': ['monitor', '--input', data('p.parquet'), '--model', km, '--config',
                    str(d / 'monitor.yaml'), '--output', 'gs://bkt-out/m/'],
        'monitor_logs': ['monitor', '--task', 'classification', '--input', data('logs.jsonl'),
                         '--baseline', str(d / 'logs_baseline'), '--output', 'gs://bkt-out/l/'],
        'assign_streaming': ['assign', '--streaming', '--input', data('p.parquet'), *watch,
                             '--model', km, '--output', 'gs://bkt-out/sa'],
        'evaluate_streaming': ['evaluate', '--streaming', '--task', 'classification',
                               '--input', data('logs.jsonl'), *watch, '--window_size', '60',
                               '--output', 'gs://bkt-out/se'],
        'kmeans_streaming': ['kmeans', '--streaming', '--input', data('p.parquet'), *watch,
                             '--k', '2', '--dimension', '2', '--model', 'gs://bkt-out/sk'],
        'monitor_streaming': ['monitor', '--streaming', '--input', data('p.parquet'), *watch,
                              '--model', km, '--window_size', '60', '--output',
                              'gs://bkt-out/sm'],
    }


EVERY = ['norms', 'index_ids', 'assign', 'evaluate', 'kmeans', 'pca', 'monitor',
         'monitor_logs', 'assign_streaming', 'evaluate_streaming', 'kmeans_streaming',
         'monitor_streaming']


@pytest.fixture(scope='module')
def dry_runs_of_gs_input(trained, tmp_path_factory):
    """Every pipeline's dry run on a gs:// input, with no network at all (one process
    under ``unshare -n``, tests/offline.py)."""
    why = no_network_reason()
    if why:
        pytest.skip(why)
    argv = _every_pipeline(trained, lambda name: f'gs://bkt-in/data/*{os.path.splitext(name)[1]}')
    cases = {case: {'argv': ['validate', *argv[case], *DATAFLOW], 'cwd': None,
                    'tmpdir': str(tmp_path_factory.mktemp(f'tmp-{case}'))} for case in EVERY}
    return run_offline(cases, tmp_path_factory.mktemp('offline-gs'), require_unshare=True)


@pytest.mark.parametrize('case', EVERY)
def test_a_dry_run_of_gs_input_touches_no_storage(case, dry_runs_of_gs_input):
    """With no network at all (``unshare -n``), every pipeline's dry run on a gs:// input
    ends in seconds with the job: the input is neither listed nor read (its layout comes
    from the flags), and no other object is touched (before: 145-232 s of retries)."""
    out = dry_runs_of_gs_input[case]
    assert out['returncode'] == 0, out['stderr'][-2000:]
    kind = 'streaming' if case.endswith('_streaming') else 'batch'
    assert re.search(rf'^job: \S+ type={kind} steps=\d+$', out['stdout'], re.M), out['stdout']
    assert 'Traceback' not in out['stderr'] and out['seconds'] < 30, (
        out['seconds'], out['stderr'][-2000:])


class _Built(Exception):
    """Raised instead of running a pipeline: its transforms' names."""


def _built_steps(monkeypatch, argv) -> list[str]:
    from apache_beam import Pipeline
    import importlib

    def capture(self, *a, **kw):
        names = sorted(t.unique_name for t in
                       self.to_runner_api().components.transforms.values())
        raise _Built(names)
    monkeypatch.setattr(Pipeline, 'run', capture)
    module = importlib.import_module(f'beamml.pipelines.{argv[0]}')
    with pytest.raises(_Built) as e:
        module.run(argv[1:])
    return e.value.args[0]


@pytest.mark.parametrize('case', EVERY)
def test_a_dry_run_builds_the_steps_of_a_real_run(case, trained, tmp_path, monkeypatch):
    """The graph a dry run translates (the layout from the flags, nothing read) has the
    steps, every one by its name, of the graph a real run builds on the same flags with
    the input read (local files here; each pipeline is stopped when it would run)."""
    monkeypatch.chdir(tmp_path)
    argv = _every_pipeline(trained, lambda name: str(trained / name))[case]
    local = [a.replace('gs://bkt-out/', f'{tmp_path}/out/') for a in argv]
    real = _built_steps(monkeypatch, local)
    dry = _built_steps(monkeypatch, local + DATAFLOW + ['--runner', 'DataflowRunner',
                                                         '--dry_run', 'True'])
    assert dry == real
    assert len(real) > 20


@pytest.mark.parametrize('argv, message', [
    (['norms', '--input', 'gs://bkt-in/x/*.parquet', '--output', 'gs://bkt-out/n'],
     'a dry run reads no input, so the layout of gs://bkt-in/x/*.parquet must come from '
     'the flags: pass --dimension (the number of features)'),
    (['norms', '--input', 'gs://bkt-in/x/*.csv', '--output', 'gs://bkt-out/n'],
     'must come from the flags: pass --feature_columns'),
    (['norms', '--input', 'gs://bkt-in/x/*', '--dimension', '2', '--output', 'gs://bkt-out/n'],
     'must come from the flags: pass --input_format'),
    (['assign', '--input', 'gs://bkt-in/x/*.parquet', '--model', 'gs://bkt-m/models',
      '--output', 'gs://bkt-out/a'],
     '--model gs://bkt-m/models: a dry run reads nothing from Cloud Storage, and the job is '
     'built from this file: give a local copy of it (--model PATH) to translate the job'),
    (['monitor', '--input', 'gs://bkt-in/x/*.parquet', '--model', 'MODEL', '--config',
      'gs://bkt-c/monitor.yaml', '--output', 'gs://bkt-out/m/'],
     '--monitor_config gs://bkt-c/monitor.yaml: a dry run reads nothing from Cloud Storage'),
    (['kmeans', '--input', 'gs://bkt-in/x/*.parquet', '--init', 'gs://bkt-c/c.npy',
      '--model', 'gs://bkt-out/models'], '--init gs://bkt-c/c.npy: a dry run reads'),
    (['norms', '--config', 'gs://bkt-c/run.yaml', '--input', 'gs://bkt-in/x/*.parquet',
      '--dimension', '2', '--output', 'gs://bkt-out/n'], '--config gs://bkt-c/run.yaml: a dry'),
])
def test_what_a_dry_run_cannot_know_is_one_line_naming_the_flag(argv, message, trained,
                                                                 capsys):
    argv = [str(trained / 'km') if a == 'MODEL' else a for a in argv]
    assert main(['validate'] + argv + DATAFLOW) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
