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
"""
from __future__ import annotations

import argparse
import datetime as dt

__all__ = ['EXIT_NO_INPUT', 'EXIT_LOCKED', 'add_date_arg', 'add_run_args']

EXIT_NO_INPUT = 4
EXIT_LOCKED = 5
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


def seconds(value: str) -> float:
    """A duration in seconds, >= 0 (argparse type)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a number of seconds') from None
    if not x >= 0 or x == float('inf'):
        raise argparse.ArgumentTypeError(f'{value!r} is not a number of seconds >= 0')
    return x


def add_date_arg(parser) -> None:
    parser.add_argument('--date', type=run_date, default=None,
                        help='the run date, YYYY-MM-DD, today or yesterday (UTC): fills '
                             '{date} (YYYY-MM-DD) and {date:FORMAT} (strftime, e.g. '
                             '{date:%%Y/%%m/%%d}) in the path flags')


def add_run_args(parser) -> None:
    """The flags of a batch pipeline whose outputs are committed once, with _SUCCESS."""
    add_date_arg(parser)
    parser.add_argument('--overwrite', action='store_true',
                        help='run even when the destination already has _SUCCESS, and '
                             'replace its results (they stay until the new ones are in)')
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
