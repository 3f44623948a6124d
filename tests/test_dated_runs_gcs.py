"""Daily inference over Cloud Storage, end to end against the storage emulator.

Each test runs ``beamml`` (as a process where it runs beside the test or is given a
fault point, in this process otherwise) on a storage emulator of this module's own (it
is stopped and started again by the outage test), which honours ``ifGenerationMatch``
like Cloud Storage (conftest). What is checked is what a reader
of the bucket sees: the objects under the destination, ``_SUCCESS``, and what is left
beside it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import pause_at
from inprocess import run_beamml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = '2026-11-22'


class Storage:
    """A gcp-storage-emulator server on a fixed port that can stop and start again with
    the same objects."""

    def __init__(self):
        from gcp_storage_emulator.server import create_server
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.port = s.getsockname()[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self.server = create_server('127.0.0.1', self.port, in_memory=True)
        self.server.start()

    def stop(self):
        self.server.stop()

    def start(self):
        from gcp_storage_emulator.server import APIThread
        self.server._api = APIThread('127.0.0.1', self.port, self.server._storage)
        self.server.start()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        return storage.Client(project='test', credentials=AnonymousCredentials(),
                              client_options={'api_endpoint': self.url})


@pytest.fixture(scope='module')
def gcs(gcs_emulator):   # gcs_emulator: the emulator is installed, preconditions honoured
    s = Storage()
    yield s
    s.stop()


@pytest.fixture
def bucket(gcs):
    name = f'bkt-{uuid.uuid4().hex[:10]}'
    gcs.client().create_bucket(name)
    return name


def put(gcs, bucket, name, data: bytes):
    gcs.client().bucket(bucket).blob(name).upload_from_string(data)


def objects(gcs, bucket, prefix=''):
    """{name: generation} of the objects under prefix."""
    return {b.name: b.generation for b in gcs.client().list_blobs(bucket, prefix=prefix)}


def read(gcs, bucket, name) -> bytes:
    return gcs.client().bucket(bucket).blob(name).download_as_bytes()


def parquet_points(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    buf = io.BytesIO()
    pq.write_table(pa.table({'id': np.arange(seed * 1000, seed * 1000 + n),
                             'features': pa.array(list(X), pa.list_(pa.float64(), 2))}), buf)
    return buf.getvalue()


def land_day(gcs, bucket, date=DATE, files=3, rows=5):
    for f in range(files):
        put(gcs, bucket, f'incoming/{date}/p{f}.parquet', parquet_points(rows, f))
    return files * rows


@contextlib.contextmanager
def on_emulator(gcs):
    """``STORAGE_EMULATOR_HOST`` pointing at this module's server, for code run in this
    process."""
    saved = os.environ.get('STORAGE_EMULATOR_HOST')
    os.environ['STORAGE_EMULATOR_HOST'] = gcs.url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop('STORAGE_EMULATOR_HOST', None)
        else:
            os.environ['STORAGE_EMULATOR_HOST'] = saved


def save_model(gcs, bucket):
    from beamml.pipelines._platform.runners import use_anonymous_storage
    from beamml.transforms.model import CentroidModel
    with on_emulator(gcs):
        use_anonymous_storage()
        CentroidModel(np.array([[0., 0.], [2., 2.]]), version='v7').save(
            f'gs://{bucket}/models')
    return f'gs://{bucket}/models'


def beamml(gcs, *args, env=None, popen=False):
    """``beamml ARGS`` on this module's storage server: as a process of its own when it
    runs beside the test (``popen``) or needs environment variables read at start-up
    (``env``: fault points, retry budgets); otherwise in this process (tests/inprocess.py),
    which spares the 2-3 s a new Python spends importing Beam."""
    if env is None and not popen:
        with on_emulator(gcs):
            return run_beamml(*args)
    e = dict(os.environ, STORAGE_EMULATOR_HOST=gcs.url, PYTHONPATH=ROOT, **(env or {}))
    cmd = [sys.executable, '-m', 'beamml', *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, env=e, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=e, text=True, capture_output=True, timeout=300)


def settled(gcs, bucket, prefix, quiet=1.5, timeout=30):
    """The objects under ``prefix`` once none has appeared or changed for ``quiet``
    seconds: a failed run in this process may still have uploads in flight."""
    deadline = time.monotonic() + timeout
    seen = objects(gcs, bucket, prefix)
    since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.25)
        now = objects(gcs, bucket, prefix)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def last_line(err):
    return err.strip().splitlines()[-1]


def daily(bucket, model, *extra):
    return ['assign', '--input', f'gs://{bucket}/incoming/{{date}}/*.parquet',
            '--output', f'gs://{bucket}/predictions/{{date}}/', '--model', model,
            '--date', DATE, *extra]


def assigned_rows(gcs, bucket, date=DATE):
    names = [n for n in objects(gcs, bucket, f'predictions/{date}/')
             if re.search(r'/part-\d{5}-of-\d{5}\.parquet$', n)]
    return sum(pq.read_table(io.BytesIO(read(gcs, bucket, n))).num_rows for n in names)


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, 'the run never reached its commit step'
        time.sleep(0.1)


def test_daily_assign_commits_once_skips_the_rerun_and_overwrites(gcs, bucket):
    n = land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    first = beamml(gcs, *daily(bucket, model))
    assert first.returncode == 0, first.stderr[-3000:]
    day = objects(gcs, bucket, f'predictions/{DATE}/')
    assert sorted(day) == [f'predictions/{DATE}/{x}' for x in (
        '_SUCCESS', 'part-00000-of-00001.parquet', 'part-errors-00000-of-00001.jsonl',
        'part-summary.json')]
    assert assigned_rows(gcs, bucket) == n
    doc = json.loads(read(gcs, bucket, f'predictions/{DATE}/_SUCCESS'))
    assert doc['date'] == DATE and doc['model']['version'] == 'v7'
    assert doc['counts'] == {'records_read': n, 'records_ok': n, 'records_refused': 0}
    assert f'records_read={n} records_ok={n} records_refused=0' in first.stdout
    inputs = objects(gcs, bucket, f'incoming/{DATE}/')
    assert {i['path']: int(i['generation']) for i in doc['inputs']} == {
        f'gs://{bucket}/{k}': v for k, v in inputs.items()}
    assert all(i['size'] > 0 for i in doc['inputs'])
    # nothing else in the bucket: no lock, no temporary prefix
    assert {k.split('/')[0] for k in objects(gcs, bucket)} == {'incoming', 'models',
                                                                'predictions'}
    assert sorted({k.split('/')[1] for k in objects(gcs, bucket, 'predictions/')}) == [DATE]

    again = beamml(gcs, *daily(bucket, model))
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'is complete' in again.stdout and 'nothing to do' in again.stdout
    assert objects(gcs, bucket, f'predictions/{DATE}/') == day   # same generations

    over = beamml(gcs, *daily(bucket, model, '--overwrite'))
    assert over.returncode == 0, over.stderr[-3000:]
    replaced = objects(gcs, bucket, f'predictions/{DATE}/')
    assert sorted(replaced) == sorted(day)
    assert all(replaced[k] != day[k] for k in day)
    assert json.loads(read(gcs, bucket, f'predictions/{DATE}/_SUCCESS'))['run_id'] != \
        doc['run_id']
    assert assigned_rows(gcs, bucket) == n


def test_no_input_for_the_date_is_exit_4(gcs, bucket):
    model = save_model(gcs, bucket)
    land_day(gcs, bucket, date='2026-11-21')
    out = beamml(gcs, *daily(bucket, model))
    assert out.returncode == 4, out.stderr[-3000:]
    assert last_line(out.stderr) == (
        f'beamml assign: error: no input for this run: no file matches --input '
        f'gs://{bucket}/incoming/{DATE}/*.parquet (exit code 4; --wait_for_input SECONDS '
        'to wait for it)')
    assert objects(gcs, bucket, 'predictions/') == {}


def test_wait_for_input_until_the_ready_marker_lands(gcs, bucket):
    model = save_model(gcs, bucket)
    n = land_day(gcs, bucket)
    proc = beamml(gcs, *daily(bucket, model, '--input_ready_marker', '_READY',
                              '--wait_for_input', '120'), popen=True)
    # the marker lands once the run says it waits for it (not after a fixed sleep, which
    # a loaded machine can outlast before the run even looks: no wait, no such line)
    seen = []
    while not any('waiting for input: the marker' in line for line in seen):
        seen.append(proc.stderr.readline())
        assert seen[-1], ''.join(seen)[-3000:]   # it ended (or closed stderr) before waiting
    assert proc.poll() is None   # still waiting for the marker
    put(gcs, bucket, f'incoming/{DATE}/_READY', b'')
    out, err = proc.communicate(timeout=300)
    err = ''.join(seen) + err
    assert proc.returncode == 0, err[-3000:]
    assert 'waiting for input: the marker' in err
    assert assigned_rows(gcs, bucket) == n


def test_two_runs_at_once_one_commits_the_other_exits_5(gcs, bucket, tmp_path):
    """The lock is a generation-matched create: the first run is held at its commit step
    while the second starts; the second finds the lock and leaves; one copy results."""
    n = land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    pause = tmp_path / 'pause'
    pause.write_text('')
    first = beamml(gcs, *daily(bucket, model), env=pause_at('commit.before_moves', pause),
                   popen=True)
    try:
        wait_for(str(pause) + '.reached', first)
        lock = objects(gcs, bucket, f'predictions/.beamml-lock-{DATE}')
        assert len(lock) == 1
        second = beamml(gcs, *daily(bucket, model))
        assert second.returncode == 5, second.stderr[-3000:]
        assert 'another run holds' in last_line(second.stderr)
        assert objects(gcs, bucket, f'predictions/{DATE}/') == {}
        assert objects(gcs, bucket, f'predictions/.beamml-lock-{DATE}') == lock
    finally:
        pause.unlink()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert assigned_rows(gcs, bucket) == n
    assert len([k for k in objects(gcs, bucket, f'predictions/{DATE}/')
                if k.endswith('_SUCCESS')]) == 1
    assert set(objects(gcs, bucket, 'predictions/')) == set(
        objects(gcs, bucket, f'predictions/{DATE}/'))


def test_storage_stopped_mid_run_then_a_rerun_completes(gcs, bucket, tmp_path):
    """The server stops while the run is at its commit step: one line, exit 2, no
    _SUCCESS; started again, the next run takes over the dead run's lock, removes its
    temporary prefix and writes one copy."""
    n = land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    pause = tmp_path / 'pause'
    pause.write_text('')
    run = beamml(gcs, *daily(bucket, model), popen=True,
                 env={**pause_at('commit.before_moves', pause),
                      'BEAMML_STORAGE_RETRY_SECONDS': '3'})
    try:
        wait_for(str(pause) + '.reached', run)
        gcs.stop()
        pause.unlink()
        _, err = run.communicate(timeout=300)
    finally:
        gcs.start()
    assert run.returncode == 2, err[-3000:]
    line = last_line(err)
    assert line.startswith('beamml assign: error: gs://') and 'Cloud Storage did not answer' \
        in line and 'Traceback' not in err
    left = objects(gcs, bucket, 'predictions/')
    assert not [k for k in left if k.startswith(f'predictions/{DATE}/')]
    assert any('.beamml-tmp-' in k for k in left) and any('.beamml-lock-' in k for k in left)

    again = beamml(gcs, *daily(bucket, model))
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'taking over the lock' in again.stderr
    assert assigned_rows(gcs, bucket) == n
    assert set(objects(gcs, bucket, 'predictions/')) == set(
        objects(gcs, bucket, f'predictions/{DATE}/'))


@pytest.mark.parametrize('case', ['output_bucket', 'model', 'input_bucket'])
def test_missing_paths_are_one_line_before_work_starts(gcs, bucket, case):
    land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    args = daily(bucket, model)
    if case == 'output_bucket':
        args[args.index('--output') + 1] = 'gs://bkt-nobody-made-this/predictions/{date}/'
        expect = 'the bucket gs://bkt-nobody-made-this does not exist'
    elif case == 'model':
        args[args.index('--model') + 1] = f'gs://{bucket}/no-models-here'
        expect = f'gs://{bucket}/no-models-here'
    else:
        args[args.index('--input') + 1] = 'gs://bkt-nobody-made-this/incoming/*.parquet'
        expect = ('--input gs://bkt-nobody-made-this/incoming/*.parquet: the bucket '
                  'gs://bkt-nobody-made-this does not exist')   # not "no input yet" (4)
    out = beamml(gcs, *args)
    assert out.returncode == 2, out.stderr[-3000:]
    line = last_line(out.stderr)
    assert 'Traceback' not in out.stderr and expect in line, line
    assert objects(gcs, bucket, 'predictions/') == {}


@pytest.mark.parametrize('path', ['incoming/*.parquet', 'incoming/part-0.parquet'])
def test_an_input_in_a_bucket_that_does_not_exist_is_exit_2_not_no_input_yet(gcs, bucket,
                                                                               path):
    """Beam lists a glob in a missing bucket as an error and a single path as absent;
    both are one line naming the bucket, exit 2 (no waiting: it cannot appear)."""
    model = save_model(gcs, bucket)
    args = daily(bucket, model, '--wait_for_input', '600')
    pattern = f'gs://bkt-nobody-made-this/{path}'
    args[args.index('--input') + 1] = pattern
    start = time.monotonic()
    out = beamml(gcs, *args)
    assert out.returncode == 2, out.stderr[-3000:]
    assert last_line(out.stderr) == (f'beamml assign: error: --input {pattern}: the bucket '
                                     'gs://bkt-nobody-made-this does not exist')
    assert time.monotonic() - start < 60


@pytest.fixture
def forbidden(gcs):
    """Objects whose name holds 'no-access' answer 403 to a download, as an object the
    job's account may list but not read."""
    from http import HTTPStatus
    from gcp_storage_emulator import server as srv
    from gcp_storage_emulator.handlers import objects as handlers

    def deny(fn):
        def checked(request, response, storage, *args, **kwargs):
            if 'no-access' in request.params.get('object_id', ''):
                response.status = HTTPStatus.FORBIDDEN
                response.json({'error': {'code': 403, 'message': 'no storage.objects.get '
                                                                  'access'}})
                return None
            return fn(request, response, storage, *args, **kwargs)
        return checked
    saved = []
    for _, routes in srv.HANDLERS:
        for method, fn in list(routes.items()):
            if fn in (handlers.download, handlers.get):
                saved.append((routes, method, fn))
                routes[method] = deny(fn)
    yield
    for routes, method, fn in saved:
        routes[method] = fn


