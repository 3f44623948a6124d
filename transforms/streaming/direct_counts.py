"""Counters of every bundle on the BundleBasedDirectRunner, not only of each step's first.

Beam 2.77's BundleBasedDirectRunner runs each bundle with a fresh ``MetricsContainer``
(``TransformExecutor.call`` in ``runners/direct/executor.py``), but enters it through
the worker thread's one ``StateSampler``, whose ``scoped_state`` caches the state of a
step by name (``runners/worker/statesampler.py``): from a step's second bundle on, the
counters go to the container of its first bundle, which was already committed, and are
lost. A stream, whose steps run many bundles, reported ``records_read=1`` after
thousands of records. :func:`count_every_bundle` gives each bundle a sampler of its
own (about 2 us a bundle), so each bundle's container is the one its counters reach.
Every local stream installs it (``streaming_options`` and ``run_stream`` in
``pipelines/_platform/streams.py``, and the watched read on that runner), and its records
line is then Beam's committed counters, as on Dataflow.
"""
from __future__ import annotations

import threading

__all__ = ['count_every_bundle']

_LOCK = threading.Lock()


def count_every_bundle() -> None:
    """Run each bundle of the BundleBasedDirectRunner under a state sampler of its own
    (once per process; a no-op when already done, by whoever marked it)."""
    from apache_beam.runners.direct import executor
    with _LOCK:
        call = executor.TransformExecutor.call
        if getattr(call, 'beamml_fresh_sampler', False):
            return
        from apache_beam.runners.worker import statesampler
        from apache_beam.utils import counters

        def call_with_own_sampler(self, state_sampler):
            own = statesampler.StateSampler('', counters.CounterFactory())
            statesampler.set_current_tracker(own)
            try:
                return call(self, own)
            finally:
                statesampler.set_current_tracker(state_sampler)

        call_with_own_sampler.beamml_fresh_sampler = True
        call_with_own_sampler.__doc__ = call.__doc__
        call_with_own_sampler.__wrapped__ = call   # Beam's own
        executor.TransformExecutor.call = call_with_own_sampler
