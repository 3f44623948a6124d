"""Many ``beamml`` runs in ONE process with no network at all (``unshare -n``).

A Dataflow dry run must touch no network; proving it takes a process in a network
namespace with the loopback down. One such process per case paid Python's and Beam's
start-up (2-3 s) 20 times over; here one process runs every case of a test module in
turn (each with the console script's ``main``, its own temporary folder and timing),
and the tests assert on each case's result.

    python tests/offline.py CASES.json RESULTS.json

``CASES.json``: ``{name: {"argv": [...], "cwd": DIR|null, "tmpdir": DIR}}``;
``RESULTS.json``: ``{name: {"returncode", "stdout", "stderr", "seconds"}}``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def no_network_reason() -> str | None:
    """Why ``unshare -n`` cannot run here, or None when it can."""
    if not shutil.which('unshare'):
        return 'unshare is not installed'
    probe = subprocess.run(['unshare', '-n', 'true'], capture_output=True, text=True)
    if probe.returncode:
        return f'unshare -n is not permitted here: {probe.stderr.strip()}'
    return None


def run_offline(cases: dict, folder, *, require_unshare: bool = False,
                timeout: float = 600) -> dict:
    """Run every case of ``cases`` (``{name: {"argv", "cwd", "tmpdir"}}``) in one process
    under ``unshare -n`` (without it when it cannot run here, unless ``require_unshare``),
    with no emulator or credentials in its environment; the results by name."""
    folder = str(folder)
    spec, results = os.path.join(folder, 'cases.json'), os.path.join(folder, 'results.json')
    with open(spec, 'w') as f:
        json.dump(cases, f)
    env = {k: v for k, v in os.environ.items()
           if k not in ('STORAGE_EMULATOR_HOST', 'GOOGLE_APPLICATION_CREDENTIALS')}
    cmd = [sys.executable, os.path.abspath(__file__), spec, results]
    why = no_network_reason()
    if why and require_unshare:
        raise RuntimeError(why)
    if not why:
        cmd = ['unshare', '-n'] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode or not os.path.exists(results):
        raise RuntimeError(f'the offline runs failed (exit {out.returncode}):\n'
                           f'{out.stderr[-3000:]}')
    with open(results) as f:
        return json.load(f)


def main(spec: str, results: str) -> int:
    sys.path.insert(0, HERE)
    import beam_signatures
    from inprocess import run_beamml
    beam_signatures.install()   # as in the suite's own processes (conftest.py)
    with open(spec) as f:
        cases = json.load(f)
    done = {}
    for name, case in cases.items():
        saved = tempfile.tempdir
        tempfile.tempdir = case['tmpdir']
        started = time.monotonic()
        try:
            r = run_beamml(*case['argv'], cwd=case.get('cwd'))
        finally:
            tempfile.tempdir = saved
        done[name] = {'returncode': r.returncode, 'stdout': r.stdout, 'stderr': r.stderr,
                      'seconds': time.monotonic() - started}
    with open(results, 'w') as f:
        json.dump(done, f)
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
