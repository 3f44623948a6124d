"""Reading inputs: work-item planning, one file to RowBatches, the ReadPoints / ReadTable sources.

Sources yield ``pyarrow.RecordBatch``es, never single rows: ``ReadPoints`` gives
batches ``(id, features)``, ``ReadTable`` the files' own columns. Every refused
row is a dead letter on the ``errors`` output and is counted
(:class:`~beamml.transforms.core.errors.RecordCounters`).
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import apache_beam as beam
import pyarrow as pa

from beamml.transforms.core.objects import open_file
from beamml.transforms.io.csvio import read_csv
from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters, dead_letter
from beamml.transforms.io.inspection import inspect_input
from beamml.transforms.io.jsonio import read_jsonl
from beamml.transforms.io.layout import Layout, match_input
from beamml.transforms.io.npyio import plan_npy, read_npy
from beamml.transforms.io.parquetio import plan_parquet, read_parquet
from beamml.transforms.io.rows import BATCH_ROWS, RowBatch, table_checks, to_points
from beamml.transforms.core.types import SOURCE_COLUMNS

__all__ = ['SPLIT_ROWS', 'plan_reads', 'read_file_batches', 'ReadPoints', 'ReadTable',
           'read_table_files', 'rows_as_read', 'RecordsAsRead']

_LOG = logging.getLogger('beamml')

SPLIT_ROWS = 1 << 20  # rows per work item when a Parquet or .npy file is split


def plan_reads(path: str, layout: Layout,
               split_rows: int | None = None) -> list[tuple[str, tuple | None]]:
    """Work items ``(path, part)`` for one file: a large Parquet file is split at row
    groups and a large ``.npy`` file at rows (about ``split_rows`` rows each), so
    several workers read it; CSV and JSON lines files are read whole (``part=None``).
    """
    fmt = layout.input_format
    split_rows = split_rows or SPLIT_ROWS
    if fmt not in ('parquet', 'npy'):
        return [(path, None)]
    with open_file(path) as f:
        if fmt == 'npy':
            return plan_npy(f, path, split_rows)
        return plan_parquet(f, path, split_rows)


def _plan(item: str, layout: Layout, pattern: bool) -> list[tuple[str, tuple | None]]:
    """Work items of a matched path, or (``pattern``: the layout was given, nothing was
    matched when the graph was built) of every file the pattern matches now."""
    if not pattern:
        return plan_reads(item, layout)
    return [w for path, _ in match_input(item) for w in plan_reads(path, layout)]


def read_file_batches(path: str, layout: Layout, batch_rows: int = BATCH_ROWS,
                      part: tuple | None = None) -> Iterator[RowBatch | dict]:
    """Yield RowBatches (and dead-letter dicts for unparseable rows) of one file.

    ``part`` (from :func:`plan_reads`) restricts the read to a range of rows. The
    clean path is pyarrow's / numpy's readers only. A CSV row with the wrong
    number of fields and a JSON line that does not parse come out as dead letters.
    """
    fmt = layout.input_format
    with open_file(path) as f:
        if fmt == 'parquet':
            yield from read_parquet(f, path, layout, batch_rows, part)
        elif fmt == 'csv':
            yield from read_csv(f, path, layout)
        elif fmt == 'jsonl':
            yield from read_jsonl(f, path, layout)
        elif fmt == 'npy':
            yield from read_npy(f, path, batch_rows, part)
        else:
            raise AssertionError(fmt)


class _ReadFileFn(beam.DoFn):
    """Read whole files (given by path) into batches; refused rows go to ERRORS."""

    def __init__(self, layout: Layout, points: bool, allow_nan: bool, batch_rows: int,
                 source_columns: bool = False, refuse_zero: bool = False):
        self.layout, self.points = layout, points
        self.refuse_zero = refuse_zero
        self.allow_nan, self.batch_rows = allow_nan, batch_rows
        self.source_columns = source_columns
        counters = RecordCounters()
        self.read, self.ok, self.refused = counters.read, counters.ok, counters.refused

    def process(self, work: str | tuple):
        path, part = (work, None) if isinstance(work, str) else work
        n_ok = n_refused = 0
        for item in read_file_batches(path, self.layout, self.batch_rows, part):
            if isinstance(item, dict):
                self.read.inc()
                self.refused.inc()
                n_refused += 1
                yield beam.pvalue.TaggedOutput(ERRORS, item)
                continue
            self.read.inc(item.table.num_rows)
            if self.points:
                out, dead = to_points(item, self.layout, path, self.allow_nan,
                                      self.source_columns, self.refuse_zero)
            else:
                out, dead = table_checks(item, self.layout, path, self.source_columns)
            if dead:
                self.refused.inc(len(dead))
                n_refused += len(dead)
                for dl in dead:
                    yield beam.pvalue.TaggedOutput(ERRORS, dl)
            if out is not None and out.num_rows:
                self.ok.inc(out.num_rows)
                n_ok += out.num_rows
                yield out
        where = f' rows {part[0]}..{part[1] - 1}' if part else ''
        _LOG.info('read %s%s: %d rows accepted, %d refused', path, where, n_ok, n_refused)


class _ReadBase(beam.PTransform):
    _points = True

    def __init__(self, file_pattern: str, *, input_format: str | None = None,
                 id_column: str | None = None, feature_columns: Sequence[str] | None = None,
                 dimension: int | None = None, allow_nan: bool = False,
                 batch_rows: int = BATCH_ROWS, source_columns: bool = False,
                 refuse_zero: bool = False, weight_column: str | None = None,
                 layout: Layout | None = None, label: str | None = None):
        super().__init__(label)
        self.file_pattern = file_pattern
        self.refuse_zero = refuse_zero
        self.source_columns = source_columns
        self.allow_nan = allow_nan
        self.batch_rows = batch_rows
        if layout is not None:   # given: nothing is matched or read until the graph runs
            given = [n for n, v in (('input_format', input_format), ('id_column', id_column),
                                    ('feature_columns', feature_columns),
                                    ('dimension', dimension),
                                    ('weight_column', weight_column)) if v is not None]
            if given:
                raise BeammlError(f'give layout or {", ".join(given)}, not both (the layout '
                                  'says them)', parameters=given)
            if not isinstance(layout, Layout):
                raise BeammlError(f'layout must be a Layout, got {type(layout).__name__}',
                                  parameters=('layout',))
            if self._points and not layout.feature_columns:
                raise BeammlError('the layout has no feature columns: points need them',
                                  parameters=('layout',))
            self.paths, self.layout = None, layout
            return
        # Decided now, before the graph runs: errors a user can fix surface here.
        self.paths, self.layout = inspect_input(
            file_pattern, input_format=input_format, id_column=id_column,
            feature_columns=feature_columns, dimension=dimension, need_features=self._points,
            weight_column=weight_column)

    @property
    def schema(self) -> pa.Schema:
        return self.layout.points_schema()

    def expand(self, pbegin):
        # The same steps however many files match (Create would reshuffle more than one
        # element by itself; SpreadPaths always does, so the files are planned (their
        # footers read) on several workers) and whether they were matched now or will be
        # when the graph runs (a given layout: the pattern is matched then).
        pattern = self.paths is None
        files = (pbegin
                 | 'MatchedFiles' >> beam.Create([self.file_pattern] if pattern else self.paths,
                                                 reshuffle=False)
                 | 'SpreadPaths' >> beam.Reshuffle()
                 | 'PlanReads' >> beam.FlatMap(_plan, self.layout, pattern)
                 | 'SpreadFiles' >> beam.Reshuffle())
        return files | 'ParseFiles' >> beam.ParDo(
            _ReadFileFn(self.layout, self._points, self.allow_nan, self.batch_rows,
                        self.source_columns, self.refuse_zero)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='batches')


class ReadPoints(_ReadBase):
    """Read a point cloud into RecordBatches ``(id, features)`` plus dead letters.

    ``p | ReadPoints('data/*.csv')`` returns a tuple-like result: ``result.batches``
    (or ``result['batches']``) holds the RecordBatches, ``result.errors`` the
    dead-letter dicts. The files are matched and the first one inspected when the
    transform is constructed (see :func:`inspect_input`); ``.layout`` and ``.schema``
    tell what was decided. With ``layout=`` (a :class:`Layout`, e.g. from
    :func:`~beamml.transforms.io.declared.declared_layout`) nothing is matched or read
    then: the pattern is matched when the graph runs (``.paths`` is None), in the same
    steps; what a Dataflow dry run, which touches no storage, builds.
    ``source_columns=True`` appends ``_file``, ``_row`` and
    ``_line`` to each batch, for steps that refuse rows later (assignment).
    ``refuse_zero=True`` refuses a zero vector (every feature 0) as a dead letter,
    ``"zero vector: cosine distance is undefined"`` (K-means with cosine distance
    reads its input so).
    ``weight_column='w'`` adds a float64 ``weight`` column (sample weights, e.g. for
    K-means); a row whose weight is missing, not a number, NaN, infinite or negative
    is a dead letter, and the column is never a feature.
    """
    _points = True


class ReadTable(_ReadBase):
    """Read tabular files into RecordBatches of their own columns plus dead letters.

    Only structural problems are refused (a CSV row with the wrong number of
    fields, a JSON line that does not parse) and, when an id column is named or
    present, rows whose id is missing or empty. ``layout=`` as for ReadPoints. ``source_columns=True`` appends
    ``_file``, ``_row`` and ``_line`` so later steps can refuse rows with their origin (and
    must then call ``RecordCounters().refuse_accepted(n)``).
    """
    _points = False

    @property
    def schema(self):
        raise AttributeError('ReadTable keeps the files\' own columns')


def read_table_files(file_pattern: str, **kwargs) -> tuple[pa.Table, list[dict]]:
    """Read a whole (small) point cloud in this process: (points table, dead letters).

    For loading side data such as initial centres; the same parsing and checks as
    ReadPoints, without Beam.
    """
    allow_nan = kwargs.pop('allow_nan', False)
    paths, layout = inspect_input(file_pattern, **kwargs)
    batches, dead = [], []
    for path in paths:
        for item in read_file_batches(path, layout):
            if isinstance(item, dict):
                dead.append(item)
                continue
            out, dl = to_points(item, layout, path, allow_nan)
            dead.extend(dl)
            if out is not None:
                batches.append(out)
    return pa.Table.from_batches(batches, schema=layout.points_schema()), dead


# ----------------------------------------------------------------------------- rows as read

def rows_as_read(path: str, rows, layout: Layout) -> dict[int, dict]:
    """{row: the row as ReadTable gives it, every column but the source columns} of the
    data rows ``rows`` (0 = the first) of one file, read again with ``layout``: what a
    dead letter's ``record`` holds. Rows the reader refuses itself are not there."""
    import pyarrow.compute as pc
    wanted = pa.array(sorted({int(r) for r in rows}), pa.int64())
    found: dict[int, dict] = {}
    for item in read_file_batches(path, layout):
        if isinstance(item, dict):
            continue
        table, _ = table_checks(item, layout, path, source_columns=True)
        if table is None:
            continue
        picked = table.filter(pc.is_in(table.column('_row'), value_set=wanted))
        if picked.num_rows:
            numbers = picked.column('_row').to_pylist()
            keep = [c for c in picked.schema.names if c not in SOURCE_COLUMNS]
            found.update(zip(numbers, picked.select(keep).to_pylist()))
        if len(found) == len(wanted):
            break
    return found


