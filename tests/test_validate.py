"""`beamml validate`: every pipeline translates to a Dataflow job with no network at all."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from beamml.pipelines import validate
from beamml.pipelines.__main__ import main
from beamml.transforms.model import CentroidModel

DATAFLOW = ['--project', 'my-project', '--region', 'us-central1',
            '--temp_location', 'gs://beamml-bkt/tmp']


def _offline(cmd, tmpdir, **kw):
    """Run ``cmd`` in a network namespace with no network (loopback down), where possible,
    with ``tmpdir`` as its system temp folder."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('STORAGE_EMULATOR_HOST', 'GOOGLE_APPLICATION_CREDENTIALS')}
    env['TMPDIR'] = str(tmpdir)
    if shutil.which('unshare') and subprocess.run(['unshare', '-n', 'true'],
                                                  capture_output=True).returncode == 0:
        cmd = ['unshare', '-n'] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, **kw)


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
    return {
        'norms': ['--input', f'{d}/p.csv', '--output', 'gs://beamml-bkt/out/n'],
        'index_ids': ['--input', f'{d}/events.csv', '--id_column', 'user_id',
                      '--output', 'gs://beamml-bkt/out/i'],
        'assign': ['--input', f'{d}/p.csv', '--model', f'{d}/models',
                   '--output', 'gs://beamml-bkt/out/a'],
        'kmeans': ['--input', f'{d}/p.csv', '--k', '2', '--max_iter', '3',
                   '--model_dir', 'gs://beamml-bkt/models'],
        'evaluate': ['--input', f'{d}/logs.csv', '--task', 'classification',
                     '--output', 'gs://beamml-bkt/out/e'],
    }


@pytest.mark.parametrize('name', ['norms', 'index_ids', 'assign', 'kmeans', 'evaluate'])
def test_validate_every_pipeline_offline(name, inputs, tmp_path):
    cmd = [sys.executable, '-m', 'beamml', 'validate', name] + _cases(inputs)[name] + DATAFLOW
    cmd += ['--setup_file', './setup.py']   # staged as an sdist in a temporary folder
    out = _offline(cmd, tmp_path, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'type=batch' in out.stdout
    assert 'sdk_image: ' in out.stdout and 'beam_python' in out.stdout
    assert 'steps:' in out.stdout
    assert 'Traceback' not in out.stderr
    assert os.listdir(tmp_path) == []   # no temporary folder left behind


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
    with pytest.raises(validate.common.BeammlError, match='drop --runner'):
        validate.dry_run_argv(['--runner', 'FnApiRunner'])
    with pytest.raises(validate.common.BeammlError, match='never submits a job'):
        validate.dry_run_argv(['--dry_run=False'])
    assert validate.dry_run_argv(['--runner=DataflowRunner']) == [
        '--runner=DataflowRunner', '--dry_run', 'True']


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
                   '--model_dir', 'gs://beamml-bkt/models'],
    }


@pytest.mark.parametrize('name', ['assign', 'evaluate', 'kmeans'])
def test_streaming_pipelines_translate_offline_to_streaming_jobs(name, inputs, tmp_path):
    cmd = [sys.executable, '-m', 'beamml', 'validate', name] + \
        _streaming_cases(inputs)[name] + DATAFLOW
    out = _offline(cmd, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'type=streaming' in out.stdout and 'Traceback' not in out.stderr
    assert 'ReadPubSub' in out.stdout


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
