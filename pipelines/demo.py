"""Demo: make sample data, run the main beamml jobs on the DirectRunner, print where results are.

    beamml demo --workdir demo_output      (what `make demo` runs)

Each step is a function ``step(workdir) -> list of (what, where)`` in STEPS; it
runs its pipeline through the pipeline's own ``run([...])``, exactly as a user
would from the command line.
"""
from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_points(workdir: str, n: int = 20_000, d: int = 8, seed: int = 0) -> str:
    """Sample point cloud: two Parquet files with an int64 id column and d float columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
    os.makedirs(os.path.join(workdir, 'points'), exist_ok=True)
    half = n // 2
    for i, (lo, hi) in enumerate([(0, half), (half, n)]):
        cols = {'id': pa.array(np.arange(lo, hi, dtype=np.int64))}
        cols.update({f'x{j}': pa.array(X[lo:hi, j]) for j in range(d)})
        pq.write_table(pa.table(cols), os.path.join(workdir, 'points', f'part-{i}.parquet'))
    return os.path.join(workdir, 'points', '*.parquet')


def step_norms(workdir):
    from pipelines import norms
    pattern = make_points(workdir)
    out = os.path.join(workdir, 'norms', 'norms')
    norms.run(['--input', pattern, '--output', out])
    return [('norms (id, l0, l1, l2, linf)', out + '-?????-of-?????.parquet')]


STEPS = [step_norms]


def run(argv=None):
    parser = argparse.ArgumentParser(prog='beamml demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', default='demo_output',
                        help='where the sample data and the results go (emptied first)')
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    results = []
    for step in STEPS:
        print(f'--- {step.__name__[5:]}', flush=True)
        results.extend(step(workdir))
    print('\nresults:')
    for what, where in results:
        print(f'  {what}: {where}')


if __name__ == '__main__':
    from pipelines.common import main_wrapper
    raise SystemExit(main_wrapper(run, prog='beamml demo'))