@pytest.mark.parametrize('which', ['first', 'later'])
def test_an_input_object_that_cannot_be_read_is_one_line(gcs, bucket, forbidden, which):
    land_day(gcs, bucket)
    name = 'a-no-access.parquet' if which == 'first' else 'z-no-access.parquet'
    put(gcs, bucket, f'incoming/{DATE}/{name}', parquet_points(3, 9))
    model = save_model(gcs, bucket)
    out = beamml(gcs, *daily(bucket, model))
    assert out.returncode == 2, out.stderr[-3000:]
    line = last_line(out.stderr)
    assert 'Traceback' not in out.stderr and name in line and '403' in line, line
    assert objects(gcs, bucket, f'predictions/{DATE}/') == {}


def test_a_stalled_upload_holds_only_its_own_connection(gcs, bucket):
    """What a failed run leaves behind (an upload whose body never comes) must not hold the
    emulator: the next requests are served at once, not after the stalled read times out."""
    put(gcs, bucket, 'a/x', b'1')
    with socket.create_connection(('127.0.0.1', gcs.port)) as stalled:
        stalled.sendall(f'POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name=a/y '
                        'HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n'.encode())
        time.sleep(0.2)
        start = time.monotonic()
        for _ in range(8):   # more than the listen backlog of a server that does not accept
            assert set(objects(gcs, bucket, 'a/')) == {'a/x'}
        assert time.monotonic() - start < 5


