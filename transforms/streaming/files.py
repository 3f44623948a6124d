"""A watched file pattern as an unbounded source: each new file read once, as it lands.

``p | ReadWatchedPoints('gs://b/incoming/*.parquet', interval=10, stop_after=3600)``
polls the pattern every ``interval`` seconds and reads each file it has not read
yet with the batch readers (:func:`~beamml.transforms.io.sources.plan_reads`,
:class:`~beamml.transforms.io.sources._ReadFileFn`): the same RecordBatches, row
checks, dead letters and counters as :class:`~beamml.transforms.io.sources.ReadPoints`
gives on the same files. The graph is::

    polls (PeriodicImpulse's schedule) -> the pattern -> MatchAll -> a stateful
    step keyed by path (new, settled files) -> PlanReads -> ParseFiles

There is no Reshuffle (nor Flatten) after the stateful step: on the local
FnApiRunner either holds its input to the end of the run, so nothing would come
out while the watch runs. Files are spread over workers by the stateful step,
which is keyed by path; the parts of one large file (plan_reads) are read one
after another by the worker that took the file.

What "new" means
    A path is read once. A file rewritten (or deleted and written again) under a
    path already read is not read again (a WARNING names it, see below); give each
    file a new name. The state holds one small cell per path ever seen.

Files still being written
    On a local file system a file is read at the first poll that sees the same size
    and modification time as the poll before it, that time at least one interval old
    (so at the earliest one interval after it appears, and never if the watch stops
    first). Object stores (``gs://`` and every other scheme) show an object only once
    it is whole, so there a file is read at the first poll that sees it.
    ``wait_stable`` overrides the choice. Nothing tells a writer's pause from its end:
    a local writer must write elsewhere and rename into the directory (a rename is
    atomic), or a writer pausing for longer than ``interval`` is read half way. A file
    whose size or time changes after it was taken is not read again; the run logs one
    WARNING naming it (both sizes) and counts it (``files_changed_after_read``).

Event times
    Every batch and dead letter of a file carries, as its element timestamp, the
    time of the poll that took the file for reading (the poll's scheduled time,
    from ``PeriodicImpulse``). Windowing is left to the steps downstream.

Start and stop
    The polls start when the pipeline starts running (``PeriodicImpulse`` rebased
    to execution time) and, with ``stop_after`` seconds, the last poll is before
    ``start + stop_after``; the source then ends, and so does the pipeline once
    the last files are read. ``stop_after=None`` watches forever.

The layout
    When the pattern matches files at construction, the layout is decided as
    ReadPoints decides it (:func:`~beamml.transforms.io.inspection.inspect_input`,
    with the same errors). When it matches nothing yet, the layout comes from the
    parameters alone (:func:`layout_from_parameters`): ``input_format`` (or the
    pattern's extension), ``feature_columns`` or ``dimension``, and ``id_column``
    (``id_type`` says whether the ids are ``'int64'`` or ``'string'``, the default).

A file that cannot be read
    A file the batch readers refuse with an error (another format, a missing
    column, a damaged Parquet file, a truncated .npy file, an empty file) does
    not stop the stream: it becomes one dead letter ``{"file": path, "row":
    None, "line": None, "reason": the batch reader's one-line error, "record":
    None}``, counted as one record read and refused. Rows of that file read
    before the error (a Parquet page damaged half way) stay on the output; the
    reason then says how many rows came before it. Rows of another dimension, a
    value that is not a number, etc. are the batch readers' per-row dead letters.

Runners
    Dataflow (and the ``FnApiRunner``) run the polls as a splittable DoFn
    (``_PollFn``, with a manual watermark estimator). On the ``BundleBasedDirectRunner``,
    the local streaming runner, they run as a step of their own that moves the
    watermark with the polls (:mod:`~beamml.transforms.streaming.local_files`), so a
    window downstream closes, and its pane is written, within about one interval of
    its end. The FnApiRunner runs stage by stage: there every window after a GroupByKey
    is written only when the watch ends.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.coders import FloatCoder, TupleCoder, VarIntCoder
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp

from beamml.transforms.core.errors import (COUNTER_NAMESPACE, ERRORS, BeammlError, RecordCounters,
                                           dead_letter)
from beamml.transforms.io.inspection import check_feature_roles, check_weight_column, inspect_input
from beamml.transforms.io.layout import INPUT_FORMATS, Layout, format_of, listable, printable
from beamml.transforms.io.rows import BATCH_ROWS
from beamml.transforms.io.sources import _ReadFileFn, plan_reads
from beamml.transforms.streaming.local_files import _PollFn, poll_schedule, register_direct_runner
from beamml.transforms.streaming.windows import iso

__all__ = ['ReadWatchedPoints', 'ReadWatchedTable', 'layout_from_parameters', 'watched_layout']

_LOG = logging.getLogger('beamml')


# ----------------------------------------------------------------------------- layout

def _parts(names: list[str]) -> str:
    if len(names) < 3:
        return ' and '.join(names)
    return ', '.join(names[:-1]) + ', and ' + names[-1]


def layout_from_parameters(file_pattern: str, *, points: bool = True,
                           input_format: str | None = None, id_column: str | None = None,
                           feature_columns: Sequence[str] | None = None,
                           dimension: int | None = None, weight_column: str | None = None,
                           id_type: str | None = None) -> Layout:
    """The Layout of an input no file of which exists yet, from the parameters alone.

    ``input_format`` (else the pattern's extension: ``*.parquet``); for points,
    ``feature_columns`` (scalar columns; for JSON lines and Parquet one column with
    ``dimension`` is a list column of that length) or ``dimension`` alone (a list
    column ``features``; for .npy the array's width); ``id_column`` for every format
    but .npy (whose ids are ``<file name>:<row>``). ``id_type``: ``'string'``
    (default) or ``'int64'``. What is missing is one BeammlError naming it all.
    """
    fmt = input_format
    if fmt is None:
        try:
            fmt = format_of(file_pattern, None)
        except BeammlError:
            fmt = None
    elif fmt not in INPUT_FORMATS:
        format_of(file_pattern, fmt)   # the unknown-format error
    if id_type not in (None, 'int64', 'string'):
        raise BeammlError(f"id_type must be 'int64' or 'string', got {id_type!r}",
                          parameters=('id_type',))
    if dimension is not None and dimension < 1:
        raise BeammlError(f'dimension must be >= 1, got {dimension}', parameters=('dimension',))
    feature_columns = tuple(c.strip() for c in feature_columns) if feature_columns else ()
    missing, names = [], []
    if fmt is None:
        missing.append('input_format')
        names.append('input_format')
    if fmt == 'npy' and dimension is None:   # tables of .npy are points too
        missing.append('dimension')
        names.append('dimension')
    elif points:
        if fmt == 'csv' and not feature_columns:
            missing.append('feature_columns')
            names.append('feature_columns')
        elif not feature_columns and dimension is None:
            missing.append('feature_columns or dimension')
            names += ['feature_columns', 'dimension']
    if fmt != 'npy' and not id_column:
        missing.append('id_column')
        names.append('id_column')
    if missing:
        raise BeammlError(f'no file matches {file_pattern} yet, so its layout must come from '
                          f'the parameters: pass {_parts(missing)}', parameters=tuple(names))
    if fmt == 'npy':
        if id_column:
            raise BeammlError('.npy input has no columns; drop id_column '
                              '(ids are <file name>:<row>)', parameters=('id_column',))
        if weight_column:
            raise BeammlError('.npy input has no columns, so no weight column; drop '
                              'weight_column', parameters=('weight_column',))
        return Layout('npy', ('features',), None, 'string', ('features',), True, dimension)
    id_type = id_type or 'string'
    weight_column = check_weight_column(weight_column, points)
    if weight_column is not None and weight_column == id_column:
        raise BeammlError(f'the id column {id_column!r} cannot also be the weight column '
                          '(weight_column)', parameters=('weight_column', 'id_column'))
    if not points:
        return Layout(fmt, (), id_column, id_type, (), False, 0)
    check_feature_roles(id_column, weight_column, feature_columns)
    if not feature_columns:   # JSON lines or Parquet: a list column 'features'
        feature_columns, list_features, d = ('features',), True, dimension
    elif len(feature_columns) == 1 and dimension is not None and fmt != 'csv':
        list_features, d = True, dimension
    else:
        list_features, d = False, len(feature_columns)
        if dimension is not None and dimension != d:
            raise BeammlError(f'{d} feature columns ({", ".join(feature_columns)}) but '
                              f'dimension is {dimension}', parameters=('dimension',))
    columns = (id_column,) + feature_columns + ((weight_column,) if weight_column else ())
    return Layout(fmt, columns, id_column, id_type, feature_columns, list_features, int(d),
                  None, weight_column=weight_column)


def watched_layout(file_pattern: str, *, points: bool = True, id_type: str | None = None,
                   **kwargs) -> tuple[list[str], Layout]:
    """(paths matched now, Layout): inspected as ReadPoints does when the pattern
    matches files now (``id_type``, when given, must agree), else
    :func:`layout_from_parameters` (no paths)."""
    try:   # (a local folder that does not exist yet matches nothing)
        results = FileSystems.match([listable(file_pattern)])
    except Exception as e:   # BeamIOError: the pattern itself is unreadable
        raise BeammlError(f'cannot list input {file_pattern}: {e}') from e
    present = [m.path for r in results for m in r.metadata_list if not m.path.endswith('/')]
    if not present:
        return [], layout_from_parameters(file_pattern, points=points, id_type=id_type,
                                          **kwargs)
    if id_type not in (None, 'int64', 'string'):
        raise BeammlError(f"id_type must be 'int64' or 'string', got {id_type!r}",
                          parameters=('id_type',))
    paths, layout = inspect_input(file_pattern, need_features=points, **kwargs)
    if id_type is not None and layout.id_column and layout.id_type != id_type:
        raise BeammlError(f'{paths[0]} has {layout.id_type} ids in {layout.id_column!r}, '
                          f'id_type says {id_type}', parameters=('id_type',))
    return paths, layout


# ----------------------------------------------------------------------------- steps

def _signature(m) -> Tuple[str, Tuple[int, float]]:
    mtime = m.last_updated_in_seconds
    return m.path, (int(m.size_in_bytes), -1.0 if mtime is None else float(mtime))


class _NewFilesFn(beam.DoFn):
    """Keyed by path: ``(path, size)`` once per path, at the first poll that sees it
    (``wait_stable=False``) or, with ``wait_stable=True``, at the first poll that sees
    the size and modification time of the poll before it, the modification time at
    least ``quiet`` seconds old (two polls run close together after the runner was
    busy must not take a file still being written as whole).

    A path taken whose size or modification time changes later (a writer that paused
    longer than the polls, or a file rewritten in place) is not read again; that is
    logged once, naming the file (WARNING), and counted (``files_changed_after_read``):
    what changed may not have been read.

    The state of a path is ``(size, mtime)`` while it waits, ``(-2 - size, mtime)`` once
    taken, ``(-1, mtime)`` once its change was logged (and ``(-1, -1.0)``, a path
    taken by an earlier version of this step: the coder is the one it had, so a running
    Dataflow job can be updated).
    """
    SEEN = ReadModifyWriteStateSpec('seen', TupleCoder([VarIntCoder(), FloatCoder()]))

    def __init__(self, wait_stable: bool, quiet: float = 0.0):
        self.wait_stable, self.quiet = wait_stable, quiet
        self.changed = Metrics.counter(COUNTER_NAMESPACE, 'files_changed_after_read')

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        path, (size, mtime) = element
        before = seen.read()
        if before is not None and before[0] < 0:   # taken already
            if before[0] <= -2 and (-2 - before[0], before[1]) != (size, mtime):
                seen.write((-1, before[1]))
                self.changed.inc()
                _LOG.warning(
                    'watch: %s changed after it was taken for reading (%d bytes, modified '
                    '%s; now %d bytes, modified %s): it is not read again, so what changed '
                    'may not have been read; a writer must write the file elsewhere and '
                    'rename it into the watched folder', path, -2 - before[0],
                    _when(before[1]), size, _when(mtime))
            return
        if self.wait_stable and (before is None or tuple(before) != (size, mtime)
                                 or 0 <= time.time() - mtime < self.quiet):
            seen.write((size, mtime))   # new or still changing: look again next poll
            return
        seen.write((-2 - size, mtime))
        yield path, size


def _when(mtime: float) -> str:
    return 'unknown' if mtime < 0 else iso(Timestamp.of(mtime))


def _file_refused(path: str, e: Exception, rows_before: int = 0) -> dict:
    """The dead letter of a file (or part) the readers refuse with an error."""
    if isinstance(e, BeammlError):
        reason = str(e)
    else:
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        reason = f'{path} is not readable: {first}'
    reason = printable(reason.strip().splitlines()[0] if reason.strip() else type(e).__name__)
    if rows_before:
        reason += f' (after {rows_before} rows, which were read)'
    level = logging.WARNING if isinstance(e, BeammlError) else logging.ERROR
    _LOG.log(level, 'refused %s: %s', path, reason,
             exc_info=not isinstance(e, BeammlError))
    return dead_letter(path, None, None, reason, None)


class _PlanFn(beam.DoFn):
    """A new file's work items (plan_reads); a file that cannot be planned (empty,
    of another format, unreadable) is one dead letter, passed on as the work item
    (ParseFiles puts it on its errors output; no Flatten, which the FnApiRunner
    would hold to the end of the run)."""

    def __init__(self, layout: Layout, format_given: bool):
        self.layout, self.format_given = layout, format_given
        counters = RecordCounters()
        self.read, self.refused = counters.read, counters.refused

    def process(self, element):
        path, size = element
        try:
            if size == 0:
                raise BeammlError(f'input file {path} is empty (0 bytes)')
            if not self.format_given:
                fmt = format_of(path, None)
                if fmt != self.layout.input_format:
                    raise BeammlError(f'{path} is {fmt}, the watched input is '
                                      f'{self.layout.input_format}; read them separately')
            work = plan_reads(path, self.layout)
        except Exception as e:   # one file must not stop the stream
            self.read.inc()
            self.refused.inc()
            yield _file_refused(path, e)
            return
        yield from work


class _WatchedReadFn(_ReadFileFn):
    """The batch reader's DoFn, but an error reading a file is its dead letter."""

    def process(self, work):
        if isinstance(work, dict):   # a file refused by PlanReads
            yield beam.pvalue.TaggedOutput(ERRORS, work)
            return
        path = work if isinstance(work, str) else work[0]
        rows = 0
        try:
            for out in super().process(work):
                rows += 1 if isinstance(out, beam.pvalue.TaggedOutput) else out.num_rows
                yield out
        except Exception as e:   # one file must not stop the stream
            self.read.inc()
            self.refused.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _file_refused(path, e, rows))


