"""The two steps of a dated run that must be atomic: the destination's lock and the commit.

* The lock (:func:`acquire_lock`, :func:`holds_lock`, :func:`release_lock`): one JSON
  object beside the destination, created only if it does not exist (``ifGenerationMatch=0``
  on Cloud Storage, ``O_EXCL`` locally), taken over when it expired or its process on this
  machine is gone (a delete matched to the generation read, then the create again).
* The commit (:func:`commit_step`): the graph's last step, one element, after every
  output is written: the refused fraction, the moves, ``_SUCCESS`` last.

:mod:`beamml.pipelines.runs` drives both (:class:`~beamml.pipelines.runs.DatedRun`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket

import apache_beam as beam

from beamml.transforms.io import BeammlError
from beamml.transforms.io.objects import (create_exclusive, delete_files, delete_if_unchanged,
                                          delete_tree, list_under, local_guard, move_files,
                                          read_stored)

__all__ = ['LockedError', 'acquire_lock', 'holds_lock', 'release_lock', 'CommitPlan',
           'commit_step', 'RowsFn']

LOG = logging.getLogger('beamml')
EXIT_LOCKED = 5

class LockedError(BeammlError):
    """Another run holds the destination (exit code 5, :data:`EXIT_LOCKED`)."""
    exit_code = EXIT_LOCKED

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(info: dict) -> str | None:
    """Why a lock is a dead run's, or None while it may be alive."""
    try:
        expires = dt.datetime.fromisoformat(info['expires'])
    except (KeyError, TypeError, ValueError):
        return 'it is not a beamml lock document'
    if dt.datetime.now(dt.timezone.utc) > expires:
        return f'it expired at {info["expires"]} (--lock_timeout)'
    pid = info.get('pid')
    if info.get('host') == socket.gethostname() and isinstance(pid, int) and \
            not _pid_alive(pid):
        return f'its process {pid} on this machine is gone'
    return None


def acquire_lock(dest, run_id: str, timeout: float, pid: int | None) -> None:
    """Create the lock object, or take over a dead run's; LockedError while a live run
    holds it. On Cloud Storage the create is an upload with ``ifGenerationMatch=0`` and
    the take-over a delete with ``ifGenerationMatch`` of the generation read."""
    started = dt.datetime.now(dt.timezone.utc)
    doc = {'run_id': run_id, 'destination': dest.output, 'host': socket.gethostname(),
           'pid': pid, 'started': started.isoformat(timespec='seconds'),
           'expires': (started + dt.timedelta(seconds=timeout)).isoformat(timespec='seconds')}
    data = json.dumps(doc, indent=1).encode()
    with local_guard(dest.lock):
        for _ in range(5):
            if create_exclusive(dest.lock, data):
                return
            held = read_stored(dest.lock)
            if held is None:
                continue   # released between the two calls: try again
            try:
                info = json.loads(held.data)
            except ValueError:
                info = {}
            why = _stale(info)
            if why is None:
                raise LockedError(
                    f'another run holds {dest.output}: run {info.get("run_id")} on '
                    f'{info.get("host")} (pid {info.get("pid")}) since {info.get("started")} '
                    f'(lock {dest.lock}, expires {info.get("expires")}); nothing was done')
            LOG.warning('taking over the lock %s of run %s: %s', dest.lock,
                        info.get('run_id'), why)
            delete_if_unchanged(dest.lock, held.version)
    raise LockedError(f'could not take the lock {dest.lock}: other runs keep taking it')


def holds_lock(dest, run_id: str) -> bool:
    held = read_stored(dest.lock)
    if held is None:
        return False
    try:
        return json.loads(held.data).get('run_id') == run_id
    except ValueError:
        return False


def release_lock(dest, run_id: str) -> None:
    with local_guard(dest.lock):
        held = read_stored(dest.lock)
        if held is None:
            return
        try:
            mine = json.loads(held.data).get('run_id') == run_id
        except ValueError:
            mine = False
        if mine:
            delete_if_unchanged(dest.lock, held.version)

class RowsFn(beam.CombineFn):
    """Rows in RecordBatches (or Tables)."""

    def create_accumulator(self):
        return 0

    def add_input(self, acc, batch):
        return acc + batch.num_rows

    def merge_accumulators(self, accs):
        return sum(accs)

    def extract_output(self, acc):
        return acc


