"""``beamml ...`` run in the test's own process: the console script's ``main`` with its
exit code and what it prints, without the 2-3 s a new Python spends importing Beam.

A subprocess is still what the tests of the console script itself use (signals, the
process's real exit status, environment variables read at import); everything else that
only needs "the exit code and the lines" runs here.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass


@dataclass
class Completed:
    """What ``subprocess.run(..., text=True)`` gives, for the assertions written for it."""
    returncode: int
    stdout: str
    stderr: str


def run_beamml(*argv, cwd: str | os.PathLike | None = None) -> Completed:
    """``beamml ARGV...`` in this process (arguments turned to strings), in ``cwd``."""
    from beamml.pipelines.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:   # argparse's own usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(before)
    return Completed(code, out.getvalue(), err.getvalue())
