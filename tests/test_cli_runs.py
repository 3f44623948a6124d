"""What every run does at the command line: temp folders, folder prefixes, flag checks, storage auth."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest

from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import private_tempdir
from beamml.pipelines.__main__ import main
from faults import pause_at


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
                 '--model', str(tmp_path / 'm')]) == 0
    assert os.listdir(own_tmp) == []


def test_private_tempdir_is_scoped_and_nests(own_tmp):
    with private_tempdir() as outer:
        assert tempfile.gettempdir() == outer and os.path.dirname(outer) == str(own_tmp)
        with private_tempdir() as inner:
            assert inner == outer
        assert os.path.isdir(outer)
    assert tempfile.gettempdir() == str(own_tmp) and not os.path.exists(outer)


def test_the_folder_of_a_killed_run_is_removed_by_the_next_run_and_nothing_else(
        points_csv, tmp_path, own_tmp):
    """SIGKILL leaves a run's temporary folder behind; the next run removes it (its lock
    is free, its run dead) and keeps a live run's folder, a young one, one with no lock
    file and one whose lock file is a symbolic link."""
    import fcntl
    import signal
    import time
    code = ('import os, signal; from beamml.pipelines._platform.runners import '
            'private_tempdir\nwith private_tempdir() as f:\n'
            '    open(os.path.join(f, "x.bin"), "wb").write(b"0" * 1000)\n'
            '    print(f, flush=True); os.kill(os.getpid(), signal.SIGKILL)')
    killed = []
    for _ in range(2):
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             env=dict(os.environ, TMPDIR=str(own_tmp)), timeout=120)
        assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
        killed.append(out.stdout.strip())
    old, young = killed
    lock = '.beamml-run.lock'
    os.utime(os.path.join(old, lock), (time.time() - 120,) * 2)
    live = own_tmp / 'beamml-run-live'
    live.mkdir()
    (live / lock).write_text('')
    os.utime(live / lock, (time.time() - 120,) * 2)
    held = os.open(live / lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)   # as its run does while it lives
    (own_tmp / 'beamml-run-nolock').mkdir()
    linked = own_tmp / 'beamml-run-linked'
    linked.mkdir()
    (linked / lock).symlink_to(tmp_path / 'elsewhere')
    (tmp_path / 'elsewhere').write_text('')
    os.utime(tmp_path / 'elsewhere', (time.time() - 120,) * 2)
    try:
        assert main(['norms', '--input', points_csv, '--output', str(tmp_path / 'n')]) == 0
    finally:
        os.close(held)
    assert sorted(os.listdir(own_tmp)) == sorted([
        os.path.basename(young), 'beamml-run-live', 'beamml-run-nolock', 'beamml-run-linked'])


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
    assert main(['norms', '--input', points_csv, '--output', str(tmp_path / 'n'),
                 '--max_refused_fraction', value]) == 2
    assert capsys.readouterr().err.splitlines() == [   # one line
        f"beamml norms: error: argument --max_refused_fraction: {value!r} is not a fraction "
        'between 0 and 1 (see beamml norms --help)']


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
            'kmeans': ['--k', '2', '--model', str(tmp_path / 'm')]}[name]


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


# ----------------------------------------------------------------------------- stopped runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _points_parquet(path, n=20000, d=8):
    import numpy as np
    import pyarrow as pa
    X = np.random.default_rng(0).normal(size=(n, d))
    pq.write_table(pa.table({'id': np.arange(n), 'features': pa.array(
        list(X), pa.list_(pa.float64(), d))}), path)
    return str(path)


def _beamml(*args, env=None, **kw):
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.Popen([sys.executable, '-m', 'beamml', *map(str, args)], env=e,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _said(err):
    """stderr without the progress lines (HH:MM:SS beamml: ...)."""
    import re
    return [x for x in err.splitlines() if not re.match(r'\d\d:\d\d:\d\d beamml: ', x)]


@pytest.mark.parametrize('signal_name, code, word', [('SIGINT', 130, 'interrupted'),
                                                     ('SIGTERM', 143, 'terminated')])
def test_a_run_stopped_by_a_signal_is_one_line_and_cleans_up(signal_name, code, word,
                                                             tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM while the run is in its graph (held at the commit step,
    with its lock and temporary prefix in place): one line, exit 128 + the signal, and
    the clean-up of a failed run: no lock, no temporary prefix, nothing committed."""
    import signal
    import time
    src = _points_parquet(tmp_path / 'pts.parquet', n=50)
    pause = tmp_path / 'pause'
    pause.write_text('')
    run = _beamml('norms', '--input', src, '--output', tmp_path / 'out' / 'norms',
                  env=pause_at('commit.before_moves', pause))
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(str(pause) + '.reached'):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.05)
        left = sorted(os.listdir(tmp_path / 'out'))
        assert left[0] == '.beamml-lock-norms' and left[1].startswith('.beamml-tmp-norms-')
        run.send_signal(getattr(signal, signal_name))
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == code, err[-3000:]
    assert _said(err) == [f'beamml norms: {word}'], err[-3000:]
    assert os.listdir(tmp_path / 'out') == []


