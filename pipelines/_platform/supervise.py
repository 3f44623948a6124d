"""Running a stream so that it fails closed: checks before it starts, a watch while it runs.

* :func:`preflight` (before ``p.run()``, never in a dry run or a template build: those
  stay offline): credentials (none needed with ``PUBSUB_EMULATOR_HOST``) and every Pub/Sub
  subscription and topic the flags name exist. A missing one is one line, exit 2, where
  Beam's local read would log 254 error lines and hang until ``--stop_after``.
* :func:`supervise` runs ``wait_until_finish()`` in a thread and joins it against the
  deadline (``--stop_after``) in short steps: Beam's ``DirectPipelineResult.state`` changes
  only inside ``wait_until_finish()`` or ``cancel()``, so polling it never sees a pipeline
  that died. A pipeline that fails ends the run with one line within seconds; so does a
  Pub/Sub resource deleted or a Pub/Sub service gone mid-run, which Beam's local read does
  not report (it retries an unreachable service for ever, and a deleted subscription only
  after its 30 s pull): every :data:`PROBE_SECONDS` the watch asks Pub/Sub for each
  resource (one small admin call each; locally only, Dataflow watches its own job).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time

from beamml.pipelines._platform.exits import Exit
from beamml.transforms.core.errors import BeammlError, first_line

__all__ = ['preflight', 'supervise', 'pubsub_resources', 'stream_failure', 'PROBE_SECONDS']

LOG = logging.getLogger('beamml')
#: seconds between two looks at the Pub/Sub resources of a running local stream
PROBE_SECONDS = 2.0
#: how long the check before the start waits for Pub/Sub (one look while it runs: one try
#: of at most this long)
ADMIN_TIMEOUT = 10.0
#: consecutive looks without an answer before the stream is failed (about 2 x 2 s + timeouts)
UNANSWERED_LIMIT = 2
#: seconds a failed stream waits for the runner to stop before the one line
FAILED_CANCEL_WAIT = 3.0
#: seconds a stream stopped by --stop_after waits for the runner to stop (Beam's local
#: Pub/Sub read is cancelled only when its pull of up to 30 s returns)
STOP_CANCEL_WAIT = 45.0


# ----------------------------------------------------------------------------- before

def pubsub_resources(args) -> list[tuple[str, str, str]]:
    """``(flag, kind, name)`` of each Pub/Sub resource the flags name."""
    out = []
    for flag, kind in (('input_subscription', 'subscription'), ('input_topic', 'topic'),
                       ('output_topic', 'topic'), ('dead_letter_topic', 'topic')):
        name = getattr(args, flag, None)
        if name:
            out.append((flag, kind, name))
    return out


def _no_credentials() -> str | None:
    """One line when Google Cloud has no credentials here (None with credentials, or with
    ``PUBSUB_EMULATOR_HOST``, which needs none)."""
    if os.environ.get('PUBSUB_EMULATOR_HOST'):
        return None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    try:
        google.auth.default()
    except DefaultCredentialsError as e:
        return ('no Google Cloud credentials for Pub/Sub: run `gcloud auth application-default '
                'login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file (or '
                f'PUBSUB_EMULATOR_HOST for the emulator) ({" ".join(first_line(e).split())[:200]})')
    return None


def _look(flag: str, kind: str, name: str, clients: dict, *, retry: bool) -> str | None:
    """Ask Pub/Sub for one resource: None when it exists (or this account may not look),
    else one line. Unanswered calls raise (the caller decides how often to forgive):
    with ``retry``, after retrying transient errors for :data:`ADMIN_TIMEOUT` s in all
    (the client's own default retries for 60 s), else after one try."""
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry
    how = dict(timeout=ADMIN_TIMEOUT,
               retry=Retry(initial=0.2, maximum=2.0, timeout=ADMIN_TIMEOUT) if retry else None)
    if 'sub' not in clients:
        from google.cloud import pubsub_v1
        clients['sub'] = pubsub_v1.SubscriberClient()
        clients['pub'] = pubsub_v1.PublisherClient()
    try:
        if kind == 'subscription':
            clients['sub'].get_subscription(subscription=name, **how)
        else:
            clients['pub'].get_topic(topic=name, **how)
    except gexc.NotFound:
        return f'--{flag} {name}: the {kind} does not exist'
    except gexc.PermissionDenied:   # a subscriber may read without the right to look:
        return None                 # the run itself tells (the watch fails it then)
    return None


def _where() -> str:
    host = os.environ.get('PUBSUB_EMULATOR_HOST')
    return f'the Pub/Sub emulator at {host}' if host else 'Pub/Sub'


def preflight(args) -> None:
    """Before a stream starts: credentials and each named Pub/Sub resource, or one
    BeammlError (exit 2). Touches the network: never call it for a dry run."""
    resources = pubsub_resources(args)
    if not resources:
        return
    problem = _no_credentials()
    if problem:
        raise BeammlError(problem)
    from google.api_core import exceptions as gexc
    clients: dict = {}
    try:
        for flag, kind, name in resources:
            try:
                problem = _look(flag, kind, name, clients, retry=True)
            except (gexc.GoogleAPIError, OSError) as e:
                raise BeammlError(f'{_where()} did not answer about --{flag} {name}: '
                                  f'{type(e).__name__}: {" ".join(first_line(e).split())[:200]}')
            if problem:
                raise BeammlError(problem + ' (create it first, or check the project)')
    finally:
        _close(clients)


def _close(clients: dict) -> None:
    for key in ('sub', 'pub'):
        c = clients.pop(key, None)
        try:
            if key == 'sub':
                c and c.close()
            elif c is not None:
                c.stop()
        except Exception:   # closing is best effort
            pass


class _Watch:
    """The look at the Pub/Sub resources every :data:`PROBE_SECONDS`: one line once one
    is gone or Pub/Sub stopped answering :data:`UNANSWERED_LIMIT` times in a row."""

    def __init__(self, resources):
        self.resources, self.clients, self.unanswered = resources, {}, 0
        self.next = time.monotonic() + PROBE_SECONDS

    def __call__(self) -> str | None:
        if time.monotonic() < self.next:
            return None
        from google.api_core import exceptions as gexc
        try:
            for flag, kind, name in self.resources:
                problem = _look(flag, kind, name, self.clients, retry=False)
                if problem:
                    return problem + ' any more (deleted while the stream ran)'
            self.unanswered = 0
        except (gexc.GoogleAPIError, OSError) as e:
            self.unanswered += 1
            if self.unanswered >= UNANSWERED_LIMIT:
                return (f'{_where()} stopped answering while the stream ran: '
                        f'{type(e).__name__}: {" ".join(first_line(e).split())[:200]}')
        finally:
            self.next = time.monotonic() + PROBE_SECONDS
        return None

    def close(self):
        _close(self.clients)


# ----------------------------------------------------------------------------- while

class BundleFailures(logging.Handler):
    """Takes the log of Beam's local executor while a stream runs: its first failed
    bundle (``Exception at bundle ...`` with the traceback as text) is kept as one line
    and nothing is printed. The local runner retries a failed bundle 4 times before the
    pipeline fails, and a retry of its Pub/Sub read pulls (and acknowledges) new messages,
    each pull waiting up to 30 s: the first failure ends the stream instead (seconds, not
    minutes, and no more messages pulled to be lost).

    Only this run's executor counts: the local runner's bundles run on threads its
    executor starts, so a thread that was there before the run is another pipeline's (a
    stream an earlier run in this process left running, whose own failure is not this
    run's)."""
    LOGGER = 'apache_beam.runners.direct.executor'

    def __init__(self):
        super().__init__(logging.ERROR)
        self.first: BeammlError | None = None
        self._others: frozenset = frozenset()

    def emit(self, record):
        if self.first is not None or 'Exception at bundle' not in str(record.msg):
            return
        if threading.current_thread() in self._others:   # not this run's executor
            return
        lines = [ln.strip() for ln in record.getMessage().splitlines() if ln.strip()]
        last = lines[-1] if lines else 'an error'
        kind, _, message = last.partition(': ')
        self.first = _failed(kind, message)

    def __enter__(self):
        self._others = frozenset(threading.enumerate())
        log = logging.getLogger(self.LOGGER)
        self._saved = log.level, log.propagate
        log.addHandler(self)
        log.setLevel(logging.ERROR)
        log.propagate = False
        return self

    def __exit__(self, *exc):
        log = logging.getLogger(self.LOGGER)
        log.removeHandler(self)
        log.setLevel(self._saved[0])
        log.propagate = self._saved[1]


def _failed(kind: str, message: str) -> BeammlError:
    """``the stream failed: <exception name>: <message>`` (one line), Beam's wrapping of
    a DoFn's error (``RuntimeError: FileExistsError: ... [while running 'step']``) undone;
    exit 2 for an error of the run's surroundings, else 1."""
    inner = re.match(r'([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.*)', message, re.S)
    if kind.split('.')[-1] == 'RuntimeError' and inner:
        kind, message = inner.groups()
    if kind.split('.')[-1] == 'BeammlError':   # a step's own one line (exit 2)
        return BeammlError(' '.join(message.split())[:500])
    err = BeammlError(f'the stream failed: {kind.split(".")[-1]}: '
                      f'{" ".join(message.split())[:300]}')
    err.exit_code = Exit.USAGE if _external(kind) else Exit.FAILED
    return err


def _external(kind: str) -> bool:
    """Whether an exception named as a traceback ends (``google.api_core.exceptions.
    NotFound``, ``FileExistsError``) is of the run's surroundings (a cloud service, storage,
    the user's input: exit 2) rather than unexpected (exit 1)."""
    import builtins
    name = kind.split('.')[-1]
    cls = getattr(builtins, name, None)
    return (kind.startswith('google.') or name in ('BeamIOError', 'BeammlError')
            or (isinstance(cls, type) and issubclass(cls, OSError)))


def stream_failure(e: BaseException) -> BeammlError:
    """The one line of a pipeline that failed: a BeammlError as it is; an error of a
    cloud service or of storage exit 2 (the run's surroundings); anything else exit 1
    (``FAILED``: unexpected), still one line (Beam has logged where it happened)."""
    if isinstance(e, BeammlError):
        return e
    kind = f'{type(e).__module__}.{type(e).__name__}'.removeprefix('builtins.')
    return _failed(kind, str(e) or type(e).__name__)


def _cancel(result, wait: float) -> bool:
    """Cancel in a thread (Beam's local cancel joins a worker that may sit in a 30 s
    Pub/Sub pull, or for ever against a service that is gone); True when it returned
    within ``wait`` seconds."""
    def cancel():
        try:
            result.cancel()
        except Exception as e:   # already done, or the runner cannot cancel
            LOG.debug('cancel: %s', e)
    t = threading.Thread(target=cancel, name='beamml-stream-cancel', daemon=True)
    t.start()
    t.join(wait)
    return not t.is_alive()


def supervise(result, stop_after: float | None, resources=(), failures=None, *,
              local: bool = True):
    """Wait for a running stream: until it ends by itself, fails (one BeammlError: as
    ``failures``, a :class:`BundleFailures`, sees its first failed bundle, or as
    ``wait_until_finish`` raises), a watched Pub/Sub resource goes (one BeammlError), or
    ``stop_after`` seconds pass (it is cancelled). SIGINT/SIGTERM (KeyboardInterrupt
    here) propagate, cancelling a ``local`` run (a job on Dataflow goes on: Ctrl-C in the
    shell that submitted it must not cancel a production job; ``gcloud dataflow jobs
    drain`` or ``cancel`` does)."""
    outcome: dict = {}

    def wait():
        try:
            result.wait_until_finish()
        except BaseException as e:   # noqa: B036 - handed to the main thread
            outcome['error'] = e
        outcome['done'] = True
    waiter = threading.Thread(target=wait, name='beamml-stream-wait', daemon=True)
    waiter.start()
    deadline = None if stop_after is None else time.monotonic() + stop_after
    watch = _Watch(list(resources)) if resources else None
    try:
        while True:
            waiter.join(0.2)
            if 'done' in outcome:
                break
            if failures is not None and failures.first is not None:
                _cancel(result, FAILED_CANCEL_WAIT)
                raise failures.first
            if watch is not None:
                problem = watch()
                if problem:
                    _cancel(result, FAILED_CANCEL_WAIT)
                    raise BeammlError(problem)
            if deadline is not None and time.monotonic() >= deadline:
                LOG.info('stream: --stop_after %g s reached, cancelling%s', stop_after,
                         ': what is in flight (rows of windows still open, messages of the '
                         'last pull) is not written' if resources else '')
                if not _cancel(result, STOP_CANCEL_WAIT):
                    LOG.info('stream: the runner did not stop within %g s', STOP_CANCEL_WAIT)
                waiter.join(0.5)
                break
    except BeammlError:
        raise   # cancelled already
    except BaseException:
        if 'done' not in outcome and local:
            _cancel(result, 0.0)   # a signal: do not wait on the runner
        raise
    finally:
        if watch is not None:
            watch.close()
    if 'error' in outcome and not _cancelled(result):
        raise stream_failure(outcome['error'])
    return result


def _cancelled(result) -> bool:
    from apache_beam.runners.runner import PipelineState
    return result.state in (PipelineState.CANCELLED, PipelineState.CANCELLING)
