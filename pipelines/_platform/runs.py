"""Dated, atomic, idempotent batch runs: what a scheduler needs from a pipeline.

    beamml assign --input 'gs://b/incoming/{date}/*.parquet' \\
        --output 'gs://b/predictions/{date}/' --model gs://b/models --date yesterday

* ``--date`` (``YYYY-MM-DD``, ``today`` or ``yesterday``, in UTC) fills the
  placeholders ``{date}`` (``2026-11-22``) and ``{date:FORMAT}`` (a strftime format,
  e.g. ``{date:%Y/%m/%d}``) in every path flag before anything else happens.
* The results are written under a temporary prefix beside the destination
  (``.beamml-tmp-<name>-<run id>``) and moved into place by the last step of the
  graph, once every output is written and the refused fraction is within
  ``--max_refused_fraction``; ``_SUCCESS`` is written last (JSON: counts, model
  version, input files, versions, start and end).
* A destination with ``_SUCCESS`` is not run again (exit 0) unless ``--overwrite``.
* One run per destination at a time: a lock object beside it, created only if it
  does not exist (a generation-matched create on Cloud Storage, ``O_EXCL`` locally).
* No input for the date: exit code 4 (:data:`EXIT_NO_INPUT`); another run holds the
  lock: exit code 5 (:data:`EXIT_LOCKED`).

What each failure leaves behind:

* the run fails before its commit step (a worker error, storage gone): nothing under
  the destination, no ``_SUCCESS``; the temporary prefix is removed by the launcher
  when it can, and by the next run for the destination otherwise (a killed launcher);
* more than ``--max_refused_fraction`` refused: the same, but the dead letters are kept
  beside the destination in ``.beamml-refused-<name>-<run id>/`` (the error names
  them), until a run for the destination commits;
* killed during the commit's moves (seconds): some result files under the
  destination but no ``_SUCCESS``; the next run deletes them and writes one copy;
* two runs at once: one takes the lock, the other exits 5 and writes nothing.

A destination is a folder (``--output gs://b/predictions/2026-11-22/``: beamml owns
everything under it) or a prefix (``--output out/assigned``: beamml owns the files
``out/assigned-*``, and the marker is ``out/assigned-_SUCCESS``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import time
import uuid

import apache_beam as beam

from beamml.pipelines._platform.exits import Exit
from beamml.pipelines._platform.values import seconds
from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.io import shard_prefix
from beamml.pipelines._platform.commit import (EXIT_LOCKED, CommitCountsFn, CommitPlan,
                                               LockedError, _now, _run_entries, acquire_lock,
                                               commit_step, foreign_error, foreign_files,
                                               lock_holder, read_journal, release_lock)
from beamml.pipelines._platform.overlap import Namespace, check_input_overlap
from beamml.pipelines._platform.inputs import (EXIT_NO_INPUT, NoInputError, _join, _matched, _split,
                                               input_changes, wait_for_input)
from beamml.transforms.core.objects import (RUN_TEMPORARY, delete_files, delete_tree,
                                            describe_files, list_under, read_stored)

__all__ = ['EXIT_NO_INPUT', 'EXIT_LOCKED', 'EXIT_INPUT_CHANGED', 'NoInputError', 'LockedError',
           'InputChangedError', 'Destination', 'DatedRun', 'add_date_arg', 'add_run_args',
           'fill_dates']

LOG = logging.getLogger('beamml')

EXIT_INPUT_CHANGED = int(Exit.INPUT_CHANGED)
LOCK_TIMEOUT = 4 * 3600.0


def run_date(value: str) -> dt.date:
    """``--date``: YYYY-MM-DD, today or yesterday (UTC) (argparse type)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    if value == 'today':
        return today
    if value == 'yesterday':
        return today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{value!r} is not a date: YYYY-MM-DD, today or yesterday (UTC)') from None


run_date.regex = r'^([0-9]{4}-[0-9]{2}-[0-9]{2}|today|yesterday)$'   # the templates'


def add_date_arg(parser) -> None:
    parser.add_argument('--date', type=run_date, default=None,
                        help='the run date, YYYY-MM-DD, today or yesterday (UTC): fills '
                             '{date} (YYYY-MM-DD) and {date:FORMAT} (strftime, e.g. '
                             '{date:%%Y/%%m/%%d}) in the path flags')


