"""Event-time windows for the streaming graphs: fixed or sliding, allowed lateness, pane timing.

* :func:`window_into` windows a stream: ``FixedWindows(window_size)``, or
  ``SlidingWindows(window_size, window_period)``, with the trigger every
  streaming aggregation here uses: a pane when the watermark passes the end of
  the window (``on_time``), then one more pane for each late arrival within
  ``allowed_lateness`` (``late``), each pane holding everything so far
  (accumulating: a late pane replaces the one before).
* :class:`LateGate` runs on windowed RecordBatches (each batch lies in one
  window, as ``BatchElements`` makes them) and does what Beam does not: Beam
  drops data too late for its window silently inside the next GroupByKey. The
  gate knows, per window, when the watermark passed its end and its end plus
  the allowed lateness (an event-time timer each), so it marks each batch
  ``on_time`` or ``late`` (columns ``window_start``, ``window_end``, ``timing``)
  and turns the rows of a batch that comes after its window closed into dead
  letters with reason ``late``. It runs on one key in the global window (the
  knowledge is about the watermark, which is global); it sees batches, not
  points, so one key is a batch's worth of work per batch.

What the gate cannot see: data for a window that closed before the gate saw
anything of that window or of any later one (its timers were never set).
Such a batch is marked as a new window's and passes; an aggregation's
GroupByKey then drops it, as Beam does. In a stream with data in every window
this does not happen; ``assign`` (no aggregation) keeps and labels it.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import coders
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import trigger
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Duration, Timestamp

from beamml.transforms.core.errors import BeammlError, ERRORS, RecordCounters, dead_letter
from beamml.transforms.core.types import SOURCE_COLUMNS

__all__ = ['WINDOW_COLUMNS', 'ON_TIME', 'LATE', 'check_windows', 'window_fn', 'window_into',
           'LateGate', 'discarding_panes', 'pane_timing', 'window_bounds', 'iso', 'iso_times']

#: the columns :class:`LateGate` adds to every batch
WINDOW_COLUMNS = ('window_start', 'window_end', 'timing')
ON_TIME, LATE = 'on_time', 'late'
_TIMESTAMP = pa.timestamp('us', tz='UTC')


def check_windows(window_size: float | None, window_period: float | None = None,
                  allowed_lateness: float = 0.0) -> None:
    """A BeammlError naming the parameter when the windows cannot be made."""
    if window_size is None:
        if window_period is not None:
            raise BeammlError('window_period needs a window_size', parameters=('window_period',))
        return
    if not np.isfinite(window_size) or window_size <= 0:
        raise BeammlError(f'window_size must be > 0 seconds, got {window_size!r}',
                          parameters=('window_size',))
    if window_period is not None and not (0 < window_period <= window_size):
        raise BeammlError(f'window_period must be > 0 and <= window_size ({window_size}), '
                          f'got {window_period!r}', parameters=('window_period',))
    if not np.isfinite(allowed_lateness) or allowed_lateness < 0:
        raise BeammlError(f'allowed_lateness must be >= 0 seconds, got {allowed_lateness!r}',
                          parameters=('allowed_lateness',))


def window_fn(window_size: float, window_period: float | None = None):
    """FixedWindows(window_size), or SlidingWindows when a period below the size is given."""
    if window_period is None or window_period == window_size:
        return beam_window.FixedWindows(window_size)
    return beam_window.SlidingWindows(window_size, window_period)


def window_into(window_size: float, window_period: float | None = None,
                allowed_lateness: float = 0.0) -> beam.WindowInto:
    """The windowing of every streaming aggregation: on-time pane, a pane per late arrival."""
    check_windows(window_size, window_period, allowed_lateness)
    return beam.WindowInto(
        window_fn(window_size, window_period),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=Duration.of(allowed_lateness))


def iso(ts: Timestamp) -> str:
    """A window bound as ISO-8601 UTC to the millisecond (``2026-12-06T02:59:35.000Z``): the
    one spelling of a time in file names, rows and records (:func:`iso_times` for columns)."""
    return ts.to_utc_datetime().isoformat(timespec='milliseconds') + 'Z'


def iso_times(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its timestamp columns as text spelled as :func:`iso` spells a time
    (``2026-12-06T02:59:35.000Z``; a zone-less timestamp is taken as UTC), vectorised: for
    the text outputs of a stream (JSON lines, CSV, Pub/Sub messages)."""
    import pyarrow.compute as pc
    if not any(pa.types.is_timestamp(t) for t in batch.schema.types):
        return batch
    cols = [pc.strftime(col.cast(pa.timestamp('ms', tz='UTC'), safe=False),
                        format='%Y-%m-%dT%H:%M:%SZ', locale='C')
            if pa.types.is_timestamp(col.type) else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def window_bounds(window) -> tuple[Timestamp | None, Timestamp | None]:
    if isinstance(window, beam_window.IntervalWindow):
        return window.start, window.end
    return None, None


def pane_timing(pane) -> str:
    """``on_time``, ``late`` or ``early`` for a Beam PaneInfo (``unknown`` without one)."""
    from apache_beam.utils.windowed_value import PaneInfoTiming
    return {PaneInfoTiming.ON_TIME: ON_TIME, PaneInfoTiming.LATE: LATE,
            PaneInfoTiming.EARLY: 'early'}.get(getattr(pane, 'timing', None), 'unknown')


# ----------------------------------------------------------------------------- the gate

class _CarriedWindow(beam_window.NonMergingWindowFn):
    """Puts each ``(start_micros, end_micros, value)`` element back into its window."""

    def assign(self, context):
        start, end, _ = context.element
        return [beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))]

    def get_window_coder(self):
        return coders.IntervalWindowCoder()


