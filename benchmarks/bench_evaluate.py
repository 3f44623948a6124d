"""`beamml evaluate` vs a plain pyarrow + numpy script writing the same outputs, whole processes.

    python benchmarks/bench_evaluate.py [--task ranking|classification]
        [--rows 5000000 --rows 20000000] [--per_query 20] [--repeat 3] [--json PATH]
        [-- BEAMML FLAGS]

``--task ranking`` (the default): ranking logs (q_id, predicted_rank, truth_relevance;
--per_query rows per query, sorted by query as logs usually are). The plain script
reads the file, orders the rows by (q_id, predicted_rank) (np.lexsort: a script cannot
assume its logs sorted, beamml does not), and writes what beamml writes: the per-query
rows (q_id, n_returned, n_relevant, precision, precision_at_k, average_precision) as
Parquet and metrics.json (average query precision, P@5, MAP, n_queries). The per-query
rows and the overall metrics must agree (to 1e-12).

``--task classification``: logs of (truth, prediction), 0/1. The plain script reads them,
counts the confusion with np.bincount and writes metrics.json (precision, recall,
accuracy, F1, confusion), as scikit-learn defines them; the counts must be equal and the
metrics agree to 1e-12.

Each side is a whole process started here and timed from the outside (interpreter
start, imports, read, compute, write); N = each --rows (default 5M and 20M); the best
of --repeat runs per side and size counts; the whole ratio at the largest size and the
marginal one are printed (benchmarks/_harness.py). beamml does more (dead letters,
duplicate checks, a committed run), which is the point of the comparison. Extra flags
after ``--`` go to beamml (e.g. ``-- --direct_num_workers 2``).
"""
from __future__ import annotations

import argparse
import glob
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

DEFAULT_ROWS = (5_000_000, 20_000_000)
CUTOFF = 5

#: ``python -c RANKING_SCRIPT FILE OUTDIR``: per-query rows and the overall metrics
RANKING_SCRIPT = '''
import json, os, sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
path, out, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = pq.read_table(path, columns=['q_id', 'predicted_rank', 'truth_relevance'])
q = t.column('q_id').to_numpy()
r = t.column('predicted_rank').to_numpy()
order = np.lexsort((r, q))
q, r = q[order], r[order]
rel = (t.column('truth_relevance').to_numpy() > 0)[order]
starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
n_returned = np.diff(np.r_[starts, len(q)])
n_relevant = np.add.reduceat(rel.astype(np.int64), starts)
at_k = np.add.reduceat((rel & (r < k)).astype(np.int64), starts)
cum = np.cumsum(rel)
before = np.repeat(cum[starts] - rel[starts], n_returned)   # relevant rows before the query
ap_sum = np.add.reduceat(np.where(rel, (cum - before) / (r + 1.0), 0.0), starts)
with np.errstate(invalid='ignore', divide='ignore'):
    ap = np.where(n_relevant > 0, ap_sum / n_relevant, 0.0)   # --zero_division 0
precision = n_relevant / n_returned
os.makedirs(out, exist_ok=True)
pq.write_table(pa.table({'q_id': q[starts], 'n_returned': n_returned, 'n_relevant': n_relevant,
                         'precision': precision, 'precision_at_k': at_k / k,
                         'average_precision': ap}), os.path.join(out, 'per_query.parquet'))
with open(os.path.join(out, 'metrics.json'), 'w') as f:
    json.dump({'average_query_precision': precision.mean(), 'precision_at_k': (at_k / k).mean(),
               'mean_average_precision': ap.mean(), 'n_queries': len(starts)}, f)
'''

#: ``python -c CLASSIFICATION_SCRIPT FILE OUTDIR``: scikit-learn's binary metrics
CLASSIFICATION_SCRIPT = '''
import json, os, sys
import numpy as np
import pyarrow.parquet as pq
path, out = sys.argv[1], sys.argv[2]
t = pq.read_table(path, columns=['truth', 'prediction'])
truth = t.column('truth').to_numpy().astype(bool)
pred = t.column('prediction').to_numpy().astype(bool)
tn, fp, fn, tp = (int(c) for c in np.bincount(2 * truth + pred, minlength=4))
n = tp + fp + tn + fn
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, 'metrics.json'), 'w') as f:
    json.dump({'precision': tp / (tp + fp), 'recall': tp / (tp + fn), 'accuracy': (tp + tn) / n,
               'f1': 2 * tp / (2 * tp + fp + fn),
               'confusion': {'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn}}, f)
'''


