"""Dated, atomic, idempotent batch runs (pipelines/_platform/runs.py), on local files.

What is checked, for every case: what is under the destination (nothing, or one
complete copy with ``_SUCCESS`` last), whether a lock or a temporary prefix is left,
and the exit code (0 done or already done, 2 error, 4 no input, 5 locked). The
Cloud Storage versions of these cases are in test_dated_runs_gcs.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from beamml.pipelines._platform import runs
from beamml.pipelines.__main__ import main
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import CentroidModel
from faults import COMMIT_STAGES, kill_at, pause_at
from inprocess import run_beamml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_points(folder, n_files=3, rows=4, bad_rows=0, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = 0
    for f in range(n_files):
        lines = ['id,x,y']
        for _ in range(rows):
            lines.append(f'{ids},{rng.normal():.6f},{rng.normal():.6f}')
            ids += 1
        lines += [f'bad{f}_{i},q,1' for i in range(bad_rows)]
        with open(os.path.join(folder, f'p{f}.csv'), 'w') as fh:
            fh.write('\n'.join(lines) + '\n')
    return ids


def tree(folder):
    """Every file under folder, relative, sorted."""
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(out)


def said(err):
    """stderr without the progress log lines (HH:MM:SS beamml: ...)."""
    return '\n'.join(x for x in err.splitlines()
                     if not re.match(r'\d\d:\d\d:\d\d beamml: ', x)) + '\n'


def rows_of(pattern):
    return sum(pq.read_table(p).num_rows for p in glob.glob(pattern))


@pytest.fixture
def model_dir(tmp_path):
    d = str(tmp_path / 'models')
    CentroidModel(np.array([[0.0, 0.0], [3.0, 3.0]]), version='v1').save(d)
    return d


# ----------------------------------------------------------------------------- dates

def _args(**kw):
    return argparse.Namespace(**kw)


def test_date_placeholders_are_filled_in_every_path_flag():
    a = _args(date=dt.date(2026, 11, 22), input='in/{date}/*.csv',
              output='out/{date:%Y/%m/%d}/', model='m/{date:%Y%m%d}', k=3)
    runs.fill_dates(a)
    assert (a.input, a.output, a.model) == ('in/2026-11-22/*.csv', 'out/2026/11/22/',
                                            'm/20261122')
    with pytest.raises(BeammlError, match=r'--input in/\{date\}/x has a \{date\} placeholder'):
        runs.fill_dates(_args(date=None, input='in/{date}/x'))


def test_date_today_and_yesterday_are_utc():
    today = dt.datetime.now(dt.timezone.utc).date()
    assert runs.run_date('today') == today
    assert runs.run_date('yesterday') == today - dt.timedelta(days=1)
    assert runs.run_date('2026-02-28') == dt.date(2026, 2, 28)
    for bad in ('2026-02-30', '22/11/2026', 'tomorrow', ''):
        with pytest.raises(argparse.ArgumentTypeError, match='is not a date'):
            runs.run_date(bad)


def test_dated_run_on_the_command_line(tmp_path, capsys):
    n = write_points(str(tmp_path / 'in' / '2026-11-22'))
    out = str(tmp_path / 'out' / '{date}') + '/'
    assert main(['norms', '--input', str(tmp_path / 'in' / '{date}' / '*.csv'),
                 '--output', out, '--date', '2026-11-22']) == 0
    dest = tmp_path / 'out' / '2026-11-22'
    assert rows_of(str(dest / 'part-*.parquet')) == n
    doc = json.loads((dest / '_SUCCESS').read_text())
    assert doc['date'] == '2026-11-22' and doc['destination'] == str(dest) + '/'
    assert main(['norms', '--input', str(tmp_path / 'in' / '{date}' / '*.csv'),
                 '--output', out]) == 2
    assert 'has a {date} placeholder: give --date' in capsys.readouterr().err
    assert main(['norms', '--input', 'x', '--output', out, '--date', 'soon']) == 2
    assert capsys.readouterr().err.splitlines() == [   # one line
        "beamml norms: error: argument --date: 'soon' is not a date: YYYY-MM-DD, today or "
        'yesterday (UTC) (see beamml norms --help)']


# ----------------------------------------------------------------------------- runs

def test_first_run_commits_rerun_skips_overwrite_replaces(tmp_path, capsys):
    n = write_points(str(tmp_path / 'in'), bad_rows=1)
    dest = tmp_path / 'out'
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--output', str(dest) + '/',
             '--max_refused_fraction', '0.5', '--num_shards', '3']
    assert main(flags) == 0
    printed = capsys.readouterr().out
    files = tree(dest)
    assert files == ['_SUCCESS', 'part-00000-of-00003.parquet', 'part-00001-of-00003.parquet',
                     'part-00002-of-00003.parquet', 'part-errors-00000-of-00001.jsonl']
    doc = json.loads((dest / '_SUCCESS').read_text())
    # the commit's own counts are the counters' line
    assert doc['counts'] == {'records_read': n + 3, 'records_ok': n, 'records_refused': 3}
    assert f'records_read={n + 3} records_ok={n} records_refused=3' in printed
    assert sorted(os.path.relpath(p, dest) for p in doc['outputs']) == files[1:]
    assert [i['path'] for i in doc['inputs']] == sorted(glob.glob(str(tmp_path / 'in' / '*.csv')))
    assert all(i['size'] > 0 and i['mtime'] for i in doc['inputs'])
    assert doc['versions']['beamml'] and doc['started'] <= doc['ended']
    assert doc['parameters']['num_shards'] == 3
    assert rows_of(str(dest / 'part-*.parquet')) == n
    # nothing beside the destination but the destination
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']

    stamps = {f: os.stat(dest / f).st_mtime_ns for f in files}
    assert main(flags) == 0
    said = capsys.readouterr().out
    assert f'{dest}/ is complete' in said and 'nothing to do (--overwrite' in said
    assert {f: os.stat(dest / f).st_mtime_ns for f in files} == stamps

    assert main(flags[:-1] + ['1']) == 0   # other flags: still complete, and said so
    assert 'that run had other values of --num_shards' in capsys.readouterr().out

    assert main(flags[:-1] + ['1', '--overwrite']) == 0
    assert tree(dest) == ['_SUCCESS', 'part-00000-of-00001.parquet',
                          'part-errors-00000-of-00001.jsonl']
    assert json.loads((dest / '_SUCCESS').read_text())['run_id'] != doc['run_id']
    assert rows_of(str(dest / 'part-*.parquet')) == n
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']


def test_prefix_destination_owns_prefix_files_only(tmp_path, model_dir, capsys):
    n = write_points(str(tmp_path / 'in'))
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'other.txt').write_text('not ours')
    (tmp_path / 'out' / 'assigned-old-00000-of-00001.parquet').write_text('not ours either')
    out = str(tmp_path / 'out' / 'assigned')
    flags = ['assign', '--input', str(tmp_path / 'in' / '*.csv'), '--model', model_dir,
             '--output', out]
    # a file under the prefix that no beamml run wrote: refused, nothing touched
    assert main(flags) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1
    assert (f'--output {out}: {out}-old-00000-of-00001.parquet was not written by a beamml '
            'run of this destination') in err and '--allow_foreign_files' in err
    assert tree(tmp_path / 'out') == ['assigned-old-00000-of-00001.parquet', 'other.txt']
    assert sorted(os.listdir(tmp_path)) == ['in', 'models', 'out']
    # said explicitly: written beside it, and it is kept
    assert main(flags + ['--allow_foreign_files']) == 0
    assert tree(tmp_path / 'out') == [
        'assigned-00000-of-00001.parquet', 'assigned-_SUCCESS',
        'assigned-errors-00000-of-00001.jsonl', 'assigned-old-00000-of-00001.parquet',
        'assigned-summary.json', 'other.txt']
    assert (tmp_path / 'out' / 'assigned-old-00000-of-00001.parquet').read_text() == \
        'not ours either'
    doc = json.loads((tmp_path / 'out' / 'assigned-_SUCCESS').read_text())
    assert doc['model']['version'] == 'v1' and doc['model']['k'] == 2
    assert doc['counts']['records_ok'] == n
    assert 'cluster sizes' in capsys.readouterr().out
    # an --overwrite replaces the run's own files only
    assert main(flags + ['--allow_foreign_files', '--overwrite']) == 0
    assert (tmp_path / 'out' / 'assigned-old-00000-of-00001.parquet').read_text() == \
        'not ours either' and (tmp_path / 'out' / 'other.txt').read_text() == 'not ours'


def test_no_input_is_exit_4_and_leaves_nothing(tmp_path, capsys):
    dest = tmp_path / 'out'
    assert main(['norms', '--input', str(tmp_path / 'in' / '*.csv'),
                 '--output', str(dest) + '/']) == runs.EXIT_NO_INPUT == 4
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1 and 'no input for this run: no file matches --input' in err
    assert not dest.exists() and os.listdir(tmp_path) == []


def test_wait_for_input_and_ready_marker(tmp_path, capsys):
    folder = tmp_path / 'in'
    flags = ['norms', '--input', str(folder / '*.csv'), '--output', str(tmp_path / 'out') + '/']

    def land():
        time.sleep(1.0)
        write_points(str(folder))
    t = threading.Thread(target=land)
    t.start()
    t0 = time.monotonic()
    assert main(flags + ['--wait_for_input', '30']) == 0
    t.join()
    assert 0.9 < time.monotonic() - t0 < 30
    assert (tmp_path / 'out' / '_SUCCESS').exists()

    marker = ['--input_ready_marker', '_READY', '--output', str(tmp_path / 'out2') + '/']
    t0 = time.monotonic()
    assert main(flags + marker + ['--wait_for_input', '0.6']) == 4
    assert time.monotonic() - t0 >= 0.6
    err = capsys.readouterr().err
    assert f'the marker {folder}/_READY is not there after waiting 0.6 s' in err
    (folder / '_READY').write_text('')
    assert main(flags + marker) == 0
    assert (tmp_path / 'out2' / '_SUCCESS').exists()


def test_above_max_refused_fraction_commits_nothing(tmp_path, capsys):
    write_points(str(tmp_path / 'in'), rows=2, bad_rows=2)
    dest = tmp_path / 'out'
    assert main(['norms', '--input', str(tmp_path / 'in' / '*.csv'),
                 '--output', str(dest) + '/']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1
    assert 'records (50.00%) were refused, above --max_refused_fraction=0.01; nothing was ' \
           f'committed to {dest}/; see {tmp_path}/.beamml-refused-out-' in err
    assert err.rstrip().endswith('/part-errors-*.jsonl')
    # nothing under the destination; the dead letters kept beside it, and only they
    (kept,) = [x for x in os.listdir(tmp_path) if x != 'in']
    assert kept.startswith('.beamml-refused-out-') and not dest.exists()
    (letters,) = glob.glob(err.rstrip().rsplit(' ', 1)[1])
    assert len(open(letters).read().splitlines()) == 6 and tree(tmp_path / kept) == [
        os.path.basename(letters)]
    # a run that commits supersedes them
    assert main(['norms', '--input', str(tmp_path / 'in' / '*.csv'),
                 '--output', str(dest) + '/', '--max_refused_fraction', '0.5']) == 0
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']


def test_worker_exception_leaves_nothing_and_a_rerun_completes(tmp_path, model_dir,
                                                                 monkeypatch):
    from beamml.transforms import assignment
    n = write_points(str(tmp_path / 'in'), n_files=3)
    real, calls = assignment.add_assignment, []

    def failing(batch, *a, **kw):   # a worker error on the 2nd batch of 3
        calls.append(batch.num_rows)
        if len(calls) == 2:
            raise RuntimeError('injected failure on batch 2')
        return real(batch, *a, **kw)
    monkeypatch.setattr(assignment, 'add_assignment', failing)
    flags = ['assign', '--input', str(tmp_path / 'in' / '*.csv'), '--model', model_dir,
             '--output', str(tmp_path / 'out') + '/']
    with pytest.raises(Exception, match='injected failure on batch 2'):
        main(flags)
    assert len(calls) >= 2
    assert not (tmp_path / 'out').exists()
    assert sorted(os.listdir(tmp_path)) == ['in', 'models']   # no lock, no temporary prefix
    monkeypatch.setattr(assignment, 'add_assignment', real)
    assert main(flags) == 0
    assert rows_of(str(tmp_path / 'out' / 'part-*.parquet')) == n


def _cli(args, env=None):
    """``beamml ARGS``: a process of its own when ``env`` is given (a fault point: the
    kill needs a process to kill), in this process otherwise (tests/inprocess.py)."""
    if env is None:
        return run_beamml(*args)
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, '-m', 'beamml', *args], capture_output=True,
                          text=True, env=e, timeout=300)


@pytest.mark.parametrize('stage', [1, 2])
def test_killed_run_leaves_no_success_and_the_next_run_cleans_up(tmp_path, stage):
    """Killed (SIGKILL) in the commit step: before any move (1) or half-way through the
    moves (2). No _SUCCESS either way; the next run takes over the dead run's lock,
    removes its temporary prefix and what it moved, and writes one copy."""
    n = write_points(str(tmp_path / 'in'))
    dest = tmp_path / 'out'
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--output', str(dest) + '/',
             '--num_shards', '4']
    killed = _cli(flags, kill_at(COMMIT_STAGES[stage - 1]))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (dest / '_SUCCESS').exists()
    moved = tree(dest) if dest.exists() else []
    assert (moved == []) == (stage == 1), moved
    left = sorted(os.listdir(tmp_path))
    assert '.beamml-lock-out' in left and any(x.startswith('.beamml-tmp-out-') for x in left)
    again = _cli(flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'taking over the lock' in again.stderr and 'process' in again.stderr
    assert 'left by an earlier run that did not finish' in again.stderr
    assert tree(dest) == ['_SUCCESS'] + [f'part-0000{i}-of-00004.parquet' for i in range(4)] + [
        'part-errors-00000-of-00001.jsonl']
    assert rows_of(str(dest / 'part-*.parquet')) == n
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']


def _lock_doc(pid, expires_in=3600.0, host=None):
    now = dt.datetime.now(dt.timezone.utc)
    return json.dumps({'run_id': 'other-run', 'host': host or socket.gethostname(), 'pid': pid,
                       'started': now.isoformat(),
                       'expires': (now + dt.timedelta(seconds=expires_in)).isoformat()})


def test_a_live_lock_is_exit_5_an_expired_one_is_taken_over(tmp_path, capsys):
    write_points(str(tmp_path / 'in'))
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'),
             '--output', str(tmp_path / 'out') + '/']
    lock = tmp_path / '.beamml-lock-out'
    lock.write_text(_lock_doc(os.getpid()))   # a live process: this one
    assert main(flags) == runs.EXIT_LOCKED == 5
    err = capsys.readouterr().err
    assert 'another run holds' in err and 'run other-run' in err and 'nothing was done' in err
    assert not (tmp_path / 'out').exists() and lock.exists()
    lock.write_text(_lock_doc(None, host='elsewhere'))   # a Dataflow job's: only expiry frees it
    assert main(flags) == 5
    lock.write_text(_lock_doc(None, expires_in=-1, host='elsewhere'))
    assert main(flags + ['--lock_timeout', '60']) == 0
    assert 'expired at' in capsys.readouterr().err
    assert (tmp_path / 'out' / '_SUCCESS').exists() and not lock.exists()


def test_two_runs_at_once_make_one_copy(tmp_path):
    """The first run is held at its commit step (fault point commit.before_moves) while a second
    one starts for the same destination: the second exits 5, the first commits."""
    n = write_points(str(tmp_path / 'in'))
    dest = tmp_path / 'out'
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--output', str(dest) + '/']
    pause = tmp_path / 'pause'
    pause.write_text('')
    env = dict(os.environ, PYTHONPATH=ROOT, **pause_at('commit.before_moves', pause))
    first = subprocess.Popen([sys.executable, '-m', 'beamml', *flags], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(str(pause) + '.reached'):
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.1)
        second = _cli(flags)
        assert second.returncode == 5, second.stderr[-2000:]
        assert 'another run holds' in second.stderr
        assert not dest.exists()
    finally:
        pause.unlink()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert tree(dest) == ['_SUCCESS', 'part-00000-of-00001.parquet',
                          'part-errors-00000-of-00001.jsonl']
    assert rows_of(str(dest / 'part-*.parquet')) == n


def test_evaluate_commits_a_folder_with_its_counts(tmp_path, capsys):
    logs = tmp_path / 'logs.csv'
    logs.write_text('id,truth,prediction\n1,1,1\n2,1,0\n3,0,0\n4,,1\n')
    out = tmp_path / 'eval'
    flags = ['evaluate', '--input', str(logs), '--task', 'classification',
             '--truth_column', 'truth', '--prediction_column', 'prediction',
             '--output', str(out), '--max_refused_fraction', '0.5']
    assert main(flags) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    success = json.loads((out / '_SUCCESS').read_text())
    assert metrics['counts'] == success['counts'] == {
        'records_read': 4, 'records_ok': 3, 'records_refused': 1}
    assert sorted(os.listdir(tmp_path)) == ['eval', 'logs.csv']
    assert main(flags) == 0 and 'is complete' in capsys.readouterr().out


def test_evaluate_of_no_usable_row_still_commits_empty_metrics(tmp_path):
    logs = tmp_path / 'logs.csv'
    logs.write_text('id,truth,prediction\n1,,1\n')
    out = tmp_path / 'eval'
    assert main(['evaluate', '--input', str(logs), '--task', 'classification',
                 '--truth_column', 'truth', '--prediction_column', 'prediction',
                 '--output', str(out), '--max_refused_fraction', '1']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['counts'] == {'records_read': 1, 'records_ok': 0, 'records_refused': 1}
    assert (out / '_SUCCESS').exists()


def test_index_ids_commits_its_three_outputs(tmp_path):
    (tmp_path / 'ev.csv').write_text('user,v\na,1\nb,2\na,3\n,4\n')
    out = tmp_path / 'idx' / 'users'
    assert main(['index_ids', '--input', str(tmp_path / 'ev.csv'), '--id_column', 'user',
                 '--output', str(out), '--max_refused_fraction', '0.5']) == 0
    assert tree(tmp_path / 'idx') == [
        'users-_SUCCESS', 'users-encoded-00000-of-00001.parquet',
        'users-errors-00000-of-00001.jsonl', 'users-id2idx-00000-of-00001.parquet']
    doc = json.loads((tmp_path / 'idx' / 'users-_SUCCESS').read_text())
    assert doc['counts'] == {'records_read': 4, 'records_ok': 3, 'records_refused': 1}


def test_dry_run_touches_no_storage_and_translates_the_commit(tmp_path, capsys):
    write_points(str(tmp_path / 'in'))
    rc = main(['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--feature_columns', 'x,y',
               '--output', 'gs://bkt-out/pred/{date}/', '--date', 'yesterday',
               '--runner', 'DataflowRunner', '--dry_run', 'True', '--project', 'my-project',
               '--region', 'us-central1', '--temp_location', 'gs://bkt-tmp/tmp'])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'Commit' in out and 'WriteNorms' in out
    assert sorted(os.listdir(tmp_path)) == ['in']
