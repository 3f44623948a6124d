"""Named fault points: the places where a test may kill or hold a run.

``fault_point('commit.before_moves')`` does nothing unless the environment variable
``BEAMML_FAULT`` names that point; then it kills the process (``<point>:kill``, SIGKILL,
no clean-up) or holds it (``<point>:pause:<file>``: creates ``<file>.reached`` and waits,
up to 120 s, until the file is removed). Only tests set the variable; the points and
what each is for are listed in one table, ``tests/faults.py``.
"""
from __future__ import annotations

import os
import sys

VARIABLE = 'BEAMML_FAULT'


def fault_point(name: str) -> None:
    """Kill or hold the process here when ``BEAMML_FAULT`` names this point."""
    spec = os.environ.get(VARIABLE)
    if not spec or spec.split(':', 1)[0] != name:
        return
    action, _, path = spec[len(name) + 1:].partition(':')
    if action == 'kill':
        import signal
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == 'pause':
        pause(path)
    else:
        raise ValueError(f'{VARIABLE}={spec}: the action is kill or pause:<file>')


def pause(path: str, timeout: float = 120.0) -> None:
    """Create ``<path>.reached``, then wait (up to ``timeout`` s) until ``path`` is removed."""
    import time
    with open(path + '.reached', 'w'):
        pass
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
