"""The two steps of a dated run that must be atomic: the destination's lock and the commit.

* The lock (:func:`acquire_lock`, :func:`holds_lock`, :func:`release_lock`): one JSON
  object beside the destination, created only if it does not exist (``ifGenerationMatch=0``
  on Cloud Storage, ``O_EXCL`` locally), taken over when it expired or its process on this
  machine is gone (a delete matched to the generation read, then the create again).
* The commit (:func:`commit_step`): the graph's last step, one element, after every
  output is written: the refused fraction, the journal, the moves, ``_SUCCESS`` last.
* Ownership (:func:`recorded_files`, :func:`foreign_files`): a run deletes or replaces
  only files that a beamml run recorded as its own (listed in the destination's
  ``_SUCCESS``, or in the commit journal of a commit that was stopped half-way).

:mod:`beamml.pipelines._platform.runs` drives both (:class:`~beamml.pipelines._platform.runs.DatedRun`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket

import apache_beam as beam

from beamml.pipelines._platform.exits import Exit
from beamml.pipelines._platform.faults import fault_point
from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.objects import (create_exclusive, delete_files, delete_if_unchanged,
                                            delete_tree, list_under, local_guard, move_files,
                                            list_entries, read_stored, write_stored)

__all__ = ['LockedError', 'acquire_lock', 'holds_lock', 'release_lock', 'lock_holder',
           'CommitPlan', 'commit_step', 'CommitCountsFn', 'rows_of', 'one', 'read_journal', 'recorded_files',
           'foreign_files', 'foreign_error']

LOG = logging.getLogger('beamml')
EXIT_LOCKED = int(Exit.LOCKED)

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


def acquire_lock(dest, run_id: str, timeout: float, pid: int | None) -> str:
    """Create the lock object, or take over a dead run's; LockedError while a live run
    holds it. On Cloud Storage the create is an upload with ``ifGenerationMatch=0`` and
    the take-over a delete with ``ifGenerationMatch`` of the generation read. Returns when
    the lock expires (ISO 8601)."""
    started = dt.datetime.now(dt.timezone.utc)
    doc = {'run_id': run_id, 'destination': dest.output, 'host': socket.gethostname(),
           'pid': pid, 'started': started.isoformat(timespec='seconds'),
           'expires': (started + dt.timedelta(seconds=timeout)).isoformat(timespec='seconds')}
    data = json.dumps(doc, indent=1).encode()
    with local_guard(dest.lock):
        for _ in range(5):
            if create_exclusive(dest.lock, data):
                return doc['expires']
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


def rows_of(batch) -> tuple[str, int]:
    """A batch's part of the commit's counts: ``('rows', its number of rows)``."""
    return 'rows', batch.num_rows


def one(_, name: str) -> tuple[str, int]:
    """An element's part of the commit's counts: ``(name, 1)``."""
    return name, 1


def _add_counts(first: dict, other: dict) -> None:
    for name, n in other.items():
        first[name] = first.get(name, 0) + n


@beam.typehints.with_input_types(tuple[str, int])
@beam.typehints.with_output_types(dict[str, int])
class CommitCountsFn(beam.CombineFn):
    """Every count the commit step needs, in one combine: ``(name, n)`` pairs summed by
    name (``rows`` of the reader's batches, ``read_errors`` its dead letters, ``refused``
    every dead letter, ``written`` the sinks' outputs). One combine, so one shuffle,
    instead of one per count (a 50-row ``beamml assign`` ran 32 stages with one per
    count, 23 with this)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, pair):
        name, n = pair
        acc[name] = acc.get(name, 0) + n
        return acc

    def merge_accumulators(self, accs):
        return merge_into_first(accs, _add_counts)

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
        self.allow_foreign = bool(getattr(run.args, 'allow_foreign_files', False))
        self.lock_expires = run.lock_expires
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