class _SameWindow(beam_window.NonMergingWindowFn):
    """Keeps each element in the window it is in (to change only the trigger)."""

    def assign(self, context):
        return [context.window]

    def get_window_coder(self):
        return coders.IntervalWindowCoder()


def discarding_panes(allowed_lateness: float = 0.0):
    """The same windows, each pane holding only what came since the pane before: for
    writing panes out (a late pane's file then holds the late records, not the on-time
    ones again)."""
    return beam.WindowInto(_SameWindow(),
                           trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                           accumulation_mode=trigger.AccumulationMode.DISCARDING,
                           allowed_lateness=Duration.of(allowed_lateness))


def _with_window(batch, window=beam.DoFn.WindowParam):
    start, end = window_bounds(window)
    if start is None:
        raise BeammlError('LateGate needs windowed batches (apply window_into first)')
    yield ('gate', (start.micros, end.micros, batch))


def _window_columns(batch: pa.RecordBatch, start: int, end: int, timing: str) -> pa.RecordBatch:
    n = batch.num_rows
    for name in WINDOW_COLUMNS:
        if name in batch.schema.names:
            batch = batch.drop_columns([name])
    return (batch
            .append_column('window_start', pa.array(np.full(n, start, dtype=np.int64),
                                                    pa.int64()).cast(_TIMESTAMP))
            .append_column('window_end', pa.array(np.full(n, end, dtype=np.int64),
                                                  pa.int64()).cast(_TIMESTAMP))
            .append_column('timing', pa.repeat(pa.scalar(timing, pa.string()), n)))


def _late_letters(batch: pa.RecordBatch, start: int, end: int, lateness: float,
                  source: str | None) -> list[dict]:
    """Dead letters of a batch that came after its window closed (a loop over refused rows)."""
    names = [c for c in batch.schema.names if c not in SOURCE_COLUMNS]
    rows = batch.select(names).to_pylist()
    has_source = all(c in batch.schema.names for c in SOURCE_COLUMNS)
    files = batch.column('_file').to_pylist() if has_source else [source] * len(rows)
    rownums = batch.column('_row').to_pylist() if has_source else [None] * len(rows)
    lines = batch.column('_line').to_pylist() if has_source else [None] * len(rows)
    reason = (f'late: its window [{iso(Timestamp(micros=start))}, '
              f'{iso(Timestamp(micros=end))}) closed (allowed lateness {lateness:g} s)')
    return [dead_letter(f, r, ln, reason, row) for f, r, ln, row in zip(files, rownums, lines,
                                                                         rows)]


