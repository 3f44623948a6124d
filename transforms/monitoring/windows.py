"""The retraining rules across the windows of a stream: a rule such as "PSI > 0.2 in 3
consecutive windows" is decided per key with Beam state holding the drift values of the
latest windows (``beamml monitor --streaming``).
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beamml.transforms.monitoring.drift import decide

__all__ = ['DecideFn']


def _compact(drift: dict) -> dict:
    """What the rules read of a window's drift (its values), for the state."""
    return {'window_start': drift['window_start'], 'window_end': drift['window_end'],
            'features': {n: {m: {'value': e['value']} for m, e in ms.items()}
                         for n, ms in drift['features'].items()},
            'model': {m: {'value': e['value']} for m, e in (drift.get('model') or {}).items()}}


class DecideFn(beam.DoFn):
    """One key: the drift values of the latest windows (by window start), and per window
    the decision over the consecutive windows that end with it. Emits each decision
    stamped in its own window (re-windowed by the caller)."""

    WINDOWS = ReadModifyWriteStateSpec('windows', PickleCoder())

    def __init__(self, config, window_us: int):
        self.config, self.window_us = config, int(window_us)
        self.keep = max([r['consecutive'] for r in config.rules] or [1])

    def process(self, element, windows=beam.DoFn.StateParam(WINDOWS)):
        _, record = element
        seen = windows.read() or {}
        start = record['window_start_us']
        seen[start] = _compact(record['drift'])
        run = []
        s = start
        while s in seen and len(run) < self.keep:   # the consecutive windows ending here
            run.insert(0, seen[s])
            s -= self.window_us
        newest = max(seen)
        windows.write({k: v for k, v in seen.items()
                       if k > newest - (self.keep + 1) * self.window_us})
        decision = decide(run, self.config)
        out = {k: record[k] for k in ('window_start', 'window_end', 'timing', 'pane')}
        yield TimestampedValue({**out, **decision}, Timestamp(micros=record['window_end_us'] - 1))