# ----------------------------------------------------------------------------- transforms

class _WatchBase(beam.PTransform):
    _points = True

    def __init__(self, file_pattern: str, *, interval: float = 10.0,
                 stop_after: float | None = None, wait_stable: bool | None = None,
                 input_format: str | None = None, id_column: str | None = None,
                 feature_columns: Sequence[str] | None = None, dimension: int | None = None,
                 allow_nan: bool = False, batch_rows: int = BATCH_ROWS,
                 source_columns: bool = False, refuse_zero: bool = False,
                 weight_column: str | None = None, id_type: str | None = None,
                 layout: Layout | None = None, label: str | None = None):
        super().__init__(label)
        if not interval or interval <= 0:
            raise BeammlError(f'the watch interval must be > 0 seconds, got {interval}')
        if stop_after is not None and stop_after <= 0:
            raise BeammlError(f'stop_after must be > 0 seconds (or none: watch forever), '
                              f'got {stop_after}', parameters=('stop_after',))
        self.file_pattern = file_pattern
        self.interval, self.stop_after = float(interval), stop_after
        if wait_stable is None:   # object stores show whole objects only
            wait_stable = FileSystems.get_scheme(file_pattern) in (None, 'file')
        self.wait_stable = wait_stable
        self.allow_nan, self.batch_rows = allow_nan, batch_rows
        self.source_columns, self.refuse_zero = source_columns, refuse_zero
        self.format_given = input_format is not None
        if layout is not None:   # given: nothing is matched now (a dry run touches no storage)
            given = [n for n, v in (('input_format', input_format), ('id_column', id_column),
                                    ('feature_columns', feature_columns),
                                    ('dimension', dimension), ('weight_column', weight_column),
                                    ('id_type', id_type)) if v is not None]
            if given:
                raise BeammlError(f'give layout or {", ".join(given)}, not both (the layout '
                                  'says them)', parameters=given)
            if self._points and not layout.feature_columns:
                raise BeammlError('the layout has no feature columns: points need them',
                                  parameters=('layout',))
            self.format_given = True   # the layout says the format: every file is read as it
            self.paths, self.layout = [], layout
            return
        # Decided now, before the graph runs: errors a user can fix surface here.
        self.paths, self.layout = watched_layout(
            file_pattern, points=self._points, id_type=id_type, input_format=input_format,
            id_column=id_column, feature_columns=feature_columns, dimension=dimension,
            weight_column=weight_column)

    @property
    def schema(self) -> pa.Schema:
        return self.layout.points_schema()

    def _poll_times(self, pbegin):
        """One element per poll, timestamped with its scheduled time, from the start of
        the run (as ``PeriodicImpulse`` with ``RebaseMode.REBASE_ALL``); on the local
        streaming runner the polls are a step of their own that moves the watermark
        (local_files.py)."""
        register_direct_runner()   # (once) should the pipeline run there
        return (pbegin
                | 'StartWatch' >> beam.Impulse()
                | 'Schedule' >> beam.Map(poll_schedule, self.interval, self.stop_after)
                | 'Polls' >> beam.ParDo(_PollFn()))

    def expand(self, pbegin):
        pattern = listable(self.file_pattern)   # part*.csv: ./part*.csv
        new = (self._poll_times(pbegin)
               | 'ThePattern' >> beam.Map(lambda _: pattern)
               | 'MatchFiles' >> fileio.MatchAll()
               | 'KeyByPath' >> beam.Map(_signature).with_output_types(
                   Tuple[str, Tuple[int, float]])
               | 'NewFiles' >> beam.ParDo(_NewFilesFn(self.wait_stable, self.interval)))
        planned = new | 'PlanReads' >> beam.ParDo(_PlanFn(self.layout, self.format_given))
        return planned | 'ParseFiles' >> beam.ParDo(
            _WatchedReadFn(self.layout, self._points, self.allow_nan, self.batch_rows,
                           self.source_columns, self.refuse_zero)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='batches')