def lock_holder(dest) -> dict | None:
    """The lock document of ``dest`` (``{}`` when it is not JSON), or None without a lock."""
    held = read_stored(dest.lock)
    if held is None:
        return None
    try:
        info = json.loads(held.data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _lost_lock(plan: CommitPlan, holder: dict | None) -> LockedError:
    """Why run ``plan.run_id`` no longer holds its lock, named from what the lock says."""
    dest, temp = plan.dest, plan.dest.temp_root(plan.run_id)
    tail = (f'; nothing was committed to {dest.output}; {temp} is left for the next run '
            'to remove')
    if holder is None:
        return LockedError(f'run {plan.run_id}: its lock {dest.lock} was deleted while it ran '
                           f'(by hand, or by a run that took it over and finished){tail}')
    other = (f'run {holder.get("run_id")} on {holder.get("host")} (pid {holder.get("pid")}, '
             f'started {holder.get("started")})')
    try:
        expired = dt.datetime.now(dt.timezone.utc) > dt.datetime.fromisoformat(plan.lock_expires)
    except (TypeError, ValueError):
        expired = False
    if expired:
        return LockedError(f'run {plan.run_id} ran longer than --lock_timeout (its lock '
                           f'expired at {plan.lock_expires}) and {other} took the lock over'
                           + tail)
    return LockedError(f'run {plan.run_id} and {other} both took the lock {dest.lock} at once: '
                       'the storage did not make its create-if-absent exclusive (Cloud '
                       "Storage's ifGenerationMatch=0, O_EXCL locally: an emulator or a file "
                       f'system without it, such as some network file systems){tail}')


# --------------------------------------------------------------------------- ownership

def _key(path: str) -> str:
    """A path as ownership compares it: ``gs://`` as is, local paths absolute."""
    return path if '://' in path else os.path.abspath(path)


def read_journal(dest) -> dict | None:
    """The commit journal beside ``dest`` (written by a commit before it changes the
    destination), or None."""
    found = read_stored(dest.journal)
    if found is None:
        return None
    try:
        doc = json.loads(found.data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def recorded_files(dest, success: dict | None, journal: dict | None) -> set[str]:
    """The files under ``dest`` that beamml runs recorded as their own (as :func:`_key`s):
    ``_SUCCESS`` itself and the ``outputs`` it lists, and the ``outputs`` and ``replaces``
    of a commit journal (a commit that was stopped half-way)."""
    own = set()
    if success is not None:
        own.add(_key(dest.success))
        own.update(_key(f) for f in success.get('outputs') or [] if isinstance(f, str))
    if journal is not None:
        for field in ('outputs', 'replaces'):
            own.update(_key(f) for f in journal.get(field) or [] if isinstance(f, str))
    return own


def _files_under(dest) -> list[str]:
    """The files under the destination; a Cloud Storage "folder" (a zero-byte object whose
    name ends in ``/``, as the console's *Create folder* makes) is not a file."""
    return [f for f in list_under(dest.owned) if not f.endswith('/')]


def foreign_files(dest, present: list[str] | None = None) -> list[str]:
    """Files under ``dest`` that no beamml run recorded as its own (sorted)."""
    own = recorded_files(dest, dest.read_success(), read_journal(dest))
    present = _files_under(dest) if present is None else present
    return [f for f in present if _key(f) not in own]


def foreign_error(dest, foreign: list[str], when: str = '') -> BeammlError:
    more = f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''
    return BeammlError(
        f'--output {dest.output}: {foreign[0]}{more} was not written by a beamml run of this '
        f'destination (no _SUCCESS of it lists it){when}; nothing was done: beamml never '
        'deletes or replaces files it did not write. Move it away, choose another --output, '
        'or pass --allow_foreign_files to write beside it')


def commit_step(plan: CommitPlan, counts: dict) -> dict:
    """The graph's last step (one element): move the results into place, then _SUCCESS.

    What it deletes or replaces is only what beamml recorded as its own: the files the
    destination's ``_SUCCESS`` lists, and those of a commit journal left by a commit that
    was stopped. The journal (``.beamml-commit-<name>`` beside the destination) is written
    before anything under the destination changes and lists what this commit replaces and
    what it moves in, so that a commit killed half-way leaves nothing unrecorded."""
    dest, run_id = plan.dest, plan.run_id
    temp = dest.temp_root(run_id)
    refused = int(counts.get('refused', 0))
    read = int(counts.get('rows', 0)) + int(counts.get('read_errors', 0))
    counts = {'records_read': read, 'records_ok': read - refused, 'records_refused': refused}
    found = dest.read_success()
    if found is not None and found.get('run_id') == run_id:   # a retried commit: done
        _finish_commit(dest, run_id)
        return found
    holder = lock_holder(dest)
    if holder is None or holder.get('run_id') != run_id:
        raise _lost_lock(plan, holder)
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
    fault_point('commit.before_moves')
    results = [f for f in list_under(temp + '/') if '/beam-temp-' not in f]
    pairs = [(f, dest.final_path(f, run_id)) for f in results]
    finals = {_key(d) for _, d in pairs}
    if found is not None and not plan.overwrite:
        raise BeammlError(f'{dest.success} appeared while run {run_id} ran (run '
                          f'{found.get("run_id")}); nothing was committed')
    journal = read_journal(dest)
    own = recorded_files(dest, found, journal)
    present = [f for f in _files_under(dest) if f != dest.success]
    foreign = [f for f in present if _key(f) not in own]
    clash = [f for f in foreign if _key(f) in finals]
    if clash or (foreign and not plan.allow_foreign):
        delete_tree(temp + '/')
        release_lock(dest, run_id)
        if clash:
            raise BeammlError(f'{clash[0]} was not written by a beamml run and this run\'s '
                              f'result has its name; nothing was committed to {dest.output}')
        raise foreign_error(dest, foreign, ', and it appeared while the run ran')
    replaces = sorted(f for f in present if _key(f) in own and _key(f) not in finals)
    write_stored(dest.journal, json.dumps(
        {'run_id': run_id, 'destination': dest.output, 'started': _now(),
         'outputs': sorted(finals),
         'replaces': sorted({_key(f) for f in replaces} | (own - finals - {_key(dest.success)}))},
        indent=1).encode())
    if found is not None:
        delete_files([dest.success])   # first: the old results stop being complete
    if replaces:
        LOG.info('removed %d file(s) of an earlier run under %s: %s', len(replaces),
                 dest.output, ', '.join(f[len(dest.parent) + 1:] for f in replaces[:10])
                 + (', ...' if len(replaces) > 10 else ''))
    delete_files(replaces)
    half = len(pairs) // 2   # two calls, so that a test can kill the run between them
    move_files(pairs[:half])
    fault_point('commit.between_moves')
    move_files(pairs[half:])
    doc = {'pipeline': plan.pipeline, 'destination': dest.output, 'date': plan.date,
           'run_id': run_id, 'counts': counts, **plan.info,
           'parameters': plan.parameters,
           'inputs': plan.inputs, 'outputs': sorted(finals), 'versions': plan.versions,
           'started': plan.started, 'ended': _now()}
    if not create_exclusive(dest.success, json.dumps(doc, indent=1).encode()):
        raise BeammlError(f'{dest.success} appeared while run {run_id} committed')
    fault_point('commit.after_success')
    _finish_commit(dest, run_id)
    LOG.info('run %s committed: %d file(s) in %s, then %s', run_id, len(pairs),
             dest.output, dest.success)
    return doc


RUN_ID = re.compile(r'\d{8}T\d{6}Z-[0-9a-f]{6}')


def _run_entries(glob: str) -> dict[str, str]:
    """{run id: entry} of the run folders ``<glob><run id>`` (a temporary or refused
    prefix); a destination named ``out-x`` beside ``out`` has its own, never listed here."""
    found = {}
    for entry in list_entries(glob):
        run_id = entry[len(glob):].split('/', 1)[0]
        if RUN_ID.fullmatch(run_id):
            found.setdefault(run_id, glob + run_id)
    return found


def _finish_commit(dest, run_id: str) -> None:
    """After ``_SUCCESS`` of ``run_id``: its journal, temporary prefix and the refused runs'
    dead letters go, and the lock is released (each only if still there)."""
    journal = read_journal(dest)
    if journal is not None and journal.get('run_id') == run_id:
        delete_files([dest.journal])
    delete_tree(dest.temp_root(run_id) + '/')
    for root in _run_entries(dest.refused_glob).values():   # refused runs: superseded
        delete_tree(root + '/')
    release_lock(dest, run_id)