class _RecordsAsReadFn(beam.DoFn):
    """Dead letters -> the same, ``record`` the row as read; the files are read again at
    the end of the bundle, each once (the windows and timestamps are kept)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def start_bundle(self):
        self._held = []

    def process(self, letter, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        self._held.append((letter, timestamp, window))

    def finish_bundle(self):
        from apache_beam.utils.windowed_value import WindowedValue
        held, self._held = self._held, []
        by_file: dict = {}
        for item in held:
            by_file.setdefault(item[0].get('file'), []).append(item)
        for path, items in by_file.items():
            rows = [x[0]['row'] for x in items if x[0].get('row') is not None]
            found = {}
            if path is not None and rows:
                try:
                    found = rows_as_read(path, rows, self.layout)
                except Exception as e:   # gone or unreadable since: the letters as they are
                    _LOG.warning('could not read %s again for the records of %d dead '
                                 'letter(s): %s; they keep the values the step had',
                                 path, len(items), str(e).splitlines()[0] if str(e) else e)
            for letter, timestamp, window in items:
                record = found.get(letter.get('row'))
                if record is not None:
                    letter = dead_letter(path, letter['row'], letter.get('line'),
                                         letter['reason'], record)
                yield WindowedValue(letter, timestamp, (window,))


class RecordsAsRead(beam.PTransform):
    """``dead_letters | RecordsAsRead(layout)``: the dead letters of rows a later step
    refused knowing only some of their values (e.g. a duplicate found after a shuffle of
    parsed values), with ``record`` the row as the source read it (every column, the
    values as read), read again from its file (``file``, ``row``) with the source's
    ``layout``: as every other dead letter has it. A letter whose file cannot be read
    again keeps its record (a warning says so). Cheap when there are few: only the files
    named are read, each once per bundle."""

    def __init__(self, layout: Layout, label: str | None = None):
        super().__init__(label)
        self.layout = layout

    def expand(self, letters):
        return letters | 'ReadRowsAgain' >> beam.ParDo(_RecordsAsReadFn(self.layout))