def test_worker_exception_on_cloud_storage_leaves_nothing(gcs, bucket, monkeypatch):
    """In this process (the local runner runs the DoFns here), so that the assignment
    kernel can raise on the 2nd batch of 3: nothing under the destination, nothing beside
    it; a rerun completes."""
    from beamml.pipelines.__main__ import main
    from beamml.transforms import assignment
    n = land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', gcs.url)
    real, calls = assignment.add_assignment, []

    def failing(batch, *a, **kw):
        calls.append(batch.num_rows)
        if len(calls) == 2:
            raise RuntimeError('injected failure on batch 2')
        return real(batch, *a, **kw)
    monkeypatch.setattr(assignment, 'add_assignment', failing)
    with pytest.raises(Exception, match='injected failure on batch 2'):
        main(daily(bucket, model))
    # nothing under the destination, no lock; an upload still in flight when the run
    # failed may land in the temporary prefix after the launcher removed it
    left = settled(gcs, bucket, 'predictions/')
    assert all(k.startswith('predictions/.beamml-tmp-') for k in left), left
    monkeypatch.setattr(assignment, 'add_assignment', real)
    assert main(daily(bucket, model)) == 0
    assert assigned_rows(gcs, bucket) == n
    assert set(objects(gcs, bucket, 'predictions/')) == set(
        objects(gcs, bucket, f'predictions/{DATE}/'))   # the straggler is gone too


