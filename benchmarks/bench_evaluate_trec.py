"""NDCG@10 + MAP of a TREC run against TREC qrels: `beamml evaluate` vs pytrec_eval and ranx.

    python benchmarks/bench_evaluate_trec.py [--rows 1000000 --rows 10000000]
        [--per_query 100] [--repeat 1] [--peers pytrec_eval,ranx] [--json PATH] [-- FLAGS]

The run file (``q_id Q0 doc_id rank score tag``; --per_query rows per query listed by
score, as retrieval systems write them; scores from 1,000 levels so that ties occur) and the qrels (``q_id 0 doc_id relevance``, 20
judgments per query, graded 0-3, half of them for documents the run never returned)
are written once. Each side is a whole process started here and timed from outside:
it reads both files, computes each query's ndcg_cut_10 and map, and writes them
(Parquet) with their means (JSON):

* beamml: ``evaluate --run_format trec --qrels ... --metrics map,ndcg_cut --cutoffs 10``;
* pytrec_eval: ``parse_run`` / ``parse_qrel`` of the files, ``RelevanceEvaluator`` (trec_eval's
  own C code);
* ranx: ``Qrels.from_file`` / ``Run.from_file`` (TREC format) and ``evaluate`` (numba).

Per-query values are compared: beamml against pytrec_eval must agree to 1e-12; the
largest deviation from ranx is printed (ranx breaks ties in score its own way, so
values differ where a tie straddles a relevant document). The best of --repeat per side
and size is kept and the rows/s printed.
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

DEFAULT_ROWS = (1_000_000, 10_000_000)
JUDGED = 20

PYTREC_SCRIPT = '''
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
import pytrec_eval
run_path, qrels_path, out = sys.argv[1:4]
with open(qrels_path) as f:
    qrels = pytrec_eval.parse_qrel(f)
with open(run_path) as f:
    run = pytrec_eval.parse_run(f)
res = pytrec_eval.RelevanceEvaluator(qrels, {'map', 'ndcg_cut.10'}).evaluate(run)
ids = sorted(res)
os.makedirs(out, exist_ok=True)
cols = {'q_id': ids, 'map': [res[q]['map'] for q in ids],
        'ndcg_cut_10': [res[q]['ndcg_cut_10'] for q in ids]}
pq.write_table(pa.table(cols), os.path.join(out, 'per_query.parquet'))
with open(os.path.join(out, 'metrics.json'), 'w') as f:
    json.dump({m: sum(cols[m]) / len(ids) for m in ('map', 'ndcg_cut_10')}, f)
'''

RANX_SCRIPT = '''
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
from ranx import Qrels, Run, evaluate
run_path, qrels_path, out = sys.argv[1:4]
qrels = Qrels.from_file(qrels_path, kind='trec')
run = Run.from_file(run_path, kind='trec')
res = evaluate(qrels, run, ['map', 'ndcg@10'], return_mean=False, make_comparable=True)
ids = list(run.keys())
order = sorted(range(len(ids)), key=ids.__getitem__)
os.makedirs(out, exist_ok=True)
cols = {'q_id': [ids[i] for i in order], 'map': [float(res['map'][i]) for i in order],
        'ndcg_cut_10': [float(res['ndcg@10'][i]) for i in order]}
pq.write_table(pa.table(cols), os.path.join(out, 'per_query.parquet'))
with open(os.path.join(out, 'metrics.json'), 'w') as f:
    json.dump({m: sum(cols[m]) / len(ids) for m in ('map', 'ndcg_cut_10')}, f)
'''
PEERS = {'pytrec_eval': PYTREC_SCRIPT, 'ranx': RANX_SCRIPT}


def make_pair(run_path: str, qrels_path: str, rows: int, per_query: int, seed: int = 0):
    """A TREC run of ``rows`` lines and its qrels, written with numpy/pyarrow (no loop
    per line)."""
    rng = np.random.default_rng(seed)
    n_q = -(-rows // per_query)
    q = np.repeat(np.arange(n_q, dtype=np.int64), per_query)[:rows]
    doc = rng.integers(0, 4 * per_query, rows)
    # unique documents within a query: position-dependent offsets
    doc = doc * per_query + np.tile(np.arange(per_query), n_q)[:rows]
    score = rng.integers(0, 1000, rows) / 100.0
    by_score = np.lexsort((-score, q))   # a run file lists each query's rows by score
    doc, score = doc[by_score], score[by_score]
    rank = np.tile(np.arange(1, per_query + 1), n_q)[:rows]
    lines = [q.astype(str), np.full(rows, 'Q0'), np.char.add('D', doc.astype(str)),
             rank.astype(str), np.char.mod('%.2f', score), np.full(rows, 'bench')]
    _write_lines(run_path, lines)
    # judgments: half for returned documents, half for documents never returned
    jq = np.repeat(np.arange(n_q, dtype=np.int64), JUDGED)
    pick = rng.integers(0, per_query, n_q * JUDGED)
    returned = doc[np.minimum(jq * per_query + pick, rows - 1)]
    unseen = (4 * per_query + rng.integers(0, 1000, n_q * JUDGED)) * per_query + pick
    jdoc = np.where(np.arange(n_q * JUDGED) % 2 == 0, returned, unseen)
    key = jq * (1 << 40) + jdoc
    _, first = np.unique(key, return_index=True)
    first.sort()
    rel = rng.choice([0, 1, 1, 2, 3], n_q * JUDGED)
    _write_lines(qrels_path, [jq[first].astype(str), np.full(len(first), '0'),
                              np.char.add('D', jdoc[first].astype(str)), rel[first].astype(str)])


def _write_lines(path: str, columns) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = columns[0]
    for c in columns[1:]:
        text = np.char.add(np.char.add(text, ' '), c)
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(text.tolist()) + '\n')
    os.replace(path + '.tmp', path)


def _per_query(directory: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(directory, 'per_query', 'per_query-*.parquet'))) or \
        [os.path.join(directory, 'per_query.parquet')]
    t = pa.concat_tables(pq.read_table(f, columns=['q_id', 'map', 'ndcg_cut_10'])
                         for f in files)
    return t.set_column(0, 'q_id', t.column('q_id').cast(pa.string())).sort_by('q_id')


def agree(beam_dir: str, peer_dir: str) -> float:
    """The largest absolute difference of the per-query values (inf: other queries)."""
    a, b = _per_query(beam_dir), _per_query(peer_dir)
    if a.column('q_id').to_pylist() != b.column('q_id').to_pylist():
        return float('inf')
    return max(float(np.max(np.abs(a.column(m).to_numpy() - b.column(m).to_numpy()),
                            initial=0.0)) for m in ('map', 'ndcg_cut_10'))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_args(parser, DEFAULT_ROWS, default_repeat=1)
    parser.add_argument('--per_query', type=int, default=100)
    parser.add_argument('--peers', default='pytrec_eval,ranx')
    parser.add_argument('--workdir', default=os.path.join(h.ROOT, 'bench_output', 'trec'))
    args, beam_extra = parser.parse_known_args(argv)
    beam_extra = [a for a in beam_extra if a != '--']
    peers = [p for p in args.peers.split(',') if p]
    table = []
    for rows in h.sizes(args, DEFAULT_ROWS):
        run_path = os.path.join(args.workdir, f'run_{rows}_{args.per_query}.txt')
        qrels_path = os.path.join(args.workdir, f'qrels_{rows}_{args.per_query}.txt')
        if not os.path.exists(qrels_path):
            t0 = time.perf_counter()
            make_pair(run_path, qrels_path, rows, args.per_query)
            print(f'made {run_path} in {time.perf_counter() - t0:.1f} s', flush=True)
        dirs = {s: os.path.join(args.workdir, s) for s in ['beamml'] + peers}
        cmds = {'beamml': h.beamml_command(
            'evaluate', '--input', run_path, '--run_format', 'trec', '--task', 'ranking',
            '--qrels', qrels_path, '--metrics', 'map,ndcg_cut', '--cutoffs', '10',
            '--output', dirs['beamml'], *beam_extra)}
        cmds.update({p: h.python_script(PEERS[p], run_path, qrels_path, dirs[p]) for p in peers})
        best = {}
        for r in range(args.repeat):
            for side, cmd in cmds.items():
                shutil.rmtree(dirs[side], ignore_errors=True)
                t = h.timed_process(cmd)
                best[side] = min(best.get(side, t), t)
                print(f'  {rows:,} rows, run {r + 1}: {side} {t:.2f} s', flush=True)
        dev = {p: agree(dirs['beamml'], dirs[p]) for p in peers}
        for side in cmds:
            table.append((rows, side, best[side], dev.get(side)))
        if 'pytrec_eval' in dev and not dev['pytrec_eval'] <= 1e-12:
            print(f'DISAGREE with pytrec_eval: {dev["pytrec_eval"]:.3g}')
            return 1
    print('\n| rows | tool | seconds (whole process) | rows/s | largest per-query '
          'deviation from beamml |\n|---|---|---|---|---|')
    for rows, side, t, d in table:
        print(f'| {rows:,} | {side} | {t:.1f} | {rows / t:,.0f} | '
              f'{"" if d is None else f"{d:.1e}"} |')
    h.write_result(args.json, {'pipeline': 'evaluate trec', 'rows': [list(r) for r in table]})
    return 0


if __name__ == '__main__':
    sys.exit(main())
