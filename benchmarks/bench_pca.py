"""`beamml pca` vs scikit-learn's exact PCA, whole processes, same Parquet file.

N x 8 points (columns x0..x7 and an int64 id; N = each --rows, default 1M and 4M),
correlated and 1e6 away from the origin (``rng.normal(size=(N, 8)) @ rng.normal(size=(8,
8)) + 1e6``), 2 components. Each side is a whole process started here and timed from
the outside (interpreter start, imports, read, fit, write):

* beamml: ``python -m beamml pca --input FILE --n_components 2 --output DIR`` (the
  local runner; one pass over the data, the committed run's pca.json);
* scikit-learn: a plain script, ``pyarrow.parquet.read_table`` -> numpy ->
  ``PCA(2, svd_solver='full').fit(X)`` (the exact solver: the default one,
  ``covariance_eigh`` from raw sums, loses digits at this offset), which saves the mean,
  components and explained variance (ratio).

It keeps the best of --repeat runs per side and size, checks that the results agree
(mean to 1e-12 relative, explained variance and its ratio to 1e-9 relative, components
up to sign to 1e-7), and prints the whole ratio at the largest size and the marginal
one (benchmarks/_harness.py).

    python benchmarks/bench_pca.py [--rows 1000000 --rows 4000000] [--repeat 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _harness as h  # noqa: E402

DEFAULT_ROWS = (1_000_000, 4_000_000)
N_COMPONENTS = 2

#: the scikit-learn side, ``python -c SKLEARN_SCRIPT FILE N_COMPONENTS OUT.npz``
SKLEARN_SCRIPT = '''
import sys
import numpy as np
import pyarrow.parquet as pq
from sklearn.decomposition import PCA
path, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
table = pq.read_table(path)
X = np.column_stack([table.column(c).to_numpy() for c in table.column_names if c != 'id'])
pca = PCA(k, svd_solver='full').fit(X)
np.savez(out, mean=pca.mean_, components=pca.components_,
         explained_variance=pca.explained_variance_,
         explained_variance_ratio=pca.explained_variance_ratio_)
'''


def make_data(path: str, rows: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, d)) @ rng.normal(size=(d, d)) + 1e6
    cols = {'id': pa.array(np.arange(rows, dtype=np.int64))}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(d)})
    pq.write_table(pa.table(cols), path + '.tmp', row_group_size=65536)
    os.replace(path + '.tmp', path)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def agreement(beam_dir: str, sk_path: str) -> tuple[str, bool]:
    with open(os.path.join(beam_dir, 'pca.json')) as f:
        got = json.load(f)
    with np.load(sk_path) as r:
        ref = {name: r[name] for name in r.files}
    mean = _rel(got['mean'], ref['mean'])
    var = max(_rel(got[m], ref[m]) for m in ('explained_variance', 'explained_variance_ratio'))
    C, R = np.array(got['components']), ref['components']
    signs = np.where(np.sum(C * R, axis=1) < 0, -1.0, 1.0)[:, None]
    comp = float(np.max(np.abs(C * signs - R)))
    return (f'mean {mean:.1e}, explained variance (ratio) {var:.1e} relative; components '
            f'{comp:.1e} (up to sign)'), mean <= 1e-12 and var <= 1e-9 and comp <= 1e-7


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_args(parser, DEFAULT_ROWS, default_repeat=3)
    parser.add_argument('--dim', type=int, default=8)
    parser.add_argument('--workdir', default=os.path.join(h.ROOT, 'bench_output', 'pca'))
    args, _ = parser.parse_known_args(argv)
    load = os.getloadavg()
    os.makedirs(args.workdir, exist_ok=True)

    best, agreed = {}, h.Agreement()
    for rows in h.sizes(args, DEFAULT_ROWS):
        path = os.path.join(args.workdir, f'points-{rows}x{args.dim}.parquet')
        how = 'reused'
        if not os.path.exists(path):
            t0 = time.perf_counter()
            make_data(path, rows, args.dim)
            how = f'made in {time.perf_counter() - t0:.1f} s'
        print(f'data: {rows:,} x {args.dim} points at a 1e6 offset -> {path} '
              f'({os.path.getsize(path) / 1e6:.1f} MB, {how})', flush=True)
        sk_out = os.path.join(args.workdir, 'sklearn.npz')
        beam_dir = os.path.join(args.workdir, 'out')
        t_sk, t_beam = [], []
        for r in range(args.repeat):
            t_sk.append(h.timed_process(h.python_script(SKLEARN_SCRIPT, path, N_COMPONENTS,
                                                        sk_out)))
            shutil.rmtree(beam_dir, ignore_errors=True)
            t_beam.append(h.timed_process(h.beamml_command(
                'pca', '--input', path, '--n_components', N_COMPONENTS, '--output', beam_dir)))
            line, ok = agreement(beam_dir, sk_out)
            agreed.add(line, ok)
            print(f'  run {r + 1}: scikit-learn {t_sk[-1]:.2f} s, beamml {t_beam[-1]:.2f} s; '
                  f'{line}{"" if ok else "  DISAGREE"}', flush=True)
        best[rows] = (min(t_sk), min(t_beam))
        print(f'  best of {args.repeat}: scikit-learn {best[rows][0]:.2f} s, beamml '
              f'{best[rows][1]:.2f} s, ratio {best[rows][1] / best[rows][0]:.2f}', flush=True)
    shutil.rmtree(os.path.join(args.workdir, 'out'), ignore_errors=True)
    return h.finish(args, 'pca', "scikit-learn PCA(svd_solver='full') script", best, agreed.ok,
                    agreed.line, load, argv)


if __name__ == '__main__':
    sys.exit(main())
