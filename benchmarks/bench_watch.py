"""How soon a watched folder's panes are written: ``beamml assign --streaming --input
PATTERN --watch_interval S`` as a process, files renamed into the folder while it runs.

For every pane file (``PREFIX-<start>-<end>-pane-<i>-<timing>.parquet``) the wall time
it first appears is noted (every 20 ms) and compared with its window's end; the run's
own end is noted too. Every row is accounted for: the rows in the panes must be the
rows of the files landed (ids), each once.

    python benchmarks/bench_watch.py [--files 10] [--points 1000] [--every 1.0]
        [--interval 1.0] [--window 2.0]

The first file is there when the run starts; the others land one every ``--every``
seconds from the moment its pane appears (the stream is running then).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _epoch(text: str) -> float:
    from apache_beam.utils.timestamp import Timestamp
    return Timestamp.from_rfc3339(text).micros / 1e6


def _batch(lo: int, n: int, rng) -> pa.Table:
    X = rng.normal(size=(n, 3))
    return pa.table({'id': pa.array(np.arange(lo, lo + n), pa.int64()),
                     'features': pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--files', type=int, default=10)
    ap.add_argument('--points', type=int, default=1000, help='points per file')
    ap.add_argument('--every', type=float, default=1.0, help='seconds between files')
    ap.add_argument('--interval', type=float, default=1.0, help='--watch_interval')
    ap.add_argument('--window', type=float, default=2.0, help='--window_size')
    args = ap.parse_args(argv)
    from beamml.transforms.model import CentroidModel
    rng = np.random.default_rng(0)
    work = tempfile.mkdtemp(prefix='bench-watch-')
    models, incoming, staging = (os.path.join(work, d) for d in ('models', 'in', 'staging'))
    os.makedirs(incoming)
    os.makedirs(staging)
    CentroidModel(rng.normal(size=(16, 3))).save(models)
    pq.write_table(_batch(0, args.points, rng), os.path.join(incoming, 'f0000.parquet'))
    out = os.path.join(work, 'out', 'assigned')
    stop = args.files * args.every + 4 * args.interval + 2 * args.window + 5
    cmd = [sys.executable, '-m', 'beamml', 'assign', '--streaming', '--model', models,
           '--input', os.path.join(incoming, '*.parquet'), '--watch_interval',
           str(args.interval), '--window_size', str(args.window), '--stop_after', str(stop),
           '--output', out, '--output_format', 'parquet']
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch():
        while not done.wait(0.02):
            now = time.time()
            for path in glob.glob(out + '-2*.parquet'):
                seen.setdefault(path, now)

    def land():
        while not seen and not done.is_set():
            time.sleep(0.02)
        for i in range(1, args.files):
            time.sleep(args.every)
            tmp = os.path.join(staging, f'f{i:04d}.parquet')
            pq.write_table(_batch(i * args.points, args.points, rng), tmp)
            os.rename(tmp, os.path.join(incoming, f'f{i:04d}.parquet'))
    threading.Thread(target=watch, daemon=True).start()
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=land, daemon=True).start()
    stdout, stderr = proc.communicate()
    ended = time.time()
    done.set()
    for path in glob.glob(out + '-2*.parquet'):
        seen.setdefault(path, ended)
    if proc.returncode:
        print(stderr[-2000:], file=sys.stderr)
        return proc.returncode
    ids = np.concatenate([pq.read_table(p).column('id').to_numpy() for p in seen])
    want = args.files * args.points
    lag = []
    for path, appeared in sorted(seen.items()):
        head = os.path.basename(path).rsplit('-pane-', 1)[0]
        lag.append(appeared - _epoch(head[-24:]))
    lag = np.array(lag)
    print(f'files={args.files} points/file='
          f'{args.points} every={args.every}s interval={args.interval}s window={args.window}s '
          f'stop_after={stop:g}s')
    print(f'rows out {len(ids)} of {want}, distinct {len(np.unique(ids))}; panes {len(lag)}; '
          f'run {ended - started:.1f} s')
    print(f'pane written after its window end: min {lag.min():+.2f} s, median '
          f'{np.median(lag):+.2f} s, max {lag.max():+.2f} s; the run ended '
          f'{ended - max(seen.values()):.2f} s after the last pane')
    print(stdout.strip().splitlines()[0] if stdout.strip() else '(no output)')
    return 0 if len(ids) == want == len(np.unique(ids)) else 1


if __name__ == '__main__':
    sys.exit(main())