class ReadWatchedPoints(_WatchBase):
    """Watch ``file_pattern`` and read each new file once into RecordBatches
    ``(id, features)[, weight][, _file, _row, _line]`` plus dead letters, as
    :class:`~beamml.transforms.io.sources.ReadPoints` reads them (the same keyword
    arguments). ``interval``: seconds between polls; ``stop_after``: seconds after
    the start at which the watch ends (None: never); ``wait_stable``: read a file
    only once two polls saw the same size and time (default: local paths only);
    ``id_type``: the ids' type when no file exists yet; ``layout``: a Layout to read
    the files with, instead of one decided now (nothing is matched until the graph
    runs: what a Dataflow dry run builds). See the module's notes:
    a path is read once (a file rewritten under it is not read again), the
    element timestamps are the times of the polls that took the files.
    """
    _points = True


class ReadWatchedTable(_WatchBase):
    """Watch ``file_pattern`` and read each new file once into RecordBatches of its own
    columns (prediction logs) plus dead letters, as
    :class:`~beamml.transforms.io.sources.ReadTable` reads them. ``interval``,
    ``stop_after``, ``wait_stable``, ``id_type`` and ``layout`` as for
    :class:`ReadWatchedPoints`.
    """
    _points = False

    @property
    def schema(self):
        raise AttributeError('ReadWatchedTable keeps the files\' own columns')
