"""The process around a command: logging, signals, one line per failure and its exit code,
and the end-of-run summary.

:func:`main_wrapper` runs a command's ``run(argv)``: a :class:`BeammlError` is one line
on stderr and exit 2, Ctrl-C 130, SIGTERM 143. After a batch run, :func:`report` prints
the one-line record summary (``records_read=... records_ok=... records_refused=...``)
from the ``beamml`` counters and enforces ``--max_refused_fraction``.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from beamml.pipelines._platform.exits import Exit
from beamml.transforms.core.errors import BeammlError, COUNTER_NAMESPACE, first_line
from beamml.pipelines._platform.runners import no_results, run_pipeline

LOG = logging.getLogger('beamml')


# --------------------------------------------------------------------------- running

def record_counts(result) -> dict[str, int] | None:
    """The beamml record counters of a finished run, summed over steps."""
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    except Exception:  # a runner that does not report metrics
        return None
    counts: dict[str, int] = {}
    for c in metrics['counters']:
        value = c.committed if c.committed is not None else c.attempted
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
    for name in ('records_read', 'records_ok', 'records_refused'):
        counts.setdefault(name, 0)
    return counts


def records_line(counts: dict[str, int], errors_glob: str | None = None) -> str:
    """The end-of-run records line, the same for every command, batch or streaming:
    ``records_read=N records_ok=N records_refused=N[ errors=GLOB]``."""
    line = (f'records_read={counts["records_read"]} records_ok={counts["records_ok"]} '
            f'records_refused={counts["records_refused"]}')
    return line + (f' errors={errors_glob}' if errors_glob else '')


def check_counts(counts: dict[str, int]) -> None:
    """``records_read = records_ok + records_refused``, or a BeammlError (a bug)."""
    read, ok, refused = counts['records_read'], counts['records_ok'], counts['records_refused']
    if read != ok + refused:
        raise BeammlError(f'record accounting is off: read {read} != ok {ok} + refused '
                          f'{refused}; this is a bug in beamml, please report it')


def report(result, *, errors_glob: str, max_refused_fraction: float | None,
           out=None) -> dict[str, int] | None:
    """Print the one-line record summary; exit non-zero above --max_refused_fraction."""
    out = out or sys.stdout
    counts = record_counts(result)
    if counts is None:
        print('records: counts not reported by this runner', file=out)
        return None
    read, refused = counts['records_read'], counts['records_refused']
    print(records_line(counts, errors_glob), file=out)
    check_counts(counts)
    if max_refused_fraction is not None and read and refused / read > max_refused_fraction:
        raise BeammlError(
            f'{refused} of {read} records ({refused / read:.2%}) were refused, above '
            f'--max_refused_fraction={max_refused_fraction}; see {errors_glob}')
    return counts


def run_and_report(p: beam.Pipeline, *, errors_glob: str,
                   max_refused_fraction: float | None):
    """Run the pipeline, print the record summary, enforce --max_refused_fraction
    (a dry run has no records: it prints the translated job instead)."""
    result = run_pipeline(p)
    if not no_results(p.options):
        report(result, errors_glob=errors_glob, max_refused_fraction=max_refused_fraction)
    return result


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (not the stream of
    the first run: a caller that swaps stderr, such as a test, gets the lines)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING,
                            format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    # Beam logs an exception raised in a DoFn with its traceback before re-raising it;
    # the CLI prints a beamml error as one line, and any other error still surfaces
    # with its traceback when it reaches main_wrapper.
    logging.getLogger('apache_beam.runners.common').setLevel(logging.CRITICAL)
    LOG.setLevel(logging.INFO)
    if not LOG.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter('%(asctime)s beamml: %(message)s', '%H:%M:%S'))
        LOG.addHandler(h)
        LOG.propagate = False


#: what the one line says when the run was stopped by a signal (exit 128 + the signal)
_STOPPED = {'SIGINT': 'interrupted', 'SIGTERM': 'terminated'}


@contextlib.contextmanager
def _signals_stop_the_run(received: list):
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (SIGTERM would
    otherwise kill the process with no clean-up), noting the signal in ``received``, so
    that the run unwinds as for Ctrl-C: a dated run removes its temporary prefix and
    releases its lock, the private temporary folder is removed. The handlers in place
    before are put back afterwards (tests call the CLI in their own process)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        received.append(signal.Signals(signum))
        raise KeyboardInterrupt

    saved = {}
    for name in _STOPPED:
        sig = getattr(signal, name)
        saved[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def no_space_left(e: BaseException) -> str | None:
    """The one line for a full disk (ENOSPC) anywhere in ``e``'s chain, or in the text of
    an error a runner re-raised from a worker; None for any other error."""
    import errno
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            where = f' writing {x.filename}' if x.filename else ''
            return f'no space left on device{where}'
        todo += [x.__cause__, x.__context__]
    if re.search(r'\[Errno 28\]|No space left on device', str(e)):
        return 'no space left on device (' + ' '.join(first_line(e).split())[:300] + ')'
    return None


def main_wrapper(run, argv: Iterable[str] | None = None, prog: str = 'beamml') -> int:
    """Call ``run(argv)``; print a BeammlError as one line and return 2 (or its own exit
    code). A run stopped by SIGINT (Ctrl-C) or SIGTERM says ``interrupted`` or
    ``terminated`` in one line and returns 130 or 143, as shells expect, after the run's
    clean-up; a full disk is one line and 2. Any other error is a bug: its traceback."""
    configure_logging()
    received: list = []
    try:
        with _signals_stop_the_run(received):
            run(None if argv is None else list(argv))
    except BaseException as e:   # (a signal may surface as whatever Beam wrapped it in)
        if received or isinstance(e, KeyboardInterrupt):
            sig = received[0] if received else None
            print(f'{prog}: {_STOPPED.get(getattr(sig, "name", None), "interrupted")}',
                  file=sys.stderr)
            return int(Exit.TERMINATED) if getattr(sig, 'name', None) == 'SIGTERM' \
                else int(Exit.INTERRUPTED)
        if isinstance(e, BeammlError):
            print(f'{prog}: error: {e.for_cli()}', file=sys.stderr)
            return int(getattr(e, "exit_code", Exit.USAGE))   # ALARM, NO_INPUT, LOCKED, ...
        full = no_space_left(e) if isinstance(e, Exception) else None
        if full:
            print(f'{prog}: error: {full}', file=sys.stderr)
            return int(Exit.USAGE)
        raise
    return int(Exit.OK)
