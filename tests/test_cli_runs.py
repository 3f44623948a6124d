"""What every run does at the command line: temp folders, folder prefixes, flag checks, storage auth."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest

from beamml.pipelines import common
from beamml.pipelines.__main__ import main


@pytest.fixture
def points_csv(tmp_path):
    path = tmp_path / 'pts.csv'
    path.write_text('id,a,b\n1,3,4\n2,0,1\n3,-1,0\n')
    return str(path)


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """The system temp folder of this test: what a run leaves there can be seen."""
    d = tmp_path / 'systmp'
    d.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(d))
    return d


def test_runs_leave_no_temporary_folders(points_csv, tmp_path, own_tmp, capsys):
    assert main(['norms', '--input', points_csv, '--output', str(tmp_path / 'n')]) == 0
    # refused while the graph is built: Beam's Pipeline() folder was already made
    assert main(['norms', '--input', points_csv, '--output', str(tmp_path / 'n'),
                 '--feature_columns', 'nope', '--overwrite']) == 2
    assert main(['kmeans', '--input', points_csv, '--k', '2',
                 '--model_dir', str(tmp_path / 'm')]) == 0
    assert os.listdir(own_tmp) == []


def test_private_tempdir_is_scoped_and_nests(own_tmp):
    with common.private_tempdir() as outer:
        assert tempfile.gettempdir() == outer and os.path.dirname(outer) == str(own_tmp)
        with common.private_tempdir() as inner:
            assert inner == outer
        assert os.path.isdir(outer)
    assert tempfile.gettempdir() == str(own_tmp) and not os.path.exists(outer)


def test_output_ending_in_slash_is_a_folder_of_part_shards(points_csv, tmp_path, capsys):
    out = str(tmp_path / 'out') + '/'
    assert main(['norms', '--input', points_csv, '--output', out]) == 0
    names = sorted(os.path.basename(p) for p in glob.glob(out + '*'))
    assert names[0] == '_SUCCESS' and all(n.startswith('part-') for n in names[1:]), names
    (shard,) = glob.glob(out + 'part-?????-of-?????.parquet')
    assert pq.read_table(shard).num_rows == 3
    assert f'{out}part-' in capsys.readouterr().out


@pytest.mark.parametrize('value', ['nan', '-0.1', '1.5', 'x'])
def test_max_refused_fraction_must_be_a_fraction(value, points_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['norms', '--input', points_csv, '--output', str(tmp_path / 'n'),
              '--max_refused_fraction', value])
    assert e.value.code == 2
    assert '--max_refused_fraction' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['norms', 'index_ids', 'assign', 'evaluate', 'kmeans'])
def test_streaming_is_refused_in_one_line(name, points_csv, tmp_path, capsys):
    """norms and index_ids run in batch only; assign, evaluate and kmeans stream from Pub/Sub or
    watched files, not from --input alone (tests/test_streaming.py)."""
    output = [] if name == 'kmeans' else ['--output', str(tmp_path / 'o')]
    rc = main([name, '--input', points_csv] + output + _required(name, tmp_path)
              + ['--streaming'])
    err = capsys.readouterr().err
    expected = ('--streaming reads --input_subscription, --input_topic, or --input PATTERN '
                'with --watch_interval S' if name in ('assign', 'evaluate', 'kmeans')
                else 'runs in batch only: --streaming is not supported')
    assert rc == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1


def _required(name, tmp_path):
    return {'norms': [], 'index_ids': ['--id_column', 'id'],
            'assign': ['--model', str(tmp_path / 'models')],
            'evaluate': ['--task', 'classification'],
            'kmeans': ['--k', '2', '--model_dir', str(tmp_path / 'm')]}[name]


def test_emulator_host_means_anonymous_storage_at_once(gcs_bucket, points_csv):
    """A CLI process against the emulator, with no credentials: no 25 s of auth back-off."""
    env = {k: v for k, v in os.environ.items() if k != 'GOOGLE_APPLICATION_CREDENTIALS'}
    env.pop('NO_GCE_CHECK', None)
    out = subprocess.run([sys.executable, '-m', 'beamml', 'norms', '--input', points_csv,
                          '--output', f'{gcs_bucket}/out/n'], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'records_read=3 records_ok=3' in out.stdout
    assert 'credentials' not in out.stderr.lower(), out.stderr[-2000:]
