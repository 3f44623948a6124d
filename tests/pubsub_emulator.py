"""The real Pub/Sub emulator for tests: start it, make topics and subscriptions, publish, pull.

``with pubsub_emulator() as emu:`` starts the emulator (the Debian package
google-cloud-cli-pubsub-emulator) on a free loopback port, waits until it
answers, sets ``PUBSUB_EMULATOR_HOST`` (restored afterwards) and, on exit,
kills its process group and waits for it, so no java process is left behind.
Where the launcher is missing the test is skipped with the reason.

Fixture use (the emulator of this test process, shared with the other modules: a start
is a JVM, ~4 s; a test that kills its emulator starts its own with ``pubsub_emulator()``)::

    @pytest.fixture(scope='module')
    def emulator():
        with shared_pubsub_emulator() as emu:
            yield emu
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

__all__ = ['LAUNCHER', 'PROJECT', 'Emulator', 'pubsub_emulator', 'shared_pubsub_emulator',
           'stop_shared_emulator', 'launcher', 'cancel_run']

#: where the Debian package puts the emulator's launcher
LAUNCHER = '/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator'
#: the project of every test topic (Beam wants 6+ characters: [a-z][-a-z0-9:.]{4,61}[a-z0-9])
PROJECT = 'beamml-test'


def launcher() -> str | None:
    """The emulator's launcher, or None where it is not installed."""
    if os.access(LAUNCHER, os.X_OK):
        return LAUNCHER
    try:
        files = subprocess.run(['dpkg', '-L', 'google-cloud-cli-pubsub-emulator'],
                               capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    found = [f for f in files if f.endswith('/bin/cloud-pubsub-emulator') and os.access(f, os.X_OK)]
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Emulator:
    """A running emulator: its address and helpers for topics, subscriptions and messages."""

    def __init__(self, host: str, proc: subprocess.Popen, log_path: str):
        from google.cloud import pubsub_v1
        self.host, self.proc, self.log_path = host, proc, log_path
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()

    # names -------------------------------------------------------------
    def topic(self, name: str | None = None) -> str:
        """Create a topic (a fresh name by default); its full path ``projects/P/topics/T``."""
        path = self.publisher.topic_path(PROJECT, name or f'topic-{uuid.uuid4().hex[:10]}')
        self.publisher.create_topic(name=path)
        return path

    def subscription(self, topic: str, name: str | None = None, ack_deadline: int = 60) -> str:
        """Create a subscription to ``topic`` (a message not acknowledged within
        ``ack_deadline`` seconds is delivered again); its full path
        ``projects/P/subscriptions/S``."""
        path = self.subscriber.subscription_path(PROJECT, name or f'sub-{uuid.uuid4().hex[:10]}')
        self.subscriber.create_subscription(name=path, topic=topic,
                                            ack_deadline_seconds=ack_deadline)
        return path

    # messages ----------------------------------------------------------
    def publish(self, topic: str, messages) -> list[str]:
        """Publish ``messages`` (bytes, or (bytes, attributes dict)) and wait for each;
        their message ids, in order."""
        futures = []
        for m in messages:
            data, attrs = (m, {}) if isinstance(m, (bytes, bytearray)) else m
            futures.append(self.publisher.publish(topic, bytes(data), **attrs))
        return [f.result(timeout=30) for f in futures]

    def pull(self, subscription: str, n: int, timeout: float = 30.0, settle: float = 0.0):
        """Pull (and acknowledge) messages until ``n`` have arrived or ``timeout`` seconds
        passed; with ``settle``, keep pulling that long after the n-th for extras.
        Returns the received ``PubsubMessage`` protos (``.data``, ``.attributes``...)."""
        got = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while time.monotonic() < deadline:
            if len(got) >= n:
                if settle_until is None:
                    settle_until = time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
            try:
                resp = self.subscriber.pull(subscription=subscription, max_messages=1000,
                                            timeout=2.0)
            except Exception as e:  # DeadlineExceeded when nothing arrived in time
                if type(e).__name__ not in ('DeadlineExceeded', 'RetryError'):
                    raise
                continue
            if resp.received_messages:
                self.subscriber.acknowledge(subscription=subscription,
                                            ack_ids=[r.ack_id for r in resp.received_messages])
                got.extend(r.message for r in resp.received_messages)
            else:
                time.sleep(0.05)
        return got

    def close(self):
        with contextlib.suppress(Exception):
            self.subscriber.close()
        with contextlib.suppress(Exception):
            self.publisher.stop()
            self.publisher.transport.close()


def _wait_until_up(host: str, proc: subprocess.Popen, log_path: str, timeout: float) -> None:
    """Poll the emulator's HTTP port until it answers (or the process dies)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors='replace') as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f'the Pub/Sub emulator exited ({proc.returncode}): {tail}')
        try:
            with urllib.request.urlopen(f'http://{host}/', timeout=1) as r:
                r.read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f'the Pub/Sub emulator did not answer on {host} in {timeout} s')


def _stop(proc: subprocess.Popen) -> None:
    """Kill the emulator's process group (the launcher script and its java) and wait."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    # the java child may outlive the script: the group is the emulator's own (setsid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _start(timeout: float) -> tuple[Emulator, str]:
    """Start an emulator on a free loopback port; (it, its working folder). Skips the test
    where the launcher or java is missing."""
    exe = launcher()
    if exe is None:
        pytest.skip('the Pub/Sub emulator is not installed (Debian package '
                    'google-cloud-cli-pubsub-emulator, launcher cloud-pubsub-emulator)')
    if shutil.which('java') is None:
        pytest.skip('the Pub/Sub emulator needs java, which is not on PATH')
    port = _free_port()
    host = f'127.0.0.1:{port}'
    workdir = tempfile.mkdtemp(prefix='pubsub-emulator-')
    log_path = os.path.join(workdir, 'emulator.log')
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen([exe, '--host=127.0.0.1', f'--port={port}'], cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_until_up(host, proc, log_path, timeout)
        with _emulator_host(host):   # the clients read it when they are made
            return Emulator(host, proc, log_path), workdir
    except BaseException:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _shut(emu: Emulator, workdir: str) -> None:
    emu.close()
    _stop(emu.proc)
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _emulator_host(host: str):
    """``PUBSUB_EMULATOR_HOST=host`` within the block (restored afterwards)."""
    saved = os.environ.get('PUBSUB_EMULATOR_HOST')
    os.environ['PUBSUB_EMULATOR_HOST'] = host
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop('PUBSUB_EMULATOR_HOST', None)
        else:
            os.environ['PUBSUB_EMULATOR_HOST'] = saved


@contextlib.contextmanager
def pubsub_emulator(timeout: float = 60.0):
    """Start an emulator of its own, yield an :class:`Emulator`, stop it by its process
    group (for a test that kills it or checks its start and stop)."""
    emu, workdir = _start(timeout)
    try:
        with _emulator_host(emu.host):
            yield emu
    finally:
        _shut(emu, workdir)


#: the emulator shared by the tests of this process (an xdist worker): pid -> (it, folder)
_SHARED: dict = {}


@contextlib.contextmanager
def shared_pubsub_emulator(timeout: float = 60.0):
    """The emulator of this test process, started at its first use and kept for the next
    modules (each start is a JVM: ~4 s); ``PUBSUB_EMULATOR_HOST`` is set only within the
    block. Topics and subscriptions have fresh names, so modules do not see each other's
    messages. tests/conftest.py stops it at the end of the session by its process group
    (:func:`stop_shared_emulator`; also at exit, should the session not end)."""
    hit = _SHARED.get(os.getpid())
    if hit is None or hit[0].proc.poll() is not None:
        if hit is not None:
            _shut(*hit)
        hit = _SHARED[os.getpid()] = _start(timeout)
        atexit.register(stop_shared_emulator)
    with _emulator_host(hit[0].host):
        yield hit[0]


def stop_shared_emulator() -> None:
    """Stop this process's shared emulator, if it started one."""
    hit = _SHARED.pop(os.getpid(), None)
    if hit is not None:
        _shut(*hit)


def cancel_run(result, emu, wake_topic):
    """Cancel a local streaming run. The runner joins its workers; Beam's own local read
    may be blocked for up to 30 s in a pull (beamml's returns within 2 s): publish to the
    input until the join returns."""
    t = threading.Thread(target=result.cancel, daemon=True)
    t.start()
    for _ in range(120):
        t.join(0.25)
        if not t.is_alive():
            return
        emu.publish(wake_topic, [b'wake'])
    raise AssertionError('the pipeline did not cancel')