#: the flags of a committed batch run (with their defaults): a stream refuses them
RUN_FLAGS = {'overwrite': False, 'allow_foreign_files': False, 'wait_for_input': 0.0,
             'input_ready_marker': None, 'lock_timeout': LOCK_TIMEOUT}


def add_run_args(parser) -> None:
    """The flags of a batch pipeline whose outputs are committed once, with _SUCCESS."""
    add_date_arg(parser)
    parser.add_argument('--overwrite', action='store_true',
                        help='run even when the destination already has _SUCCESS, and '
                             'replace its results (they stay until the new ones are in)')
    parser.add_argument('--allow_foreign_files', action='store_true',
                        help='write into a destination that holds files no beamml run '
                             'wrote (refused by default): they are kept, never deleted or '
                             'replaced (a result with the name of one of them is refused)')
    parser.add_argument('--wait_for_input', type=seconds, default=0.0, metavar='SECONDS',
                        help='poll up to SECONDS for the input (or --input_ready_marker) '
                             'to appear before giving up with exit code 4 (default 0: '
                             'look once)')
    parser.add_argument('--input_ready_marker', default=None, metavar='NAME',
                        help='a file that says the input is complete (e.g. _READY): a '
                             'name in the folder of --input, or a full path; the run '
                             'waits for it (see --wait_for_input)')
    parser.add_argument('--lock_timeout', type=seconds, default=LOCK_TIMEOUT,
                        metavar='SECONDS',
                        help='a lock on the destination older than this is taken to be '
                             "a dead run's and taken over (default "
                             f'{LOCK_TIMEOUT:.0f}); a local run whose process is gone '
                             'loses its lock at once')


# --------------------------------------------------------------------------- dates

PLACEHOLDER = re.compile(r'\{date(?::([^{}]*))?\}')
#: the flags whose values may hold {date} placeholders
PATH_FLAGS = ('input', 'output', 'model', 'model_dir', 'init', 'cache_dir',
              'input_ready_marker', 'shadow_model', 'canary_model', 'gate', 'history')


def fill_dates(args) -> None:
    """Replace ``{date}`` and ``{date:FORMAT}`` in the path flags, from ``--date``."""
    date = getattr(args, 'date', None)
    for flag in PATH_FLAGS:
        value = getattr(args, flag, None)
        if not isinstance(value, str) or not PLACEHOLDER.search(value):
            continue
        if date is None:
            raise BeammlError(f'--{flag} {value} has a {{date}} placeholder: give --date '
                              'YYYY-MM-DD, today or yesterday')
        setattr(args, flag, PLACEHOLDER.sub(
            lambda m: date.strftime(m.group(1) or '%Y-%m-%d'), value))


# --------------------------------------------------------------------------- errors

class InputChangedError(BeammlError):
    """The destination is complete, but its input changed since (exit code
    :data:`EXIT_INPUT_CHANGED`)."""
    exit_code = EXIT_INPUT_CHANGED


# --------------------------------------------------------------------------- destination