def make_ranking(path: str, rows: int, per_query: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_q = -(-rows // per_query)
    q = np.repeat(np.arange(n_q, dtype=np.int64), per_query)[:rows]
    r = np.tile(np.arange(per_query, dtype=np.int64), n_q)[:rows]
    rel = (rng.random(rows) < 0.4 / (1 + 0.2 * r)).astype(np.int64) * rng.integers(1, 4, rows)
    _write(path, pa.table({'q_id': q, 'predicted_rank': r, 'truth_relevance': rel}))


def make_classification(path: str, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random(rows) < 0.3).astype(np.int64)
    flip = rng.random(rows) < 0.15
    _write(path, pa.table({'id': np.arange(rows, dtype=np.int64), 'truth': truth,
                           'prediction': np.where(flip, 1 - truth, truth)}))


def _write(path: str, table: pa.Table) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path + '.tmp', row_group_size=1 << 20)
    os.replace(path + '.tmp', path)


def _close(a, b) -> float:
    """The largest relative difference of two equal-shape float arrays (or scalars)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300), initial=0.0))


def agree_ranking(plain_dir: str, beam_dir: str) -> tuple[str, bool]:
    with open(os.path.join(beam_dir, 'metrics.json')) as f:
        got = json.load(f)['overall']
    with open(os.path.join(plain_dir, 'metrics.json')) as f:
        ref = json.load(f)
    if got['n_queries'] != ref['n_queries'] or got['k'] != CUTOFF:
        return f'n_queries beamml {got["n_queries"]}, plain {ref["n_queries"]}', False
    worst = max(_close(got[m], ref[m]) for m in
                ('average_query_precision', 'precision_at_k', 'mean_average_precision'))
    files = sorted(glob.glob(os.path.join(beam_dir, 'per_query', 'per_query-*.parquet')))
    mine = pa.concat_tables(pq.read_table(f) for f in files).sort_by('q_id') if files else None
    theirs = pq.read_table(os.path.join(plain_dir, 'per_query.parquet'))
    if mine is None or mine.num_rows != theirs.num_rows:
        return f'per-query rows: beamml {0 if mine is None else mine.num_rows}, plain ' \
               f'{theirs.num_rows}', False
    for name in ('q_id', 'n_returned', 'n_relevant'):
        if not np.array_equal(mine.column(name).to_numpy(), theirs.column(name).to_numpy()):
            return f'per-query {name} differ', False
    worst = max([worst] + [_close(mine.column(m).to_numpy(), theirs.column(m).to_numpy())
                           for m in ('precision', 'precision_at_k', 'average_precision')])
    return (f'{ref["n_queries"]:,} queries, per-query rows and AQP {ref["average_query_precision"]:.6f}'
            f' / P@{CUTOFF} / MAP agree to {worst:.1e} relative'), worst <= 1e-12


def agree_classification(plain_dir: str, beam_dir: str) -> tuple[str, bool]:
    with open(os.path.join(beam_dir, 'metrics.json')) as f:
        got = json.load(f)['overall']
    with open(os.path.join(plain_dir, 'metrics.json')) as f:
        ref = json.load(f)
    if got['confusion'] != ref['confusion']:
        return f'confusion beamml {got["confusion"]}, plain {ref["confusion"]}', False
    worst = max(_close(got[m], ref[m]) for m in ('precision', 'recall', 'accuracy', 'f1'))
    return (f'confusion {ref["confusion"]} equal; precision, recall, accuracy, F1 agree to '
            f'{worst:.1e} relative'), worst <= 1e-12


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_args(parser, DEFAULT_ROWS, default_repeat=3)
    parser.add_argument('--task', choices=('ranking', 'classification'), default='ranking')
    parser.add_argument('--per_query', type=int, default=20)
    parser.add_argument('--workdir', default=os.path.join(h.ROOT, 'bench_output', 'evaluate'))
    args, beam_extra = parser.parse_known_args(argv)
    beam_extra = [a for a in beam_extra if a != '--']
    load = os.getloadavg()
    ranking = args.task == 'ranking'

    best, agreed = {}, h.Agreement()
    for rows in h.sizes(args, DEFAULT_ROWS):
        path = os.path.join(args.workdir, f'ranking_logs_{rows}_{args.per_query}.parquet'
                            if ranking else f'classification_logs_{rows}.parquet')
        how = 'reused'
        if not os.path.exists(path):
            t0 = time.perf_counter()
            make_ranking(path, rows, args.per_query) if ranking else \
                make_classification(path, rows)
            how = f'made in {time.perf_counter() - t0:.1f} s'
        print(f'{args.task} logs: {rows:,} rows -> {path} ({how})', flush=True)
        plain_dir = os.path.join(args.workdir, 'plain')
        beam_dir = os.path.join(args.workdir, 'out')
        plain_cmd = (h.python_script(RANKING_SCRIPT, path, plain_dir, CUTOFF) if ranking else
                     h.python_script(CLASSIFICATION_SCRIPT, path, plain_dir))
        beam_cmd = h.beamml_command('evaluate', '--input', path, '--task', args.task,
                                    '--output', beam_dir, *beam_extra)
        if ranking:
            beam_cmd += ['--cutoff', str(CUTOFF)]
        t_plain, t_beam = [], []
        for r in range(args.repeat):
            shutil.rmtree(plain_dir, ignore_errors=True)
            t_plain.append(h.timed_process(plain_cmd))
            shutil.rmtree(beam_dir, ignore_errors=True)
            t_beam.append(h.timed_process(beam_cmd))
            line, ok = (agree_ranking if ranking else agree_classification)(plain_dir, beam_dir)
            agreed.add(line, ok)
            print(f'  run {r + 1}: plain {t_plain[-1]:.2f} s, beamml {t_beam[-1]:.2f} s; '
                  f'{line}{"" if ok else "  DISAGREE"}', flush=True)
        best[rows] = (min(t_plain), min(t_beam))
        print(f'  best of {args.repeat}: plain {best[rows][0]:.2f} s '
              f'({rows / best[rows][0]:,.0f} rows/s), beamml {best[rows][1]:.2f} s '
              f'({rows / best[rows][1]:,.0f} rows/s), ratio {best[rows][1] / best[rows][0]:.2f}',
              flush=True)
    for d in ('plain', 'out'):
        shutil.rmtree(os.path.join(args.workdir, d), ignore_errors=True)
    return h.finish(args, f'evaluate {args.task}', 'pyarrow+numpy script, same outputs', best,
                    agreed.ok, agreed.line, load, argv, unit='row')


if __name__ == '__main__':
    sys.exit(main())