class CommitPlan:
    """What the commit step needs, from the launcher (picklable)."""

    def __init__(self, run, info: dict, finish, max_refused_fraction,
                 errors_glob: str | None = None):
        import beamml
        self.errors_glob = errors_glob
        self.pipeline, self.run_id, self.dest = run.pipeline, run.run_id, run.dest
        self.date = getattr(run.args, 'date', None)
        self.date = self.date.isoformat() if self.date else None
        self.overwrite = bool(run.args.overwrite)
        self.started, self.inputs, self.info = run.started, run.inputs, info
        self.parameters = run.parameters
        self.finish, self.max_refused_fraction = finish, max_refused_fraction
        self.temp_output = run.dest.temp_output(run.run_id)
        self.versions = {'beamml': beamml.__version__, 'apache_beam': beam.__version__}


def _keep_dead_letters(plan: CommitPlan) -> str | None:
    """Move a refused run's dead letters beside the destination, to
    ``.beamml-refused-<name>-<run id>/`` (removed when a run for the destination commits),
    and return their pattern; None without a pattern."""
    import fnmatch
    if not plan.errors_glob:
        return None
    dest, temp = plan.dest, plan.dest.temp_root(plan.run_id)
    keep = dest.refused_root(plan.run_id)
    letters = [f for f in list_under(temp + '/') if fnmatch.fnmatchcase(f, plan.errors_glob)]
    move_files([(f, keep + f[len(temp):]) for f in letters])
    return keep + plan.errors_glob[len(temp):]


def commit_step(plan: CommitPlan, rows: int, read_errors: int, refused: int, *written) -> dict:
    """The graph's last step (one element): move the results into place, then _SUCCESS."""
    from beamml.pipelines import common
    dest, run_id = plan.dest, plan.run_id
    temp = dest.temp_root(run_id)
    read = int(rows) + int(read_errors)
    counts = {'records_read': read, 'records_ok': read - int(refused),
              'records_refused': int(refused)}
    found = dest.read_success()
    if found is not None and found.get('run_id') == run_id:   # a retried commit: done
        release_lock(dest, run_id)
        return found
    if not holds_lock(dest, run_id):
        raise BeammlError(f'run {run_id} no longer holds the lock {dest.lock} (another run '
                          f'took it over: this one ran longer than --lock_timeout?); '
                          f'nothing was committed to {dest.output}; {temp} is left for the '
                          'next run to remove')
    limit = plan.max_refused_fraction
    if limit is not None and read and refused / read > limit:
        kept = _keep_dead_letters(plan)
        delete_tree(temp + '/')
        release_lock(dest, run_id)
        raise BeammlError(
            f'{refused} of {read} records ({refused / read:.2%}) were refused, above '
            f'--max_refused_fraction={limit}; nothing was committed to {dest.output}'
            + (f'; see {kept}' if kept else ''))
    if plan.finish is not None:
        plan.finish(plan.temp_output, counts)
    common.pause_for_test('BEAMML_TEST_PAUSE_COMMIT')
    common.kill_for_test('BEAMML_TEST_KILL_COMMIT', 1)
    results = [f for f in list_under(temp + '/') if '/beam-temp-' not in f]
    pairs = [(f, dest.final_path(f, run_id)) for f in results]
    finals = {d for _, d in pairs}
    if found is not None:
        if not plan.overwrite:
            raise BeammlError(f'{dest.success} appeared while run {run_id} ran (run '
                              f'{found.get("run_id")}); nothing was committed')
        delete_files([dest.success])   # first: the old results stop being complete
    stale = [f for f in list_under(dest.owned) if f not in finals and f != dest.success]
    if stale:
        LOG.info('removed %d file(s) of an earlier run under %s: %s', len(stale), dest.output,
                 ', '.join(f[len(dest.parent) + 1:] for f in stale[:10])
                 + (', ...' if len(stale) > 10 else ''))
    delete_files(stale)
    half = len(pairs) // 2
    move_files(pairs[:half])
    common.kill_for_test('BEAMML_TEST_KILL_COMMIT', 2)
    move_files(pairs[half:])
    doc = {'pipeline': plan.pipeline, 'destination': dest.output, 'date': plan.date,
           'run_id': run_id, 'counts': counts, **plan.info,
           'parameters': plan.parameters,
           'inputs': plan.inputs, 'outputs': sorted(finals), 'versions': plan.versions,
           'started': plan.started, 'ended': _now()}
    if not create_exclusive(dest.success, json.dumps(doc, indent=1).encode()):
        raise BeammlError(f'{dest.success} appeared while run {run_id} committed')
    delete_tree(temp + '/')
    delete_tree(dest.refused_glob)   # the dead letters of refused runs: superseded
    release_lock(dest, run_id)
    LOG.info('run %s committed: %d file(s) in %s, then %s', run_id, len(pairs),
             dest.output, dest.success)
    return doc