class Destination:
    """Where a run's results go, and the names beside it: ``_SUCCESS``, the lock and
    the temporary prefix of run ``run_id``."""

    def __init__(self, output: str, folder: bool):
        self.output = output
        self.folder = folder or output.endswith('/')
        root = output.rstrip('/') if self.folder else output
        self.parent, self.name = _split(root)
        if not self.name or (root.startswith('gs://') and not self.parent):
            raise BeammlError(f'--output {output}: name a folder or prefix inside the '
                              'bucket (gs://BUCKET/predictions/...), not the bucket itself')
        if self.folder:
            self.owned = root + '/'          # everything under the folder is the run's
            self.success = root + '/_SUCCESS'
        else:
            self.owned = root + '-'          # the files PREFIX-*
            self.success = root + '-_SUCCESS'
        self.shown = self.owned if self.folder else self.owned + '*'
        self.lock = _join(self.parent, f'.beamml-lock-{self.name}')
        self.journal = _join(self.parent, f'.beamml-commit-{self.name}')
        self.temp_glob = _join(self.parent, f'{RUN_TEMPORARY}{self.name}-')
        self.refused_glob = _join(self.parent, f'.beamml-refused-{self.name}-')

    def namespace(self) -> Namespace:
        """Everything a run of this destination writes (:mod:`beamml.pipelines._platform.overlap`)."""
        shown = f'--output {self.output}' + ('' if self.folder else f' ({self.shown})')
        return Namespace(shown, self.owned, run_folders=[self.temp_glob, self.refused_glob],
                         names=[self.lock, self.journal])

    def refused_root(self, run_id: str) -> str:
        """Where a run refused by --max_refused_fraction leaves its dead letters."""
        return f'{self.refused_glob}{run_id}'

    def temp_root(self, run_id: str) -> str:
        return f'{self.temp_glob}{run_id}'

    def temp_output(self, run_id: str) -> str:
        """The ``--output`` the pipeline writes to, in the temporary prefix."""
        root = self.temp_root(run_id)
        if self.folder:
            return root + ('/' if self.output.endswith('/') else '')
        return _join(root, self.name)

    def final_path(self, temp_file: str, run_id: str) -> str:
        rel = temp_file[len(self.temp_root(run_id)) + 1:]
        return self.owned + rel if self.folder else _join(self.parent, rel)

    def read_success(self) -> dict | None:
        """The destination's ``_SUCCESS`` document, or None when there is none; a
        ``_SUCCESS`` that beamml did not write (not its JSON) is a BeammlError: it is
        never replaced."""
        found = read_stored(self.success)
        if found is None:
            return None
        try:
            doc = json.loads(found.data)
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and isinstance(doc.get('run_id'), str)
                and isinstance(doc.get('outputs'), list)):
            raise BeammlError(
                f'--output {self.output}: {self.success} was not written by a beamml run (it '
                'is not the JSON document beamml writes there); nothing was done: beamml '
                'never deletes or replaces files it did not write. Move it away or choose '
                'another --output')
        return doc


#: flags that do not change a run's results
_NOT_PARAMETERS = {'overwrite', 'wait_for_input', 'lock_timeout', 'config', 'anonymous_storage',
                   'output_given', 'allow_foreign_files'}