def test_norms_into_a_prefix_on_cloud_storage(gcs, bucket):
    n = land_day(gcs, bucket)
    args = ['norms', '--input', f'gs://{bucket}/incoming/{{date:%Y-%m-%d}}/*.parquet',
            '--output', f'gs://{bucket}/norms/{{date:%Y/%m/%d}}/norms', '--date', DATE,
            '--num_shards', '2']
    first = beamml(gcs, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(objects(gcs, bucket, 'norms/')) == [f'norms/2026/11/22/{x}' for x in (
        'norms-00000-of-00002.parquet', 'norms-00001-of-00002.parquet', 'norms-_SUCCESS',
        'norms-errors-00000-of-00001.jsonl')]
    doc = json.loads(read(gcs, bucket, 'norms/2026/11/22/norms-_SUCCESS'))
    assert doc['counts']['records_ok'] == n and doc['destination'].endswith('/norms')
    again = beamml(gcs, *args)
    assert again.returncode == 0 and 'is complete' in again.stdout


def faulty(gcs, *args, env=None):
    """beamml run by tests/storage_faults.py (the faults its docstring lists), as a
    process on this module's storage server."""
    e = dict(os.environ, STORAGE_EMULATOR_HOST=gcs.url, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'storage_faults.py'),
                             *map(str, args)], env=e, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.parametrize('where', ['read', 'finalize'])
