"""`beamml monitor` vs a plain numpy histogram + PSI script, whole processes, same Parquet file.

N x 8 points (columns x0..x7, N = each --rows, default 1M and 4M) in one Parquet file,
compared with a baseline made once (not timed) by ``beamml monitor --make_baseline``
from 200,000 points of the same distribution. The current data are shifted by 0.5 std
on x0, so some alarms fire (beamml then exits 3, which counts as a success here).
Each side is a whole process, started in a subprocess and timed from the outside
(interpreter start, imports, read, compute, write):

* beamml: ``python -m beamml monitor --input FILE --baseline BASE --output DIR
  --overwrite`` (the DirectRunner; no model, so the work is the features' and the L2
  norm's statistics, histograms, PSI and JS);
* numpy: a plain script, ``pyarrow.parquet.read_table`` -> numpy -> per feature
  ``np.searchsorted`` on the baseline's fine edges (plus the two overflow bins), the
  drift bins summed with ``np.add.reduceat``, PSI with the same epsilon; it writes the
  PSI per feature as JSON. It does less than beamml (no moments, quantiles, norms, JS,
  dead letters or committed run), which is the point of the comparison.

It prints every time, keeps the best of --repeat runs per side and size, checks that the
PSI values agree (to 1e-9 relative), and prints the whole ratio at the largest size and
the marginal one ((time(largest) - time(smallest)) per point, both sides).

    python benchmarks/bench_monitor.py [--rows 1000000 --rows 4000000] [--repeat 2]
        [--json PATH]

With ``--json PATH`` it also writes its result for ``benchmarks/run_all.py`` (the table
of ``make bench``; benchmarks/_harness.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import _harness as h  # noqa: E402

DEFAULT_ROWS = (1_000_000, 4_000_000)
BASELINE_ROWS = 200_000

#: the numpy side, run as ``python -c NUMPY_SCRIPT FILE BASELINE.json OUT.json``
NUMPY_SCRIPT = '''
import json, sys
import numpy as np
import pyarrow.parquet as pq
path, baseline_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
with open(baseline_path) as f:
    base = json.load(f)
table = pq.read_table(path)
eps = 1e-6
psi = {}
for name in base['names']:
    col = base['features'][name]
    edges = np.array(col['histogram']['edges'])
    cuts = [0] + col['drift']['cuts']
    x = table.column(name).to_numpy()
    x = x[np.isfinite(x)]
    idx = np.searchsorted(edges, x, side='right')
    idx[x == edges[-1]] = len(edges) - 1
    counts = np.bincount(idx, minlength=len(edges) + 1)
    a = np.add.reduceat(counts, cuts) / len(x) + eps
    b = np.add.reduceat(np.array(col['histogram']['counts']), cuts) / base['rows'] + eps
    psi[name] = float(np.sum((a - b) * np.log(a / b)))
with open(out, 'w') as f:
    json.dump(psi, f)
'''


def make_data(path: str, rows: int, d: int, shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = {'id': pa.array(np.arange(rows, dtype=np.int64))}
    scale = np.arange(1, d + 1, dtype=np.float64)
    for j in range(d):
        x = rng.normal(size=rows) * scale[j]
        if j == 0:
            x += shift * scale[j]
        cols[f'x{j}'] = pa.array(x)
    pq.write_table(pa.table(cols), path, row_group_size=65536)


def _env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    return env


def _timed(cmd: list[str], ok_codes=(0,)) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode not in ok_codes:
        raise SystemExit(f'{" ".join(cmd[:4])} ... failed ({proc.returncode}):\n'
                         f'{proc.stderr[-3000:]}')
    return elapsed


def run_numpy(path: str, baseline: str, out: str) -> tuple[float, dict]:
    elapsed = _timed([sys.executable, '-c', NUMPY_SCRIPT, path, baseline, out])
    with open(out) as f:
        return elapsed, json.load(f)


def run_beamml(path: str, baseline: str, out: str) -> tuple[float, dict]:
    elapsed = _timed([sys.executable, '-m', 'beamml', 'monitor', '--input', path,
                      '--baseline', baseline, '--output', out, '--overwrite'], ok_codes=(0, 3))
    with open(os.path.join(out, 'drift.json')) as f:
        drift = json.load(f)
    return elapsed, {n: m['psi']['value'] for n, m in drift['features'].items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, action='append', default=None,
                        help='points (repeatable; default 1000000 and 4000000)')
    parser.add_argument('--dim', type=int, default=8)
    parser.add_argument('--repeat', type=int, default=2,
                        help='time each side this many times per size, keep the best')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'bench_output', 'monitor'))
    parser.add_argument('--json', default=None, metavar='PATH',
                        help='also write the result as JSON to PATH (run_all.py gathers it)')
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parser.parse_known_args(argv)
    load = os.getloadavg()
    agreed = h.Agreement()
    sizes = sorted(set(args.rows or DEFAULT_ROWS))
    os.makedirs(args.workdir, exist_ok=True)

    base_data = os.path.join(args.workdir, f'baseline-{BASELINE_ROWS}x{args.dim}.parquet')
    base_dir = os.path.join(args.workdir, 'baseline')
    base_json = os.path.join(base_dir, 'baseline.json')
    if not os.path.exists(base_json):
        make_data(base_data, BASELINE_ROWS, args.dim, 0.0, seed=1)
        _timed([sys.executable, '-m', 'beamml', 'monitor', '--make_baseline', '--input',
                base_data, '--output', base_dir, '--overwrite'])
    print(f'baseline: {base_json} ({BASELINE_ROWS} points, made once, not timed)', flush=True)

    best = {}
    for rows in sizes:
        path = os.path.join(args.workdir, f'current-{rows}x{args.dim}.parquet')
        how = 'reused'
        if not os.path.exists(path):
            t = time.perf_counter()
            make_data(path, rows, args.dim, 0.5, seed=2)
            how = f'made in {time.perf_counter() - t:.1f} s'
        print(f'data: {rows} x {args.dim} points -> {path} '
              f'({os.path.getsize(path) / 1e6:.1f} MB, {how})', flush=True)
        np_times, bm_times = [], []
        for r in range(args.repeat):
            t_np, psi_np = run_numpy(path, base_json, os.path.join(args.workdir, 'numpy.json'))
            out = os.path.join(args.workdir, 'out')
            t_bm, psi_bm = run_beamml(path, base_json, out)
            np_times.append(t_np)
            bm_times.append(t_bm)
            worst = max(abs(psi_bm[n] - v) / max(abs(v), 1e-300) for n, v in psi_np.items())
            ok = worst <= 1e-9
            agreed.add(f'PSI of {len(psi_np)} features agree to {worst:.1e} relative', ok)
            print(f'  run {r + 1}: numpy {t_np:.2f} s, beamml {t_bm:.2f} s; PSI agree to '
                  f'{worst:.1e} relative{"" if ok else "  DISAGREE"} (x0: {psi_np["x0"]:.4f})',
                  flush=True)
        best[rows] = (min(np_times), min(bm_times))
        print(f'  best of {args.repeat}: numpy {best[rows][0]:.2f} s, beamml '
              f'{best[rows][1]:.2f} s, ratio {best[rows][1] / best[rows][0]:.2f}', flush=True)

    top = sizes[-1]
    print(f'whole run at {top} points: beamml / numpy = {best[top][1] / best[top][0]:.2f}')
    if len(sizes) > 1:
        low = sizes[0]
        d_np, d_bm = best[top][0] - best[low][0], best[top][1] - best[low][1]
        per = top - low
        marginal = d_bm / d_np if d_np > 0 else float('inf')
        print(f'marginal ({top} - {low} points): numpy {d_np:.2f} s ({d_np / per * 1e9:.1f} ns '
              f'per point), beamml {d_bm:.2f} s ({d_bm / per * 1e9:.1f} ns); ratio '
              f'{marginal:.2f}')
    shutil.rmtree(os.path.join(args.workdir, 'out'), ignore_errors=True)
    h.write_result(args.json, h.result(
        'monitor', 'numpy histogram + PSI script', best, args.repeat, agreed.ok, agreed.line, load,
        [a for a in argv if not a.startswith('--json') and a != args.json]))
    if not agreed.ok:
        print(f'the results DISAGREE: {agreed.line}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