def parameters(args) -> dict:
    """The run's flags as JSON values (what _SUCCESS records, and a rerun compares)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in _NOT_PARAMETERS or k.startswith('_'):
            continue
        if isinstance(v, (dt.date, dt.datetime)):
            v = v.isoformat()
        elif not isinstance(v, (str, int, float, bool, type(None))):
            v = str(v)
        out[k] = v
    out['output'] = getattr(args, 'output_given', None) or args.output
    return out


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ-') + uuid.uuid4().hex[:6]


# --------------------------------------------------------------------------- the run

class DatedRun:
    """One committed run of a batch pipeline into ``args.output``.

    In the launcher, before the graph is built: is the destination complete (then
    :attr:`complete`, and the run is skipped), wait for the input, take the lock, and
    point ``args.output`` at the temporary prefix. :meth:`commit` adds the graph's last
    step, which moves the results into place and writes ``_SUCCESS``. As a context
    manager: a run that fails in the launcher removes its temporary prefix and releases
    the lock; ``args.output`` is the destination again afterwards.
    """

    def __init__(self, args, options, pipeline: str, *, folder: bool = False):
        from beamml.pipelines._platform import flags, runners
        self.args, self.pipeline = args, pipeline
        self.dry_run = runners.is_dry_run(options)
        self.launch_only = runners.is_launch_only(options)
        self.dest = Destination(getattr(args, 'output_given', None) or args.output, folder)
        self.run_id = new_run_id()
        self.started = _now()
        self.complete: dict | None = None
        self.inputs: list[dict] = []
        self.final_output = args.output
        self.parameters = parameters(args)
        self.lock_expires: str | None = None
        self._locked = False
        # before anything is read or written: the input must not read what the run writes
        input_flags = [('--input', getattr(args, 'input', None))]
        check_input_overlap(input_flags, [self.dest.namespace()])
        if self.dry_run:   # translated offline: no storage is touched
            return
        # the folder (or bucket) the destination, its lock and its temporary prefix go in
        flags.check_output(self.dest.lock, given=self.dest.output)
        found = self.dest.read_success()
        if found is not None and not args.overwrite:
            self.complete = found
            self._complete(found)
            return
        files = wait_for_input(args)
        check_input_overlap(input_flags, [self.dest.namespace()], files)
        if not args.allow_foreign_files:
            foreign = foreign_files(self.dest)
            if foreign:
                raise foreign_error(self.dest, foreign)
        self.lock_expires = acquire_lock(self.dest, self.run_id, args.lock_timeout,
                                         None if self.launch_only else os.getpid())
        self._locked = True
        try:
            self._remove_dead_runs()
            self.inputs = describe_files(files)
        except BaseException:
            self.abandon()
            raise
        LOG.info('run %s: %d input file(s), results go to %s (temporary %s)', self.run_id,
                 len(files), self.dest.output, self.dest.temp_root(self.run_id))

    def _complete(self, found: dict) -> None:
        """The destination has _SUCCESS and no --overwrite: nothing to do, unless its input
        changed since (:class:`InputChangedError`); say so, and clean up what a run killed
        after its _SUCCESS left (its lock, temporary prefix, journal)."""
        dest, args = self.dest, self.args
        files = _matched(args.input)
        changes = input_changes(found.get('inputs') or [], describe_files(files)) if files else []
        if changes:
            more = f' (and {len(changes) - 1} more change(s))' if len(changes) > 1 else ''
            raise InputChangedError(
                f'{dest.output} is complete (run {found.get("run_id")} at {found.get("ended")}) '
                f'but its input changed since: {changes[0]}{more}; its results are stale: '
                f'--overwrite recomputes them (exit code {EXIT_INPUT_CHANGED})')
        print(f'{dest.output} is complete: {dest.success} was written by run '
              f'{found.get("run_id")} at {found.get("ended")}; nothing to do '
              '(--overwrite to run it again)')
        if not files:
            print(f'note: no file matches --input {args.input} any more; the results are those '
                  'of the input _SUCCESS lists')
        changed = sorted(k for k in set(self.parameters) | set(found.get('parameters', {}))
                         if self.parameters.get(k) != found.get('parameters', {}).get(k))
        if changed:
            print('note: that run had other values of ' + ', '.join(f'--{k}' for k in changed)
                  + '; --overwrite replaces its results with this run\'s')
        journal = read_journal(dest)
        done = journal is not None and journal.get('run_id') == found.get('run_id')
        if lock_holder(dest) is None and not done and not _run_entries(dest.temp_glob):
            return
        try:   # a live run's lock stays; a dead one's is taken over
            self.lock_expires = acquire_lock(dest, self.run_id, args.lock_timeout, os.getpid())
        except LockedError:
            return
        try:
            self._remove_dead_runs()
            if done:
                delete_files([dest.journal])
        finally:
            release_lock(dest, self.run_id)

    def _remove_dead_runs(self) -> None:
        """Temporary prefixes of earlier runs for this destination: dead (the lock is ours).
        Locally an empty folder left by a killed run goes too."""
        for run_id in sorted(_run_entries(self.dest.temp_glob)):
            if run_id != self.run_id:
                root = self.dest.temp_root(run_id)
                LOG.info('removing %s, left by an earlier run that did not finish', root)
                delete_tree(root + '/')   # (locally its folders too, empty ones included)

    def __enter__(self):
        temp = self.dest.temp_output(self.run_id)
        self.args.output = shard_prefix(temp) if hasattr(self.args, 'output_given') else temp
        return self

    def __exit__(self, kind, value, tb):
        self.args.output = self.final_output
        if kind is not None:   # (a launch-only run that raised submitted no job either)
            self.abandon()
        return False

    def abandon(self) -> None:
        """Remove this run's temporary prefix and release the lock (best effort)."""
        if self.dry_run or not self._locked:
            return
        temp = self.dest.temp_root(self.run_id) + '/'
        try:
            # a failed run's other bundles may still be finishing a write: delete until
            # nothing new appears (the next run for the destination removes any straggler)
            for _ in range(6):
                delete_tree(temp)
                time.sleep(0.5)
                if not list_under(temp):
                    break
            release_lock(self.dest, self.run_id)
        except Exception as e:   # storage gone: the next run cleans up
            LOG.warning('could not clean up %s: %s; the next run for %s removes it',
                        self.dest.temp_root(self.run_id), first_line(e), self.dest.output)
        self._locked = False

    def commit(self, p, built: dict, *, errors_glob=None, info: dict | None = None,
               finish=None, max_refused_fraction=None):
        """Add the commit step: after every ``written`` PCollection is complete, check the
        refused fraction, run ``finish(temp_output, counts)`` (a last touch to the results,
        such as the counts in metrics.json), move the results into place, write
        ``_SUCCESS``, remove the temporary prefix and release the lock.

        ``built`` is what the pipeline's ``build`` returned: ``read`` (the reader's
        outputs: ``batches`` and ``errors``), ``errors`` (every dead letter) and ``written``
        (the sinks' outputs). Records: read = rows of the reader's batches + its dead
        letters; refused = every dead letter; ok = read - refused (the counters' invariant).
        ``errors_glob``: the dead-letter files (in the temporary prefix), kept beside the
        destination when the run is refused.
        """
        from beamml.pipelines._platform.commit import one, rows_of
        from beamml.transforms.core.errors import ERRORS
        parts = [built['read'].batches | 'CommitCountRows' >> beam.Map(rows_of),
                 built['read'][ERRORS] | 'CommitCountReadErrors' >> beam.Map(one, 'read_errors'),
                 built['errors'] | 'CommitCountRefused' >> beam.Map(one, 'refused')]
        parts += [w | f'CommitWritten{i}' >> beam.Map(one, 'written')
                  for i, w in enumerate(built['written'])]
        counts = (parts | 'CommitCounts' >> beam.Flatten()
                  | 'CommitSumCounts' >> beam.CombineGlobally(CommitCountsFn()))
        plan = CommitPlan(self, info or {}, finish, max_refused_fraction, errors_glob)
        return (p | 'CommitPlan' >> beam.Create([plan])
                | 'Commit' >> beam.Map(commit_step, beam.pvalue.AsSingleton(counts)))


