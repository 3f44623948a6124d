"""What the table's benchmarks share: whole processes timed from outside, best of R, one result.

Every ``benchmarks/bench_<pipeline>.py`` of the table times beamml and its plain baseline
(numpy, pyarrow, scikit-learn) as whole processes (interpreter start, imports, read,
compute, write) at two or more sizes, keeps the best of ``--repeat`` runs per side and
size, checks that the two results agree, prints its own lines, and with ``--json PATH``
also writes :func:`result` there, which ``benchmarks/run_all.py`` gathers into
``benchmarks/results.json`` and the one table of ``make bench``.

Ratios are beamml's time / the plain baseline's time (lower is better for beamml; below
1.00 beamml is the faster): the *whole* ratio at the largest size, and the *marginal*
ratio, (time at the largest size - time at the smallest), beamml's over the baseline's:
fixed start-up and per-row cost are different problems.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def add_args(parser, default_rows, default_repeat: int) -> None:
    """The flags every table benchmark takes: ``--rows`` (repeatable), ``--repeat``, ``--json``."""
    parser.add_argument('--rows', type=int, action='append', default=None,
                        help='rows (repeatable; default ' +
                             ' and '.join(str(r) for r in default_rows) + ')')
    parser.add_argument('--repeat', type=int, default=default_repeat,
                        help='time each side this many times per size, keep the best '
                             f'(default {default_repeat})')
    parser.add_argument('--json', default=None, metavar='PATH',
                        help='also write the result as JSON to PATH (run_all.py gathers it)')


def sizes(args, default_rows) -> list[int]:
    return sorted(set(args.rows or default_rows))


def env() -> dict:
    """This environment with the repository first on PYTHONPATH (``python -m beamml``)."""
    out = dict(os.environ)
    out['PYTHONPATH'] = ROOT + (os.pathsep + out['PYTHONPATH'] if out.get('PYTHONPATH') else '')
    return out


def timed_process(cmd: list[str], ok_codes=(0,)) -> float:
    """Wall seconds of ``cmd`` as a new process; a failure ends the benchmark in one line
    (plus the tail of the process's stderr)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t
    if proc.returncode not in ok_codes:
        sys.stderr.write(proc.stderr[-3000:])
        what = ' '.join(a for a in cmd[1:4] if '\n' not in a)
        raise SystemExit(f'{what} ... failed (exit {proc.returncode})')
    return elapsed


def python_script(code: str, *args: str) -> list[str]:
    """The command that runs ``code`` as a plain script in a new interpreter."""
    return [sys.executable, '-c', code, *[str(a) for a in args]]


def beamml_command(pipeline: str, *flags: str) -> list[str]:
    return [sys.executable, '-m', 'beamml', pipeline, *[str(f) for f in flags]]


def ratios(best: dict) -> tuple[float, float | None]:
    """(whole ratio at the largest size, marginal ratio or None) of ``{rows: (plain, beamml)}``."""
    top = max(best)
    whole = best[top][1] / best[top][0]
    if len(best) < 2:
        return whole, None
    low = min(best)
    d_plain, d_beam = best[top][0] - best[low][0], best[top][1] - best[low][1]
    return whole, (d_beam / d_plain if d_plain > 0 else None)


def print_summary(best: dict, plain_name: str, unit: str = 'point') -> None:
    """The whole and marginal lines every table benchmark prints."""
    top, low = max(best), min(best)
    whole, marginal = ratios(best)
    print(f'whole run at {top:,} {unit}s: beamml / {plain_name} = {whole:.2f}')
    if marginal is not None or len(best) > 1:
        d_plain, d_beam = best[top][0] - best[low][0], best[top][1] - best[low][1]
        per = top - low
        shown = f'{marginal:.2f}' if marginal is not None else 'n/a (no plain growth)'
        print(f'marginal ({top:,} - {low:,} {unit}s): {plain_name} {d_plain:.2f} s '
              f'({d_plain / per * 1e9:.1f} ns per {unit}), beamml {d_beam:.2f} s '
              f'({d_beam / per * 1e9:.1f} ns); ratio {shown}')


class Agreement:
    """Whether every run's results agreed with the baseline's, and the line to report:
    the latest run's while all agree, else the first disagreement's (``add`` per run)."""

    def __init__(self):
        self.ok, self.line = True, ''

    def add(self, line: str, ok: bool) -> None:
        if self.ok:   # once one run disagreed, its line is the one reported
            self.line = line
        self.ok = self.ok and bool(ok)


def result(pipeline: str, plain: str, best: dict, repeat: int, agreed: bool, agreement: str,
           load_start, argv) -> dict:
    """The machine-readable result of one benchmark run (what ``--json`` writes)."""
    whole, marginal = ratios(best)
    return {
        'pipeline': pipeline,
        'status': 'ok' if agreed else 'disagree',
        'plain': plain,
        'sizes': sorted(best),
        'best_seconds': {str(n): {'plain': round(best[n][0], 4), 'beamml': round(best[n][1], 4)}
                         for n in sorted(best)},
        'whole_ratio': round(whole, 4),
        'marginal_ratio': None if marginal is None else round(marginal, 4),
        'repeat': repeat,
        'agreed': bool(agreed),
        'agreement': agreement,
        'load': [round(x, 2) for x in load_start],
        'load_end': [round(x, 2) for x in os.getloadavg()],
        'cores': os.cpu_count(),
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'command': 'python benchmarks/' + os.path.basename(sys.argv[0]) + ''.join(
            f' {a}' for a in argv),
    }


def write_result(path: str | None, doc: dict) -> None:
    if path:
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, path)


def finish(args, pipeline: str, plain: str, best: dict, agreed: bool, agreement: str,
           load_start, argv, unit: str = 'point') -> int:
    """Print the summary, write ``--json``, and return the exit code (1 when they disagree)."""
    print_summary(best, plain, unit)
    write_result(args.json, result(pipeline, plain, best, args.repeat, agreed, agreement,
                                   load_start, [a for a in argv if not a.startswith('--json')
                                                and a != args.json]))
    if not agreed:
        print(f'the results DISAGREE: {agreement}')
        return 1
    return 0
