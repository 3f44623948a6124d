"""Benchmark: `beamml evaluate --task ranking` vs a plain pyarrow + numpy script, same file, same run.

    python benchmarks/bench_evaluate.py [--rows 10000000] [--per_query 20] [--repeat 1]

Writes ranking logs (q_id, predicted_rank, truth_relevance; --per_query rows per
query, sorted by query as logs usually are) to bench_output/evaluate/, then times

* baseline: pyarrow reads the file, numpy computes per-query precision
  (np.unique + bincount) and its average over queries;
* beamml: ``pipelines.evaluate.run([...])`` in this process (pipeline
  construction, the run on the local FnApiRunner, writing metrics.json,
  per_query and dead letters), which computes more: duplicate checks, P@k and MAP.

Both results are checked to agree. Prints rows/s of each and the ratio
baseline time / beamml time (target >= 0.5), and the baseline once more alone in a
fresh process. Extra flags after ``--`` go to
beamml (e.g. ``-- --direct_running_mode multi_processing --direct_num_workers 2``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
TARGET = 0.5


def make_logs(path: str, rows: int, per_query: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_q = -(-rows // per_query)
    q = np.repeat(np.arange(n_q, dtype=np.int64), per_query)[:rows]
    r = np.tile(np.arange(per_query, dtype=np.int64), n_q)[:rows]
    rel = (rng.random(rows) < 0.4 / (1 + 0.2 * r)).astype(np.int64) * rng.integers(1, 4, rows)
    table = pa.table({'q_id': q, 'predicted_rank': r, 'truth_relevance': rel})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    pq.write_table(table, tmp, row_group_size=1 << 20)
    os.replace(tmp, path)


def baseline(path: str) -> tuple[float, int]:
    """Per-query precision and its mean over queries with pyarrow + numpy."""
    t = pq.read_table(path, columns=['q_id', 'truth_relevance'])
    q = t.column('q_id').to_numpy()
    relevant = t.column('truth_relevance').to_numpy() > 0
    _, inv = np.unique(q, return_inverse=True)
    n_returned = np.bincount(inv)
    n_relevant = np.bincount(inv, weights=relevant)
    precision = n_relevant / n_returned
    return float(precision.mean()), len(precision)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=10_000_000)
    parser.add_argument('--per_query', type=int, default=20)
    parser.add_argument('--repeat', type=int, default=3,
                        help='time each side N times (alternating), keep the best (default 3)')
    parser.add_argument('--workdir', default=os.path.join('bench_output', 'evaluate'))
    args, beam_extra = parser.parse_known_args(argv)
    beam_extra = [a for a in beam_extra if a != '--']

    path = os.path.join(args.workdir, f'ranking_logs_{args.rows}_{args.per_query}.parquet')
    if not os.path.exists(path):
        t0 = time.perf_counter()
        make_logs(path, args.rows, args.per_query)
        print(f'wrote {args.rows:,} rows to {path} in {time.perf_counter() - t0:.1f} s')

    from beamml.pipelines import evaluate
    from beamml.pipelines._platform.main import configure_logging
    from beamml.transforms.core.documents import read_json
    configure_logging()

    best_base = best_beam = cpu_base = cpu_beam = float('inf')
    out = os.path.join(args.workdir, 'out')
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        base_avg, base_n = baseline(path)
        best_base = min(best_base, time.perf_counter() - t0)
        cpu_base = min(cpu_base, time.process_time() - c0)

        t0, c0 = time.perf_counter(), time.process_time()
        evaluate.run(['--input', path, '--task', 'ranking', '--output', out] + beam_extra)
        best_beam = min(best_beam, time.perf_counter() - t0)
        cpu_beam = min(cpu_beam, time.process_time() - c0)

    doc = read_json(os.path.join(out, 'metrics.json'))
    got = doc['overall']['average_query_precision']
    if doc['overall']['n_queries'] != base_n or abs(got - base_avg) > 1e-9:
        sys.exit(f'MISMATCH: beamml average_query_precision={got} n_queries='
                 f'{doc["overall"]["n_queries"]}, baseline {base_avg} {base_n}')
    ratio = best_base / best_beam
    print(f'\nranking evaluation, {args.rows:,} rows, {base_n:,} queries '
          f'(average query precision {base_avg:.6f}, both agree)')
    print(f'  baseline pyarrow+numpy: {best_base:7.2f} s  {args.rows / best_base:12,.0f} rows/s'
          f'  (CPU {cpu_base:.2f} s)')
    print(f'  beamml evaluate:        {best_beam:7.2f} s  {args.rows / best_beam:12,.0f} rows/s'
          f'  (CPU of this process {cpu_beam:.2f} s; '
          f'{"local FnApiRunner" if not beam_extra else " ".join(beam_extra)})')
    print(f'  ratio (baseline time / beamml time): {ratio:.2f}x, target >= {TARGET}x: '
          f'{"met" if ratio >= TARGET else "NOT met"} (best of {args.repeat}; CPU-time ratio '
          f'{cpu_base / cpu_beam:.2f}x)')
    # The baseline above shares this process (memory, threads) with the beamml runs;
    # the same baseline alone in a fresh process, for comparison.
    alone = isolated_baseline(path, args.repeat)
    print(f'  baseline alone in a fresh process: {alone:.2f} s; ratio against it: '
          f'{alone / best_beam:.2f}x')


def isolated_baseline(path: str, repeat: int) -> float:
    """Best time of ``baseline(path)`` over ``repeat`` calls in a new Python process."""
    code = ('import sys, time; sys.path.insert(0, sys.argv[1]); '
            'from bench_evaluate import baseline; best = float("inf")\n'
            'for _ in range(int(sys.argv[3])):\n'
            '    t0 = time.perf_counter(); baseline(sys.argv[2])\n'
            '    best = min(best, time.perf_counter() - t0)\n'
            'print(best)')
    out = subprocess.run([sys.executable, '-c', code, HERE, path, str(repeat)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


if __name__ == '__main__':
    main()