def run_and_show(args, options, pipeline: str, build, show, *, errors_glob, report: bool = True,
                 **kwargs):
    """:func:`run_committed`, then the end of the run: ``show(built)`` prints what the run
    wrote (and may raise), unless nothing was run (the destination is complete) or there
    is nothing to read back here (:func:`runners.no_results`: a dry run, a launch that does
    not wait). With ``report=False`` the records line and --max_refused_fraction follow
    what ``show`` prints. Returns the result (None when nothing was run)."""
    from beamml.pipelines._platform import main as process, runners
    result, built = run_committed(args, options, pipeline, build, errors_glob=errors_glob,
                                  report=report, **kwargs)
    if result is None or runners.no_results(options):
        return result
    show(built)
    if not report:
        process.report(result, errors_glob=errors_glob(args.output),
                      max_refused_fraction=args.max_refused_fraction)
    return result


def run_committed(args, options, pipeline: str, build, *, errors_glob, info=None,
                  finish=None, folder: bool = False, report: bool = True):
    """Build and run a batch pipeline as one committed run (:class:`DatedRun`):
    ``build(p, args)`` writes into the temporary prefix, the commit step moves the results
    into ``args.output``. ``errors_glob(output)`` is the pattern of the dead letters under
    an output; ``info(built)`` adds to _SUCCESS; ``finish`` see :meth:`DatedRun.commit`;
    ``report``: print the records line and enforce --max_refused_fraction after the run
    (else the caller does). Returns (result, built), or (None, None) when the destination
    is complete already (said, and nothing was run)."""
    from beamml.pipelines._platform import main as process, runners
    dated = DatedRun(args, options, pipeline, folder=folder)
    if dated.complete is not None:
        return None, None
    with dated:   # args.output is the temporary prefix inside
        p = beam.Pipeline(options=options)
        built = build(p, args)
        dated.commit(p, built, errors_glob=errors_glob(args.output),
                     info=info(built) if info else None, finish=finish,
                     max_refused_fraction=args.max_refused_fraction)
        if not report:
            return runners.run_pipeline(p), built
        return process.run_and_report(p, errors_glob=errors_glob(dated.final_output),
                                     max_refused_fraction=args.max_refused_fraction), built
