"""Benchmark: `beamml assign` on the DirectRunner vs a plain numpy + pyarrow script.

Both read the same Parquet file (2,000,000 x 8 points by default, id + x0..x7),
assign every point to the nearest of k = 16 centres and write Parquet rows
``id, cluster, distance, model_version``. Wall times include reading and
writing. The script is timed twice, reading the whole file at once and
streaming 65,536-row batches; beamml is compared with the faster of the two.
Target: beamml's rows/s >= 0.5 x the script's.

    python benchmarks/bench_assign.py [--rows 2000000] [--k 16] [--d 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
import sys
import time
from contextlib import redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET = 0.5


def make_data(workdir: str, n: int, d: int, k: int, seed: int = 0) -> tuple[str, str]:
    """Points from k blobs in one Parquet file, and a saved model of k centres."""
    from beamml.transforms.model import CentroidModel
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-10, 10, size=(k, d))
    path = os.path.join(workdir, f'points-{n}x{d}.parquet')
    if not os.path.exists(path):
        X = truth[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
        cols = {'id': pa.array(np.arange(n, dtype=np.int64))}
        cols.update({f'x{j}': pa.array(X[:, j]) for j in range(d)})
        pq.write_table(pa.table(cols), path + '.tmp', row_group_size=1 << 17)
        os.replace(path + '.tmp', path)
    model_dir = os.path.join(workdir, f'model-k{k}-d{d}')
    shutil.rmtree(model_dir, ignore_errors=True)
    CentroidModel(truth + rng.normal(scale=0.1, size=truth.shape), version='bench').save(
        model_dir)
    return path, model_dir


def _nearest(t, C, C_sq, version):
    """Plain nearest-centroid on one table / batch: expansion, argmin (no tie repair)."""
    X = np.column_stack([t.column(f'x{j}').to_numpy() for j in range(C.shape[1])])
    D = X @ C.T
    D *= -2
    D += np.einsum('ij,ij->i', X, X)[:, None]
    D += C_sq[None, :]
    labels = D.argmin(axis=1)
    dist = np.sqrt(np.maximum(D[np.arange(len(X)), labels], 0))
    return pa.table({'id': t.column('id'), 'cluster': labels, 'distance': dist,
                     'model_version': pa.repeat(pa.scalar(version), len(X))})


def _load_centers(model_dir):
    import json
    with open(os.path.join(model_dir, 'bench', 'model.json')) as f:
        meta = json.load(f)
    C = np.array(meta['centers'])
    return C, np.einsum('ij,ij->i', C, C), meta['version']


def numpy_script_whole(path: str, model_dir: str, out_path: str) -> None:
    """What a user would write by hand: read the whole file, assign, write."""
    C, C_sq, version = _load_centers(model_dir)
    pq.write_table(_nearest(pq.read_table(path), C, C_sq, version), out_path)


def numpy_script_batched(path: str, model_dir: str, out_path: str) -> None:
    """The same, streaming 65,536-row record batches (cache-friendly, bounded memory)."""
    C, C_sq, version = _load_centers(model_dir)
    writer = None
    for rb in pq.ParquetFile(path).iter_batches(batch_size=65536):
        out = _nearest(rb, C, C_sq, version)
        if writer is None:
            writer = pq.ParquetWriter(out_path, out.schema)
        writer.write_table(out)
    writer.close()


SCRIPTS = {'whole file': numpy_script_whole, 'batched': numpy_script_batched}


def beamml_assign(path: str, model_dir: str, out_prefix: str, extra: list[str]) -> str:
    from beamml.pipelines import assign
    buf = io.StringIO()
    with redirect_stdout(buf):
        assign.run(['--input', path, '--model', model_dir, '--output', out_prefix] + extra)
    return buf.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rows', type=int, default=2_000_000)
    ap.add_argument('--d', type=int, default=8)
    ap.add_argument('--k', type=int, default=16)
    ap.add_argument('--repeat', type=int, default=3,
                    help='runs of each, interleaved; the best is kept (default 3)')
    ap.add_argument('--workdir', default='bench_output/assign')
    ap.add_argument('--beam_args', default='',
                    help='extra flags for beamml assign, e.g. '
                         '"--direct_running_mode=multi_processing --direct_num_workers=2"')
    args, _ = ap.parse_known_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    path, model_dir = make_data(args.workdir, args.rows, args.d, args.k)
    print(f'assign: {args.rows:,} x {args.d} points, k={args.k}, {path}', flush=True)

    np_out = os.path.join(args.workdir, 'numpy-out.parquet')
    beam_out = os.path.join(args.workdir, 'beamml-out', 'assigned')
    t_np = {name: [] for name in SCRIPTS}
    t_beam = []
    for _ in range(args.repeat):
        for name, script in SCRIPTS.items():
            t0 = time.perf_counter()
            script(path, model_dir, np_out)
            t_np[name].append(time.perf_counter() - t0)
        shutil.rmtree(os.path.dirname(beam_out), ignore_errors=True)
        t0 = time.perf_counter()
        log = beamml_assign(path, model_dir, beam_out, args.beam_args.split())
        t_beam.append(time.perf_counter() - t0)

    # the two must agree
    ref = pq.read_table(np_out).sort_by('id')
    got = pa.concat_tables(pq.read_table(f) for f in sorted(
        glob.glob(beam_out + '-?????-of-?????.parquet'))).sort_by('id')
    assert got.num_rows == args.rows, (got.num_rows, log)
    same = np.mean(got.column('cluster').to_numpy() == ref.column('cluster').to_numpy())
    dmax = np.max(np.abs(got.column('distance').to_numpy() - ref.column('distance').to_numpy()))

    n = args.rows
    for name, times in t_np.items():
        print(f'numpy+pyarrow script ({name}): {min(times):7.2f} s  '
              f'{n / min(times):12,.0f} rows/s')
    best = min(min(times) for times in t_np.values())  # compare with the faster script
    np_rate, beam_rate = n / best, n / min(t_beam)
    ratio = beam_rate / np_rate
    print(f'beamml assign                       : {min(t_beam):7.2f} s  {beam_rate:12,.0f} rows/s'
          f'  (FnApiRunner{", " + args.beam_args if args.beam_args else ""})')
    print(f'labels equal: {same:.6%}, max |distance difference|: {dmax:.2e}')
    print(f'ratio beamml / faster script, rows/s: {ratio:.2f}x  (target >= {TARGET}x: '
          f'{"met" if ratio >= TARGET else "NOT met"})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