def test_storage_stopped_while_reading_or_finalizing_is_one_line(gcs, bucket, tmp_path, where):
    """The server stops after the launcher inspected the input, when a worker is about to
    read a file (read), or when the sink is about to move its shards into place
    (finalize): one line '<object>: Cloud Storage did not answer: ...', exit 2, no
    traceback, nothing under the destination; the next run commits one copy."""
    n = land_day(gcs, bucket)
    model = save_model(gcs, bucket)
    pause = tmp_path / 'pause'
    pause.write_text('')
    run = faulty(gcs, *daily(bucket, model),
                 env={f'FAULT_PAUSE_{where.upper()}': str(pause),
                      'FAULT_STORAGE_RETRY_SECONDS': '2', 'BEAMML_STORAGE_RETRY_SECONDS': '2'})
    try:
        wait_for(str(pause) + '.reached', run)
        gcs.stop()
        pause.unlink()
        _, err = run.communicate(timeout=300)
    finally:
        gcs.start()
    assert run.returncode == 2, err[-3000:]
    line = last_line(err)
    assert 'Traceback' not in err, err[-3000:]
    where_object = (f'gs://{bucket}/incoming/{DATE}/p0.parquet' if where == 'read' else
                    f'gs://{bucket}/predictions/.beamml-tmp-{DATE}-')
    assert line.startswith(f'beamml assign: error: {where_object}'), line
    assert ': Cloud Storage did not answer: ' in line and 'not a readable' not in line, line
    assert objects(gcs, bucket, f'predictions/{DATE}/') == {}
    again = beamml(gcs, *daily(bucket, model))
    assert again.returncode == 0, again.stderr[-3000:]
    assert assigned_rows(gcs, bucket) == n