def _can_mount_a_small_disk(folder) -> bool:
    import shutil
    if not shutil.which('unshare'):
        return False
    probe = subprocess.run(['unshare', '-rm', 'sh', '-c',
                            f'mount -t tmpfs -o size=64k tmpfs {folder}'],
                           capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_is_one_line_and_the_run_cleans_up(tmp_path):
    """The output on a 256 KB tmpfs (mounted in a private mount namespace, so the real
    disk is never filled): the sink's write fails with ENOSPC. One line naming the file,
    exit 2, and a dated run's clean-up: no lock, no temporary prefix."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    if not _can_mount_a_small_disk(disk):
        pytest.skip('cannot mount a tmpfs here (unshare -rm / mount -t tmpfs not permitted)')
    src = _points_parquet(tmp_path / 'pts.parquet')   # ~1.6 MB of CSV norms: more than 256 KB
    script = (f'mount -t tmpfs -o size=256k tmpfs {disk} && cd {tmp_path} && '
              f'{sys.executable} -m beamml norms --input {src} --output {disk}/out/norms '
              f'--output_format csv; rc=$?; echo "left: $(ls -A {disk}/out)" >&2; exit $rc')
    out = subprocess.run(['unshare', '-rm', 'sh', '-c', script], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    said = _said(out.stderr)
    assert out.returncode == 2, out.stderr[-3000:]
    assert said[-1] == 'left: ', out.stderr[-3000:]   # no lock, no temporary prefix
    assert len(said) == 2 and said[0].startswith(
        f'beamml norms: error: no space left on device writing {disk}/out/'
        '.beamml-tmp-norms-'), out.stderr[-3000:]
    assert said[0].endswith('.norms.csv'), said[0]


def test_full_disk_in_a_sink_names_the_file():
    """Without a small disk: a shard's file handle whose writes fail with ENOSPC."""
    import errno
    import io
    import pyarrow as pa
    from beamml.transforms.core.errors import BeammlError
    from beamml.transforms.io.sinks import ShardWriter, _LinesSink, _PathHandle

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, 'No space left on device')

    batch = pa.record_batch({'id': [1, 2]})
    for fmt in ('parquet', 'csv', 'jsonl'):
        w = ShardWriter(Full(), fmt, None, path='/d/out-00000.' + fmt)
        w.write(batch)
        with pytest.raises(BeammlError, match=rf'^no space left on device writing '
                                              rf'/d/out-00000\.{fmt}$'):
            w.close()
    sink = _LinesSink('/d/out-errors')
    with pytest.raises(BeammlError, match='^no space left on device writing /d/e.jsonl$'):
        sink.write_encoded_record(_PathHandle(Full(), '/d/e.jsonl'), b'{}')


@pytest.mark.parametrize('error, line', [
    (OSError(28, 'No space left on device', '/d/lock'),
     'no space left on device writing /d/lock'),
    (RuntimeError("OSError: [Errno 28] No space left on device [while running 'Commit']"),
     "no space left on device (OSError: [Errno 28] No space left on device [while running "
     "'Commit'])"),
])
def test_main_wrapper_words_a_full_disk_in_one_line(error, line, capsys):
    def run(argv):
        raise error
    assert main_wrapper(run, [], prog='beamml norms') == 2
    assert capsys.readouterr().err == f'beamml norms: error: {line}\n'


def test_main_wrapper_keeps_the_traceback_of_a_bug():
    def run(argv):
        raise RuntimeError('a bug')
    with pytest.raises(RuntimeError, match='a bug'):
        main_wrapper(run, [], prog='beamml norms')
