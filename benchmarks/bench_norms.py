"""`beamml norms` vs a plain pyarrow + numpy script, whole processes, same Parquet file.

    python benchmarks/bench_norms.py [--rows 2000000 --rows 8000000] [--dim 8] [--repeat 3]
        [--beam_flag=--direct_num_workers=2] [--json PATH]

Writes N x DIM float64 points (columns x0..x{DIM-1}, plus an int64 `id`; N = each --rows,
default 2M and 8M) to bench_output/norms/, then times on that file, each side a whole
process started here and timed from the outside (interpreter start, imports, read,
compute, write):

* the plain script: pyarrow.parquet.read_table, numpy for l0, l1, l2, linf,
  pyarrow.parquet.write_table of (id, l0, l1, l2, linf);
* ``python -m beamml norms --input FILE --output PREFIX`` (the local runner).

It checks that the outputs agree (ids, l0 exactly, the others to 1e-12 relative), keeps
the best of --repeat runs per side and size, and prints the whole ratio at the largest
size and the marginal one (benchmarks/_harness.py).
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
import _harness as h  # noqa: E402

DEFAULT_ROWS = (2_000_000, 8_000_000)

#: the plain side, run as ``python -c PLAIN_SCRIPT FILE OUT.parquet``: what a user would
#: write without Beam, one process, the whole file in memory
PLAIN_SCRIPT = '''
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
names = [c for c in table.column_names if c != 'id']
X = np.column_stack([table.column(c).to_numpy() for c in names])
A = np.abs(X)
pq.write_table(pa.table({
    'id': table.column('id'),
    'l0': np.count_nonzero(X, axis=1),  # a count: int64, as beamml writes it
    'l1': A.sum(axis=1),
    'l2': np.sqrt(np.einsum('ij,ij->i', X, X)),
    'linf': A.max(axis=1),
}), sys.argv[2])
'''


def make_points(path: str, n: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cols = {'id': pa.array(np.arange(n, dtype=np.int64))}
    for j in range(d):
        x = rng.normal(size=n) * (j + 1)
        x[rng.random(n) < 0.1] = 0.0  # some zeros, so that l0 varies
        cols[f'x{j}'] = pa.array(x)
    pq.write_table(pa.table(cols), path + '.tmp', row_group_size=256 * 1024)
    os.replace(path + '.tmp', path)


def read_sorted_by_id(pattern: str) -> pa.Table:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f'no output matches {pattern}')
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by('id')


def agreement(plain_out: str, beam_prefix: str, rows: int) -> tuple[str, bool]:
    """A line comparing the two outputs, and whether they agree."""
    plain = pq.read_table(plain_out).sort_by('id')
    got = read_sorted_by_id(f'{beam_prefix}-?????-of-?????.parquet')
    if not (got.num_rows == plain.num_rows == rows):
        return f'rows: beamml {got.num_rows}, plain {plain.num_rows}, written {rows}', False
    if not np.array_equal(got.column('id').to_numpy(), plain.column('id').to_numpy()):
        return 'the ids differ', False
    if got.schema.field('l0').type != pa.int64():
        return f'l0 is {got.schema.field("l0").type}, not int64', False
    worst = 0.0
    for name in ('l0', 'l1', 'l2', 'linf'):
        a, b = got.column(name).to_numpy(), plain.column(name).to_numpy()
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
    return f'id, l0, l1, l2, linf agree to {worst:.1e} relative', worst <= 1e-12


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_args(parser, DEFAULT_ROWS, default_repeat=3)
    parser.add_argument('--dim', type=int, default=8)
    parser.add_argument('--beam_flag', action='append', default=[],
                        help='extra flag for beamml norms (repeatable), e.g. '
                             '--beam_flag=--direct_running_mode=multi_processing')
    parser.add_argument('--workdir', default=os.path.join(h.ROOT, 'bench_output', 'norms'))
    args, _ = parser.parse_known_args(argv)
    load = os.getloadavg()
    os.makedirs(args.workdir, exist_ok=True)

    best, agreed = {}, h.Agreement()
    for rows in h.sizes(args, DEFAULT_ROWS):
        src = os.path.join(args.workdir, f'points-{rows}x{args.dim}.parquet')
        how = 'reused'
        if not os.path.exists(src):
            t0 = time.perf_counter()
            make_points(src, rows, args.dim)
            how = f'made in {time.perf_counter() - t0:.1f} s'
        print(f'data: {rows:,} x {args.dim} float64 + int64 id -> {src} '
              f'({os.path.getsize(src) / 2**20:.0f} MiB, {how})', flush=True)
        plain_out = os.path.join(args.workdir, 'plain.parquet')
        beam_dir = os.path.join(args.workdir, 'beamml')
        t_plain, t_beam = [], []
        for r in range(args.repeat):
            t_plain.append(h.timed_process(h.python_script(PLAIN_SCRIPT, src, plain_out)))
            shutil.rmtree(beam_dir, ignore_errors=True)
            t_beam.append(h.timed_process(h.beamml_command(
                'norms', '--input', src, '--output', os.path.join(beam_dir, 'norms'),
                *args.beam_flag)))
            line, ok = agreement(plain_out, os.path.join(beam_dir, 'norms'), rows)
            agreed.add(line, ok)
            print(f'  run {r + 1}: plain {t_plain[-1]:.2f} s, beamml {t_beam[-1]:.2f} s; '
                  f'{line}{"" if ok else "  DISAGREE"}', flush=True)
        best[rows] = (min(t_plain), min(t_beam))
        print(f'  best of {args.repeat}: plain {best[rows][0]:.2f} s '
              f'({rows / best[rows][0]:,.0f} rows/s), beamml {best[rows][1]:.2f} s '
              f'({rows / best[rows][1]:,.0f} rows/s), ratio {best[rows][1] / best[rows][0]:.2f}',
              flush=True)
    shutil.rmtree(os.path.join(args.workdir, 'beamml'), ignore_errors=True)
    return h.finish(args, 'norms', 'pyarrow+numpy script', best, agreed.ok, agreed.line, load, argv,
                    unit='row')


if __name__ == '__main__':
    sys.exit(main())
