"""The command line, run configs, the Make targets, and the offline Dataflow translation."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines import norms
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines.__main__ import main, pipelines
from beamml.transforms.core.errors import BeammlError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def points_csv(tmp_path):
    path = tmp_path / 'pts.csv'
    path.write_text('id,a,b\n1,3,4\n2,0,1\n3,-1,0\n')
    return str(path)


def test_help_lists_every_pipeline_with_a_line(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    found = pipelines()
    assert {'norms', 'demo'} <= set(found)
    for name, desc in found.items():
        assert desc, f'pipelines/{name}.py needs a one-line docstring'
        assert re.search(rf'^\s+{name}\s+\S', out, re.M)


def test_unknown_pipeline_and_unknown_flag(points_csv, tmp_path, capsys):
    assert main(['nope']) == 2
    assert 'unknown pipeline' in capsys.readouterr().err
    assert main(['norms', '--input', points_csv, '--output', str(tmp_path / 'o'),
                 '--bogus', '1']) == 2
    assert capsys.readouterr().err.splitlines() == [
        'beamml norms: error: unknown flag(s): --bogus 1 (see beamml norms --help)']


def test_clear_error_for_missing_input_is_one_line(tmp_path, capsys):
    rc = main(['norms', '--input', str(tmp_path / 'none*.csv'), '--output', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    # a dated run's "no input" exit code (pipelines/_platform/runs.py), one line
    assert rc == 4 and 'no file matches --input' in err and 'Traceback' not in err
    assert [x for x in err.splitlines() if 'error' in x] == [err.splitlines()[-1]]


def test_console_script_runs(points_csv, tmp_path):
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'beamml'), 'norms',
                          '--input', points_csv, '--output', str(tmp_path / 'n')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'records_read=3 records_ok=3 records_refused=0' in out.stdout


def test_config_file_flags_and_command_line_override(points_csv, tmp_path):
    cfg = tmp_path / 'run.yaml'
    cfg.write_text(yaml.safe_dump({'runner': 'DirectRunner', 'input': points_csv,
                                   'output': str(tmp_path / 'from_config'),
                                   'output_format': 'csv', 'allow_nan': True}))
    args, options = parse_args(norms.NormsOptions,
                                      ['--config', str(cfg), '--output_format', 'parquet'],
                                      prog='t')
    assert args.input == points_csv and args.output_format == 'parquet' and args.allow_nan
    assert options.view_as(beam.options.pipeline_options.StandardOptions).runner == 'FnApiRunner'
    assert args.config == str(cfg)


def test_config_unknown_key_is_named(points_csv, tmp_path):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('input: x\nnum_shardz: 3\n')
    with pytest.raises(BeammlError, match="unknown key 'num_shardz'"):
        parse_args(norms.NormsOptions, ['--config', str(cfg)], prog='t')


@pytest.mark.parametrize('name', ['local.yaml', 'dataflow_batch.yaml'])
def test_shipped_configs_have_only_known_keys(name, points_csv, tmp_path):
    path = os.path.join(ROOT, 'configs', name)
    cfg = yaml.safe_load(open(path))
    placeholders = []   # the Dataflow config's placeholders are refused as Dataflow would
    if cfg.get('runner') == 'DataflowRunner':
        # (a dry run: else Beam asks Cloud Storage about the temp bucket, ~100 s offline)
        placeholders = ['--project', 'my-project', '--temp_location', 'gs://bkt/tmp',
                        '--dry_run', 'True']
    args, options = parse_args(
        norms.NormsOptions, ['--config', path, '--input', points_csv, '--output', 'o']
        + placeholders, prog='t')
    all_opts = options.get_all_options()
    for key, value in cfg.items():
        assert key in all_opts, key


_DATAFLOW_DRY = ['--runner', 'DataflowRunner', '--dry_run', 'True', '--project', 'my-project',
                 '--region', 'us-central1', '--temp_location', 'gs://bkt-tmp/tmp']


def test_a_setup_file_that_is_not_there_is_one_line_naming_the_path_looked_up(
        points_csv, tmp_path, monkeypatch, capsys):
    """The README's ./setup.py from outside the repository: Beam's stager would raise a
    RuntimeError traceback; one line says which path was looked up, and where beamml's
    own setup.py is."""
    monkeypatch.chdir(tmp_path)
    rc = main(['norms', '--input', points_csv, '--output', 'gs://bkt-out/n',
               '--setup_file', './setup.py'] + _DATAFLOW_DRY)
    err = capsys.readouterr().err
    assert rc == 2 and err == (
        f'beamml norms: error: --setup_file ./setup.py: no file at {tmp_path}/setup.py, '
        f"relative to the current folder {tmp_path}; give the path of beamml's setup.py "
        f"(beamml's own: {ROOT}/setup.py), the package Dataflow workers install\n"), err
    rc = main(['norms', '--input', points_csv, '--output', 'gs://bkt-out/n',
               '--setup_file', points_csv] + _DATAFLOW_DRY)
    err = capsys.readouterr().err
    assert rc == 2 and 'from a file named setup.py (or pyproject.toml)' in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize('name', ['dataflow_batch.yaml', 'dataflow_streaming.yaml'])
def test_a_config_setup_file_is_relative_to_the_config_folder(name, points_csv, tmp_path,
                                                              monkeypatch):
    """The shipped Dataflow configs work from any folder: their setup_file is relative to
    configs/; one given on the command line stays relative to the current folder."""
    from apache_beam.options.pipeline_options import SetupOptions
    monkeypatch.chdir(tmp_path)
    argv = ['--config', os.path.join(ROOT, 'configs', name), '--input', points_csv,
            '--output', 'gs://bkt-out/n', '--project', 'my-project', '--temp_location',
            'gs://bkt-tmp/tmp', '--dry_run', 'True']
    streaming = 'streaming' in name
    _, options = parse_args(norms.NormsOptions, argv, prog='t', streaming=streaming)
    assert options.view_as(SetupOptions).setup_file == os.path.join(ROOT, 'setup.py')
    with pytest.raises(BeammlError, match=r'^--setup_file setup\.py: no file at '):
        parse_args(norms.NormsOptions, argv + ['--setup_file', 'setup.py'], prog='t',
                          streaming=streaming)


def test_a_config_setup_file_that_is_not_there_names_the_config(points_csv, tmp_path):
    cfg = tmp_path / 'cfg' / 'dataflow.yaml'
    cfg.parent.mkdir()
    cfg.write_text('runner: DataflowRunner\nsetup_file: ./setup.py\n')
    with pytest.raises(BeammlError) as e:
        parse_args(norms.NormsOptions, [
            '--config', str(cfg), '--input', points_csv, '--output', 'gs://bkt-out/n',
            '--project', 'my-project', '--region', 'us-central1',
            '--temp_location', 'gs://bkt-tmp/tmp', '--dry_run', 'True'], prog='t')
    assert str(e.value).startswith(
        f'--setup_file {tmp_path}/cfg/setup.py (from {cfg}): no file at '
        f"{tmp_path}/cfg/setup.py; give the path of beamml's setup.py"), str(e.value)


def test_local_config_runs_with_two_workers(points_csv, tmp_path):
    out = str(tmp_path / 'n')
    norms.run(['--config', os.path.join(ROOT, 'configs', 'local.yaml'),
               '--input', points_csv, '--output', out])
    (path,) = [m.path for m in FileSystems.match([out + '-?????-of-?????.parquet'])[0]
               .metadata_list]
    assert sorted(pq.read_table(path).column('l2').to_pylist()) == [1.0, 1.0, 5.0]


def test_make_targets_and_ci():
    makefile = open(os.path.join(ROOT, 'Makefile')).read()
    for target in ('demo:', 'test:', 'bench:'):
        assert re.search(rf'^{target}', makefile, re.M), target
    assert 'python3 -m venv' in makefile.replace('$(PYTHON)', 'python3')
    ci = open(os.path.join(ROOT, '.ci', 'run')).read()
    assert re.search(r'^make test$', ci, re.M)


def test_dataflow_translation_offline(gcs_bucket, tmp_path, monkeypatch):
    """The norms job translates to a Dataflow batch job with our labels; nothing is submitted."""
    with FileSystems.create(f'{gcs_bucket}/in/a.csv') as f:
        f.write(b'id,a,b\n1,2,3\n')
    monkeypatch.chdir(ROOT)
    args, options = parse_args(norms.NormsOptions, [
        '--input', f'{gcs_bucket}/in/*.csv', '--feature_columns', 'a,b',
        '--output', f'{gcs_bucket}/out/n',
        '--runner', 'DataflowRunner', '--dry_run', 'True', '--project', 'beamml-test',
        '--region', 'us-central1', '--temp_location', f'{gcs_bucket}/tmp',
        '--setup_file', './setup.py'], prog='t')
    p = beam.Pipeline(options=options)
    norms.build(p, args)
    job = p.run().job
    assert job.proto.type == 1  # JOB_TYPE_BATCH
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {'ReadPoints', 'ComputeNorms', 'WriteNorms', 'WriteErrors'} <= names
    env = list(job.proto_pipeline.components.environments.values())[0]
    assert b'beam_python' in env.payload
    staged = b''.join(d.role_payload for d in env.dependencies)
    assert b'workflow.tar.gz' in staged  # the --setup_file package


def _dataflow_options(bucket):
    return ['--runner', 'DataflowRunner', '--dry_run', 'True', '--project', 'beamml-test',
            '--region', 'us-central1', '--temp_location', f'{bucket}/tmp']


@pytest.mark.parametrize('name', ['assign', 'kmeans', 'evaluate_classification',
                                  'evaluate_ranking'])
def test_every_pipeline_translates_to_a_dataflow_job(name, gcs_bucket):
    """Each pipeline's graph builds as a Dataflow batch job offline (nothing is submitted)."""
    import numpy as np
    from beamml.pipelines import assign, evaluate, kmeans
    from beamml.pipelines._platform.cli import parse_args
    from beamml.transforms.model import CentroidModel
    with FileSystems.create(f'{gcs_bucket}/in/p.csv') as f:
        f.write(b'id,a,b\n1,0,0\n2,1,1\n3,5,5\n4,6,6\n')
    with FileSystems.create(f'{gcs_bucket}/logs/c.csv') as f:
        f.write(b'truth,prediction,q_id,predicted_rank,truth_relevance\n1,0,1,0,1\n0,0,1,1,0\n')
    flags = _dataflow_options(gcs_bucket)
    if name == 'assign':
        model_dir = f'{gcs_bucket}/models'
        CentroidModel(np.array([[0.0, 0.0], [5.0, 5.0]])).save(model_dir)
        args, options = parse_args(assign.AssignOptions, flags + [
            '--input', f'{gcs_bucket}/in/*.csv', '--feature_columns', 'a,b',
            '--model', model_dir,
            '--output', f'{gcs_bucket}/out/a'], prog='t')
        labels = {'ReadPoints', 'WriteErrors'}
        build = assign.build
    elif name == 'kmeans':
        args, options = parse_args(kmeans.KMeansOptions, flags + [
            '--input', f'{gcs_bucket}/in/*.csv', '--feature_columns', 'a,b', '--k', '2',
            '--max_iter', '3',
            '--model', f'{gcs_bucket}/models'], prog='t')
        labels = {'ReadPoints', 'KMeans'}

        def build(p, a):   # the first block's job (each later block is a job of its own)
            return kmeans.build(p, a, cache_dir=f'{gcs_bucket}/tmp/beamml-kmeans/v1')
    else:
        task = name.split('_')[1]
        args, options = parse_args(evaluate.EvaluateOptions, flags + [
            '--input', f'{gcs_bucket}/logs/*.csv', '--task', task,
            '--output', f'{gcs_bucket}/out/e'], prog='t')
        labels = set()
        build = evaluate.build
    p = beam.Pipeline(options=options)
    build(p, args)
    job = p.run().job
    assert job.proto.type == 1  # JOB_TYPE_BATCH
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert labels <= names, sorted(n for n in names if '/' not in n)
    if name == 'kmeans':
        assert {'KMeans/KMeansIteration0', 'KMeans/KMeansIteration2'} <= names, \
            sorted(n for n in names if n.count('/') == 1)
