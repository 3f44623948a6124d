"""K-means training: `beamml kmeans` (DirectRunner) vs scikit-learn's KMeans on the same file.

1,000,000 x 8 points from 16 blobs in Parquet, k = 16, 10 Lloyd iterations
from the same initial centres (tol = 0), read time included on both sides:

* beamml: ``pipelines.kmeans.run([... '--init', C0.npy, '--max_iter', '10', '--tol', '0'])``
  in this process (the in-process FnApiRunner that ``--runner DirectRunner`` means),
  from the Parquet file to the saved model;
* scikit-learn: ``pyarrow.parquet.read_table`` -> numpy -> ``KMeans(init=C0, n_init=1,
  algorithm='lloyd', max_iter=10, tol=0).fit``.

Target: beamml's wall time <= 3 x scikit-learn's. Also checks that the two
agree (centres, inertia, n_iter).

    python benchmarks/bench_kmeans.py [--rows 1000000] [--repeat 1]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from contextlib import redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TARGET = 3.0


def make_data(path: str, rows: int, d: int, blobs: int, seed: int = 0) -> np.ndarray:
    """Write the blobs to Parquet (id + x0..x{d-1}); return C0 (k-means++ on a subsample)."""
    from sklearn.cluster import kmeans_plusplus
    from sklearn.datasets import make_blobs
    X, _ = make_blobs(n_samples=rows, n_features=d, centers=blobs, cluster_std=3.0,
                      center_box=(-10, 10), random_state=seed)
    cols = {'id': pa.array(np.arange(rows, dtype=np.int64))}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(d)})
    pq.write_table(pa.table(cols), path, row_group_size=65536)
    C0, _ = kmeans_plusplus(X[:min(rows, 10_000)], blobs, random_state=seed)
    return C0


def run_sklearn(path: str, C0: np.ndarray, max_iter: int):
    from sklearn.cluster import KMeans
    t = time.perf_counter()
    table = pq.read_table(path)
    X = np.column_stack([table.column(f'x{j}').to_numpy() for j in range(C0.shape[1])])
    km = KMeans(C0.shape[0], init=C0, n_init=1, algorithm='lloyd', max_iter=max_iter,
                tol=0).fit(X)
    return time.perf_counter() - t, km


def run_beamml(path: str, c0_path: str, model_dir: str, max_iter: int, extra: list[str]):
    from beamml.pipelines import kmeans
    shutil.rmtree(model_dir, ignore_errors=True)
    out = io.StringIO()
    t = time.perf_counter()
    with redirect_stdout(out):
        model = kmeans.run(['--input', path, '--init', c0_path, '--max_iter', str(max_iter),
                            '--tol', '0', '--model_dir', model_dir] + extra)
    return time.perf_counter() - t, model, out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=1_000_000)
    parser.add_argument('--dim', type=int, default=8)
    parser.add_argument('--k', type=int, default=16)
    parser.add_argument('--max_iter', type=int, default=10)
    parser.add_argument('--repeat', type=int, default=1,
                        help='time each side this many times, keep the best')
    parser.add_argument('--workdir', default=os.path.join(os.path.dirname(HERE),
                                                          'bench_output', 'kmeans'))
    parser.add_argument('--beam_flag', action='append', default=[],
                        help='extra flag for beamml kmeans (repeatable), e.g. '
                             '--beam_flag=--direct_num_workers=2')
    args, _ = parser.parse_known_args(argv)  # run_all.py may pass flags meant for others

    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f'blobs-{args.rows}x{args.dim}.parquet')
    c0_path = os.path.join(args.workdir, f'c0-{args.rows}x{args.dim}-k{args.k}.npy')
    t = time.perf_counter()
    if os.path.exists(path) and os.path.exists(c0_path):  # the same data as last time
        C0 = np.load(c0_path)
        how = 'reused'
    else:
        C0 = make_data(path, args.rows, args.dim, args.k)
        np.save(c0_path, C0)
        how = f'made in {time.perf_counter() - t:.1f} s'
    print(f'data: {args.rows} x {args.dim} points from {args.k} blobs -> {path} '
          f'({os.path.getsize(path) / 1e6:.1f} MB, {how})')

    sk_times, bm_times = [], []
    for _ in range(args.repeat):
        t_sk, km = run_sklearn(path, C0, args.max_iter)
        sk_times.append(t_sk)
        t_bm, model, out = run_beamml(path, c0_path, os.path.join(args.workdir, 'model'),
                                      args.max_iter, args.beam_flag)
        bm_times.append(t_bm)
    t_sk, t_bm = min(sk_times), min(bm_times)
    rel = np.abs(model.centers - km.cluster_centers_).max() / np.abs(km.cluster_centers_).max()
    print(f'beamml kmeans: {out.strip().splitlines()[-2]}')
    print(f'agreement: max |centre diff| / max |centre| = {rel:.2e}; inertia beamml '
          f'{model.inertia:.10g} vs scikit-learn {km.inertia_:.10g}; n_iter '
          f'{model.n_iter} vs {km.n_iter_}')
    ratio = t_bm / t_sk
    print(f'scikit-learn KMeans (read + fit): {t_sk:.2f} s')
    print(f'beamml kmeans (DirectRunner, read + train + save): {t_bm:.2f} s')
    print(f'ratio beamml / scikit-learn = {ratio:.2f} (target <= {TARGET:g}): '
          f'{"OK" if ratio <= TARGET else "ABOVE TARGET"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
