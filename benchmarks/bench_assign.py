"""`beamml assign` vs a plain numpy + pyarrow script, whole processes, same Parquet file.

Both read the same Parquet file (N x 8 points, id + x0..x7; N = each --rows, default 2M
and 8M), assign every point to the nearest of k = 16 centres of a saved model and write
Parquet rows ``id, cluster, distance, model_version``. Each side is a whole process
started here and timed from the outside (interpreter start, imports, read, compute,
write). The plain script runs two ways, reading the whole file at once and streaming
65,536-row batches; beamml is compared with the faster of the two (per size, best of
--repeat runs). beamml's labels must equal each script's and the distances agree to 1e-9.

    python benchmarks/bench_assign.py [--rows 2000000 --rows 8000000] [--k 16] [--d 8]
        [--repeat 3] [--beam_args "--direct_num_workers=2"] [--json PATH]
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import _harness as h  # noqa: E402

DEFAULT_ROWS = (2_000_000, 8_000_000)

#: the plain side, run as ``python -c PLAIN_SCRIPT whole|batched FILE MODEL.json OUT``
PLAIN_SCRIPT = '''
import json, sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
how, path, model_json, out_path = sys.argv[1:5]
with open(model_json) as f:
    meta = json.load(f)
C = np.array(meta['centers'])
C_sq = np.einsum('ij,ij->i', C, C)

def nearest(t):
    """Nearest centre on one table / batch: expansion, argmin (no tie repair)."""
    X = np.column_stack([t.column(f'x{j}').to_numpy() for j in range(C.shape[1])])
    D = X @ C.T
    D *= -2
    D += np.einsum('ij,ij->i', X, X)[:, None]
    D += C_sq[None, :]
    labels = D.argmin(axis=1)
    dist = np.sqrt(np.maximum(D[np.arange(len(X)), labels], 0))
    return pa.table({'id': t.column('id'), 'cluster': labels, 'distance': dist,
                     'model_version': pa.repeat(pa.scalar(meta['version']), len(X))})

if how == 'whole':   # read the whole file, assign, write
    pq.write_table(nearest(pq.read_table(path)), out_path)
else:                # 65,536-row record batches (cache-friendly, bounded memory)
    writer = None
    for rb in pq.ParquetFile(path).iter_batches(batch_size=65536):
        out = nearest(rb)
        if writer is None:
            writer = pq.ParquetWriter(out_path, out.schema)
        writer.write_table(out)
    writer.close()
'''
SCRIPTS = ('whole', 'batched')


def make_data(workdir: str, n: int, d: int, k: int, seed: int = 0) -> tuple[str, str]:
    """Points from k blobs in one Parquet file (made once per size), and a saved model of
    k centres."""
    from beamml.transforms.model import CentroidModel
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-10, 10, size=(k, d))
    model_dir = os.path.join(workdir, f'model-k{k}-d{d}')
    shutil.rmtree(model_dir, ignore_errors=True)
    CentroidModel(truth + rng.normal(scale=0.1, size=truth.shape), version='bench').save(
        model_dir)
    path = os.path.join(workdir, f'points-{n}x{d}.parquet')
    if not os.path.exists(path):
        X = truth[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
        cols = {'id': pa.array(np.arange(n, dtype=np.int64))}
        cols.update({f'x{j}': pa.array(X[:, j]) for j in range(d)})
        pq.write_table(pa.table(cols), path + '.tmp', row_group_size=1 << 17)
        os.replace(path + '.tmp', path)
    return path, model_dir


def agreement(plain_out: str, beam_prefix: str, rows: int) -> tuple[str, bool]:
    ref = pq.read_table(plain_out).sort_by('id')
    files = sorted(glob.glob(beam_prefix + '-?????-of-?????.parquet'))
    if not files:
        return f'no output matches {beam_prefix}-?????-of-?????.parquet', False
    got = pa.concat_tables(pq.read_table(f) for f in files).sort_by('id')
    if got.num_rows != rows or ref.num_rows != rows:
        return f'rows: beamml {got.num_rows}, plain {ref.num_rows}, written {rows}', False
    same = float(np.mean(got.column('cluster').to_numpy() == ref.column('cluster').to_numpy()))
    dmax = float(np.max(np.abs(got.column('distance').to_numpy()
                               - ref.column('distance').to_numpy())))
    return (f'labels equal: {same:.6%}, max |distance difference|: {dmax:.2e}',
            same == 1.0 and dmax <= 1e-9)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_args(ap, DEFAULT_ROWS, default_repeat=3)
    ap.add_argument('--d', type=int, default=8)
    ap.add_argument('--k', type=int, default=16)
    ap.add_argument('--workdir', default=os.path.join(h.ROOT, 'bench_output', 'assign'))
    ap.add_argument('--beam_args', default='',
                    help='extra flags for beamml assign, e.g. '
                         '"--direct_running_mode=multi_processing --direct_num_workers=2"')
    args, _ = ap.parse_known_args(argv)
    load = os.getloadavg()
    os.makedirs(args.workdir, exist_ok=True)

    best, agreed = {}, h.Agreement()
    for rows in h.sizes(args, DEFAULT_ROWS):
        t0 = time.perf_counter()
        path, model_dir = make_data(args.workdir, rows, args.d, args.k)
        print(f'assign: {rows:,} x {args.d} points, k={args.k}, {path} '
              f'({time.perf_counter() - t0:.1f} s to make or find)', flush=True)
        model_json = os.path.join(model_dir, 'bench', 'model.json')
        plain_out = {name: os.path.join(args.workdir, f'plain-{name}.parquet')
                     for name in SCRIPTS}
        beam_out = os.path.join(args.workdir, 'beamml-out', 'assigned')
        t_plain = {name: [] for name in SCRIPTS}
        t_beam = []
        for r in range(args.repeat):
            for name in SCRIPTS:
                t_plain[name].append(h.timed_process(h.python_script(
                    PLAIN_SCRIPT, name, path, model_json, plain_out[name])))
            shutil.rmtree(os.path.dirname(beam_out), ignore_errors=True)
            t_beam.append(h.timed_process(h.beamml_command(
                'assign', '--input', path, '--model', model_dir, '--output', beam_out,
                *args.beam_args.split())))
            checks = [agreement(plain_out[name], beam_out, rows) for name in SCRIPTS]
            line = '; '.join(f'{name}: {c[0]}' for name, c in zip(SCRIPTS, checks))
            ok = all(c[1] for c in checks)
            agreed.add(line, ok)
            print(f'  run {r + 1}: plain whole file {t_plain["whole"][-1]:.2f} s, batched '
                  f'{t_plain["batched"][-1]:.2f} s, beamml {t_beam[-1]:.2f} s; '
                  f'{line}{"" if ok else "  DISAGREE"}', flush=True)
        plain_best = min(min(t) for t in t_plain.values())  # the faster script
        best[rows] = (plain_best, min(t_beam))
        print(f'  best of {args.repeat}: plain (faster script) {plain_best:.2f} s '
              f'({rows / plain_best:,.0f} rows/s), beamml {best[rows][1]:.2f} s '
              f'({rows / best[rows][1]:,.0f} rows/s), ratio {best[rows][1] / plain_best:.2f}',
              flush=True)
    shutil.rmtree(os.path.join(args.workdir, 'beamml-out'), ignore_errors=True)
    return h.finish(args, 'assign', 'numpy script (faster of whole-file, batched)',
                    best, agreed.ok, agreed.line, load, argv, unit='row')


if __name__ == '__main__':
    sys.exit(main())
