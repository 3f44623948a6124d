"""The record counts of a local stream, kept in the process that runs it.

Beam's ``BundleBasedDirectRunner`` (the local runner of Pub/Sub and TestStream streams)
reports a step's counters of its first bundle only: each worker thread's
``StateSampler.scoped_state`` caches the step's state with the ``MetricsContainer`` of
the first bundle it ran, so every later bundle counts into that first container, which
was committed once, while the later bundles' own containers stay empty and commit
nothing (``apache_beam/runners/worker/statesampler.py``, ``runners/direct/executor.py``
``TransformExecutor.call``). Committed and attempted values are alike wrong, cancelled
or not: 501 messages read gave ``records_read=1`` (a first bundle of one message).

That runner runs every step in threads of the process that started it, so the record
counters (:class:`~beamml.transforms.core.errors.RecordCounters`) also add here, to the
tally a run opened (:func:`open_tally`); with no tally open (Dataflow workers, the
FnApiRunner, batch runs) :func:`add` does nothing and Beam's counters are the count.
One lock per addition, a few per batch: no cost per row.
"""
from __future__ import annotations

import threading

__all__ = ['open_tally', 'close_tally', 'add']

_LOCK = threading.Lock()
_OPEN: dict | None = None


def open_tally() -> dict[str, int]:
    """Start counting in this process (replacing any tally open before); the dict the
    counters add to, by counter name."""
    global _OPEN
    with _LOCK:
        _OPEN = {}
        return _OPEN


def close_tally() -> dict[str, int]:
    """Stop counting; a copy of what was counted."""
    global _OPEN
    with _LOCK:
        got, _OPEN = dict(_OPEN or {}), None
        return got


def add(name: str, n: int) -> None:
    """Add ``n`` to the counter ``name`` of the open tally (nothing when none is open)."""
    if _OPEN is None or not n:
        return
    with _LOCK:
        if _OPEN is not None:
            _OPEN[name] = _OPEN.get(name, 0) + int(n)
