"""Every exit code of ``beamml``, in one table (imports nothing of beamml).

==== ================= =========================================================
code name              when
==== ================= =========================================================
0    OK                the run did what it was asked (a complete date: nothing to do)
1    FAILED            an unexpected error (a bug): its traceback is printed
2    USAGE             a mistake or a refusal, one line on stderr: bad flags or config,
                       bad input, a refused destination, storage errors, a full disk
3    ALARM             ``monitor``: an alarm fired (the outputs are committed first)
4    NO_INPUT          a dated run found no input (and ``--wait_for_input`` ran out)
5    LOCKED            another run holds the destination's lock
6    INPUT_CHANGED     a complete destination whose input changed since (``--overwrite``)
130  INTERRUPTED       SIGINT (Ctrl-C), after the run's clean-up
143  TERMINATED        SIGTERM, after the run's clean-up
==== ================= =========================================================

argparse's own usage errors (an unknown choice, a missing required flag, a value its
``type=`` refuses) exit 2 too, with the usage before the one line.
"""
from __future__ import annotations

import enum

__all__ = ['Exit']


class Exit(enum.IntEnum):
    """The exit codes of beamml (see the module's table)."""
    OK = 0
    FAILED = 1
    USAGE = 2
    ALARM = 3
    NO_INPUT = 4
    LOCKED = 5
    INPUT_CHANGED = 6
    INTERRUPTED = 130
    TERMINATED = 143