class _GateFn(beam.DoFn):
    """One key, global window: which windows' ends (and ends + lateness) the watermark passed."""
    ENDED = ReadModifyWriteStateSpec('ended', VarIntCoder())     # latest window end passed
    CLOSED = ReadModifyWriteStateSpec('closed', VarIntCoder())   # latest end + lateness passed
    END = TimerSpec('end', TimeDomain.WATERMARK)
    CLOSE = TimerSpec('close', TimeDomain.WATERMARK)

    def __init__(self, allowed_lateness: float, source: str | None):
        self.lateness_us = int(round(allowed_lateness * 1e6))
        self.allowed_lateness = allowed_lateness
        self.source = source
        self.counters = RecordCounters()

    def process(self, element, ended=beam.DoFn.StateParam(ENDED),
                closed=beam.DoFn.StateParam(CLOSED), end_timer=beam.DoFn.TimerParam(END),
                close_timer=beam.DoFn.TimerParam(CLOSE)):
        _, (start, end, batch) = element
        close = end + self.lateness_us
        if close <= (closed.read() or -(1 << 62)):
            self.counters.refuse_accepted(batch.num_rows)
            for dl in _late_letters(batch, start, end, self.allowed_lateness, self.source):
                yield beam.pvalue.TaggedOutput(ERRORS, dl)
            return
        timing = LATE if end <= (ended.read() or -(1 << 62)) else ON_TIME
        if timing == ON_TIME:
            end_timer.set(Timestamp(micros=end), dynamic_timer_tag=str(end))
        close_timer.set(Timestamp(micros=close), dynamic_timer_tag=str(close))
        yield (start, end, _window_columns(batch, start, end, timing))

    @on_timer(END)
    def _ended(self, ended=beam.DoFn.StateParam(ENDED), fired=beam.DoFn.TimestampParam):
        ended.write(max(ended.read() or -(1 << 62), fired.micros))

    @on_timer(CLOSE)
    def _closed(self, closed=beam.DoFn.StateParam(CLOSED), fired=beam.DoFn.TimestampParam):
        closed.write(max(closed.read() or -(1 << 62), fired.micros))


def _batch_of(element):
    return element[2]


class LateGate(beam.PTransform):
    """Windowed RecordBatches -> the same, marked on time or late; too late -> dead letters.

    Returns ``{'batches', 'errors'}``: ``batches`` in their windows again (with
    :func:`window_into`'s trigger and lateness, for the aggregations after it;
    ``accumulating=False``: each pane holds only what arrived since the one
    before, for row outputs), each with
    ``window_start`` and ``window_end`` (timestamp[us, UTC]) and ``timing``
    (``on_time``: the watermark had not passed the window's end; ``late``: it had,
    but not the end plus ``allowed_lateness``); ``errors`` the dead letters of the rows
    of batches that came later (reason ``late: ...``), with their ``_file``,
    ``_row``, ``_line`` when the batch carries them (else ``source``). Those rows
    move from records_ok to records_refused.
    """

    def __init__(self, allowed_lateness: float = 0.0, *, source: str | None = None,
                 accumulating: bool = True, label: str | None = None):
        super().__init__(label)
        self.allowed_lateness, self.source = float(allowed_lateness), source
        self.accumulating = accumulating

    def expand(self, batches):   # a dict of PCollections (a return hint would make Beam warn)
        outs = (batches
                | 'WithWindow' >> beam.FlatMap(_with_window).with_output_types(
                    beam.typehints.KV[str, beam.typehints.Any])
                | 'OneKey' >> beam.WindowInto(beam_window.GlobalWindows())
                | 'Gate' >> beam.ParDo(_GateFn(self.allowed_lateness, self.source))
                .with_input_types(beam.typehints.KV[str, beam.typehints.Any])
                .with_outputs(ERRORS, main='batches'))
        marked = (outs.batches
                  | 'BackInItsWindow' >> beam.WindowInto(
                      _CarriedWindow(),
                      trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                      accumulation_mode=(trigger.AccumulationMode.ACCUMULATING
                                         if self.accumulating
                                         else trigger.AccumulationMode.DISCARDING),
                      allowed_lateness=Duration.of(self.allowed_lateness))
                  | 'Batch' >> beam.Map(_batch_of))
        return {'batches': marked, 'errors': outs[ERRORS]}
