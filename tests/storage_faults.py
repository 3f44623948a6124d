"""``python tests/storage_faults.py <pipeline> [flags]``: beamml's command line, with the
faults a test sets up through the environment (this file is test code: beamml never
imports it).

* ``FAULT_STORAGE_RETRY_SECONDS=S``: Google's storage client (and so Beam's ``gs://``
  reads and writes) gives up on an unanswered request after S seconds instead of 120.
* ``FAULT_PAUSE_READ=FILE``: every file read of a source (``read_file_batches``) first
  waits at :func:`beamml.pipelines._platform.faults.pause` (``FILE.reached``, then until
  the test removes FILE): the storage can be stopped after the launcher inspected the
  input and before the workers read it.
* ``FAULT_PAUSE_FINALIZE=FILE``: a sink's finalize (the rename of its shards into place)
  waits likewise.
"""
from __future__ import annotations

import functools
import os
import sys


def _shorten_storage_retries(seconds: float) -> None:
    from google.cloud.storage import retry
    from apache_beam.io.gcp import gcsio_retry
    for r in (retry.DEFAULT_RETRY, gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER):
        r._timeout = r._deadline = seconds


def _pause_before(owner, name: str, variable: str) -> None:
    from beamml.pipelines._platform.faults import pause
    real = getattr(owner, name)

    @functools.wraps(real)
    def paused(*args, **kwargs):
        pause(os.environ[variable])
        return real(*args, **kwargs)
    setattr(owner, name, paused)


def main(argv) -> int:
    if os.environ.get('FAULT_STORAGE_RETRY_SECONDS'):
        _shorten_storage_retries(float(os.environ['FAULT_STORAGE_RETRY_SECONDS']))
    if os.environ.get('FAULT_PAUSE_READ'):
        from beamml.transforms.io import sources
        _pause_before(sources, 'read_file_batches', 'FAULT_PAUSE_READ')
    if os.environ.get('FAULT_PAUSE_FINALIZE'):
        from beamml.transforms.io import sinks
        _pause_before(sinks._EveryShard, 'finalize_write', 'FAULT_PAUSE_FINALIZE')
    from beamml.pipelines.__main__ import main as beamml
    return beamml(argv)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
