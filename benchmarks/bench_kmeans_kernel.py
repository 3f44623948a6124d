"""The K-means E+M step alone: beamml's fused numpy kernel vs scikit-learn's compiled Lloyd loop.

What one Lloyd iteration costs per point, with every Beam, I/O and start-up cost left out:

* beamml: :func:`beamml.transforms.kmeans.kernels.lloyd_pass` on an in-memory (n, d)
  float64 matrix (labels, per-cluster sums, counts, inertia and the labels' signature,
  per 4096-row chunk), timed per call;
* scikit-learn: ``KMeans(init=C0, n_init=1, algorithm='lloyd', tol=0)`` fitted with
  ``max_iter = 2m`` and with ``max_iter = m`` on the same matrix; the difference over m is
  one iteration of its Cython loop (its input checks, set-up and final labels cancel).

Both on one thread (BLAS and scikit-learn's OpenMP held to one thread with threadpoolctl,
beamml's E-step thread pool off) and on every core. Each figure is the best of --repeat;
CPU time (``time.process_time``) on one thread, so a busy machine inflates it less; wall
time on every core.

    python benchmarks/bench_kmeans_kernel.py [--rows 1000000] [--dim 8] [--k 16] [--repeat 5]

This is the floor of ``bench_kmeans.py``'s marginal ratio: a whole ``beamml kmeans``
iteration cannot cost less than its kernel.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _best(fn, repeat: int, clock) -> float:
    best = float('inf')
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=1_000_000)
    parser.add_argument('--dim', type=int, default=8)
    parser.add_argument('--k', type=int, default=16)
    parser.add_argument('--iterations', type=int, default=5,
                        help='m: scikit-learn is fitted with 2m and m iterations')
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args(argv)
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from threadpoolctl import threadpool_limits

    from beamml.transforms.kmeans import kernels, runtime

    X, _ = make_blobs(n_samples=args.rows, n_features=args.dim, centers=args.k,
                      cluster_std=3.0, center_box=(-10, 10), random_state=0)
    C0 = X[np.random.default_rng(0).choice(len(X), args.k, replace=False)].copy()
    hashes = kernels.row_hashes(X)
    m = args.iterations
    print(f'{args.rows} x {args.dim} points, k={args.k}; load average '
          f'{os.getloadavg()[0]:.2f}; best of {args.repeat}', flush=True)

    def sklearn_iteration(clock) -> float:
        def fit(n_iter):
            return lambda: KMeans(args.k, init=C0, n_init=1, algorithm='lloyd',
                                  max_iter=n_iter, tol=0).fit(X)
        return (_best(fit(2 * m), args.repeat, clock) - _best(fit(m), args.repeat, clock)) / m

    def beamml_iteration(clock) -> float:
        return _best(lambda: kernels.lloyd_pass(X, C0, hashes=hashes), args.repeat, clock)

    rows = []
    with threadpool_limits(1):
        pool = runtime.thread_pool
        runtime.map_chunks.__globals__['thread_pool'] = lambda: None   # the E-step's own pool
        try:
            rows.append(('one thread (CPU time)', sklearn_iteration(time.process_time),
                         beamml_iteration(time.process_time)))
        finally:
            runtime.map_chunks.__globals__['thread_pool'] = pool
    rows.append((f'{os.cpu_count()} cores (wall time)', sklearn_iteration(time.perf_counter),
                 beamml_iteration(time.perf_counter)))
    per = args.rows / 1e9
    for name, sk, bm in rows:
        print(f'{name}: one iteration per point: scikit-learn {sk / per:.1f} ns, beamml '
              f'{bm / per:.1f} ns; ratio {bm / sk:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
