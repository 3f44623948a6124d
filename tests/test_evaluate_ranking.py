"""`beamml evaluate --task ranking` with judgments (--qrels), TREC run files, --cutoffs and
--relevance_level: every value against pytrec_eval (trec_eval itself), per query and
overall, dead letters and record counts exact."""
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from beamml.pipelines import evaluate
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.metrics.ranking_measures import TREC_MEASURES, measure_columns

pytrec_eval = pytest.importorskip('pytrec_eval')

CUTOFFS = (1, 3, 10)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def dead_letters(out):
    rows = []
    for path in glob.glob(os.path.join(out, 'evaluate-errors-*.jsonl')):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def per_query(out):
    files = sorted(glob.glob(os.path.join(out, 'per_query', 'per_query-*.parquet')))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pydict()


def trec_pair(seed=0, n_queries=25):
    """A TREC run and qrels as trec_eval reads them: tabs and spaces, ties in score, graded
    relevance, judged documents never returned, returned documents never judged, a query
    without a relevant document, one only in the run and one only in the qrels."""
    rng = np.random.default_rng(seed)
    run, qrels = [], []
    for q in range(n_queries):
        qid = str(401 + q)
        docs = rng.choice(80, size=rng.integers(1, 25), replace=False)
        scores = np.round(rng.integers(0, 6, len(docs)) * 0.25 + 3, 2)
        for rank, i in enumerate(np.lexsort((docs, -scores))):
            run.append((qid, f'FBIS3-{docs[i]}', rank + 1, float(scores[i])))
        judged = rng.choice(80, size=rng.integers(1, 30), replace=False)
        rels = (np.zeros(len(judged), int) if q == 4 else rng.choice([0, 0, 1, 2, 3],
                                                                    len(judged)))
        qrels += [(qid, f'FBIS3-{d}', int(r)) for d, r in zip(judged, rels)]
    run.append(('999', 'FBIS3-1', 1, 2.0))
    qrels.append(('998', 'FBIS3-1', 1))
    return run, qrels


def write_trec(tmp_path, run, qrels):
    with open(tmp_path / 'run.txt', 'w') as f:
        for i, (q, d, rank, s) in enumerate(run):
            sep = '\t' if i % 3 == 0 else ' '
            f.write(f'{q} Q0{sep}{d} {rank}  {s} beamml-run\n')
    with open(tmp_path / 'qrels.txt', 'w') as f:
        for q, d, r in qrels:
            f.write(f'{q} 0 {d} {r}\n')


def oracle(run, qrels, level=1, cutoffs=CUTOFFS):
    qd, rd = {}, {}
    for q, d, r in qrels:
        qd.setdefault(q, {})[d] = int(r)
    for q, d, _, s in run:
        rd.setdefault(q, {})[d] = float(s)
    names = {m if m in ('map', 'recip_rank', 'Rprec') else f'{m}.{",".join(map(str, cutoffs))}'
             for m in TREC_MEASURES} | {'num_rel', 'num_rel_ret'}
    return pytrec_eval.RelevanceEvaluator(qd, names, relevance_level=level).evaluate(rd)


def check_against(out, want, cutoffs=CUTOFFS):
    doc = read_json(os.path.join(out, 'metrics.json'))
    rows = per_query(out)
    ids = [str(q) for q in rows['q_id']]
    assert sorted(ids) == sorted(want)
    worst = 0.0
    for name in measure_columns(TREC_MEASURES, cutoffs):
        ref = np.array([want[q][name] for q in ids])
        worst = max(worst, float(np.max(np.abs(np.array(rows[name]) - ref))))
        assert abs(doc['overall'][name] - ref.mean()) <= 1e-12, name
    assert worst <= 1e-12
    assert rows['num_rel'] == [want[q]['num_rel'] for q in ids]
    assert rows['num_rel_ret'] == [want[q]['num_rel_ret'] for q in ids]
    return doc, rows


@pytest.mark.parametrize('level', [1, 2])
def test_trec_run_and_qrels_files_equal_trec_eval(tmp_path, level):
    run, qrels = trec_pair()
    write_trec(tmp_path, run, qrels)
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'run.txt'), '--run_format', 'trec', '--task',
                  'ranking', '--qrels', str(tmp_path / 'qrels.txt'), '--cutoffs', '10,1,3',
                  '--relevance_level', str(level), '--query_buckets', '3', '--output', out])
    doc, _ = check_against(out, oracle(run, qrels, level))
    o = doc['overall']
    assert o['n_queries'] == 25 and o['unjudged_queries'] == 1 and o['cutoffs'] == [1, 3, 10]
    assert doc['counts'] == {'records_read': len(run) + len(qrels),
                             'records_ok': len(run) + len(qrels), 'records_refused': 0}
    assert o['undefined']['map'] == 1 and o['undefined']['P_10'] == 0   # query 405
    assert dead_letters(out) == []


def test_bad_lines_and_repeated_pairs_are_dead_letters(tmp_path):
    run, qrels = trec_pair(1, n_queries=6)
    write_trec(tmp_path, run, qrels)
    with open(tmp_path / 'run.txt', 'a') as f:
        f.write(f'{run[0][0]} Q0 {run[0][1]} 7 99.0 again\n')   # a repeated (q_id, doc_id)
        f.write('401 Q0 FBIS3-1 1 high beamml-run\n\n')            # not a score; a blank line
        f.write('401 Q0 FBIS3-2 1\n')                             # 4 fields
    with open(tmp_path / 'qrels.txt', 'a') as f:
        f.write(f'{qrels[0][0]} 0 {qrels[0][1]} 3\n')              # a repeated judgment
        f.write('401 0 FBIS3-9 relevant\n')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'run.txt'), '--run_format', 'trec', '--task',
                  'ranking', '--qrels', str(tmp_path / 'qrels.txt'), '--cutoffs', '1,3,10',
                  '--max_refused_fraction', '1', '--output', out])
    doc, _ = check_against(out, oracle(run, qrels))     # the first of each pair is kept
    letters = sorted(dead_letters(out), key=lambda d: (d['file'], d['line']))
    reasons = [(os.path.basename(d['file']), d['line'], d['reason'].split(';')[0])
               for d in letters]
    n_run = len(run)
    assert reasons == [
        ('qrels.txt', len(qrels) + 1, 'duplicate (q_id, doc_id) pair'),
        ('qrels.txt', len(qrels) + 2, 'relevance is not a finite number'),
        ('run.txt', n_run + 1, 'duplicate (q_id, doc_id) pair'),
        ('run.txt', n_run + 2, 'score is not a finite number'),
        ('run.txt', n_run + 4, 'a TREC run line has 6 fields (q_id Q0 doc_id rank score tag)')]
    assert letters[2]['reason'].endswith('the row kept is run.txt:0')
    read = n_run + 3 + len(qrels) + 2   # a blank line is no record
    assert doc['counts'] == {'records_read': read, 'records_ok': read - 5,
                             'records_refused': 5}


def test_table_run_with_scores_qrels_table_and_slices(tmp_path):
    run, qrels = trec_pair(2)
    q = np.array([r[0] for r in run])
    model = np.where(q.astype(int) % 2 == 0, 'a', 'b')
    pq.write_table(pa.table({'query': q.astype(int), 'doc': [r[1] for r in run],
                             'sim': [r[3] for r in run], 'model': model}),
                   tmp_path / 'run.parquet')
    pcsv.write_csv(pa.table({'q_id': [r[0] for r in qrels], 'doc_id': [r[1] for r in qrels],
                             'relevance': [r[2] for r in qrels]}), tmp_path / 'qrels.csv')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'run.parquet'), '--task', 'ranking',
                  '--query_column', 'query', '--doc_column', 'doc', '--score_column', 'sim',
                  '--qrels', str(tmp_path / 'qrels.csv'), '--slice_by', 'model',
                  '--cutoffs', '1,3,10', '--output', out])
    want = oracle(run, qrels)
    doc, _ = check_against(out, want)
    for key, parity in (('model=a', 0), ('model=b', 1)):
        ids = [k for k in want if int(k) % 2 == parity]
        for name in ('map', 'ndcg_cut_10', 'P_3', 'recip_rank'):
            ref = np.mean([want[k][name] for k in ids])
            assert abs(doc['slices'][key][name] - ref) <= 1e-12
        assert doc['slices'][key]['n_queries'] == len(ids)


def test_measures_from_the_logs_own_relevance_and_complete(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    q = rng.integers(0, 30, n)
    rank = rng.permutation(n)
    rel = rng.choice([0, 0, 1, 2], n)
    pq.write_table(pa.table({'q_id': q, 'predicted_rank': rank, 'truth_relevance': rel}),
                   tmp_path / 'logs.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'ranking',
                  '--metrics', 'mean_average_precision,map,ndcg_cut,P', '--cutoffs', '1,3,10',
                  '--output', out])
    qd, rd = {}, {}
    for i in range(n):   # every returned row is judged; ranks order the run
        qd.setdefault(str(q[i]), {})[str(i)] = int(rel[i])
        rd.setdefault(str(q[i]), {})[str(i)] = -float(rank[i])
    want = pytrec_eval.RelevanceEvaluator(qd, {'map', 'ndcg_cut.1,3,10', 'P.1,3,10'}
                                          ).evaluate(rd)
    doc = read_json(os.path.join(out, 'metrics.json'))
    rows = per_query(out)
    for name in ('map', 'ndcg_cut_3', 'P_10'):
        ref = np.array([want[str(k)][name] for k in rows['q_id']])
        assert np.max(np.abs(np.array(rows[name]) - ref)) <= 1e-12
        assert abs(doc['overall'][name] - ref.mean()) <= 1e-12
    assert list(rows)[:6] == ['q_id', 'n_returned', 'n_relevant', 'precision',
                              'precision_at_k', 'average_precision']
    # --complete: the judged query without a row counts 0
    run, qrels = trec_pair(4, n_queries=5)
    write_trec(tmp_path, run, qrels)
    out = str(tmp_path / 'complete')
    evaluate.run(['--input', str(tmp_path / 'run.txt'), '--run_format', 'trec', '--task',
                  'ranking', '--qrels', str(tmp_path / 'qrels.txt'), '--metrics', 'map',
                  '--complete', '--output', out])
    want = oracle(run, qrels)
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['overall']['n_queries'] == len(want) + 1
    assert abs(doc['overall']['map'] - sum(v['map'] for v in want.values()) / (len(want) + 1)
               ) <= 1e-12


@pytest.mark.parametrize('flags,message', [
    (['--relevance_level', '0'], '--relevance_level must be > 0'),
    (['--cutoffs', '5,x'], '--cutoffs must be integers'),
    (['--complete', '--metrics', 'map'], '--complete needs --qrels'),
    (['--metrics', 'ndcg'], 'unknown --metrics ndcg'),
])
def test_bad_flags_are_errors_before_running(tmp_path, flags, message):
    pq.write_table(pa.table({'q_id': [1], 'predicted_rank': [0], 'truth_relevance': [1]}),
                   tmp_path / 'logs.parquet')
    with pytest.raises(BeammlError, match=message):
        evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'ranking',
                      '--output', str(tmp_path / 'o'), '--metrics', 'map'] + flags)


@pytest.mark.parametrize('task,flags,message', [
    ('classification', ['--qrels', 'q.txt'], '--qrels: for --task ranking only'),
    ('classification', ['--cutoffs', '1,3', '--complete'],
     '--cutoffs, --complete: for --task ranking only'),
    ('ranking', ['--qrels', 'q.txt', '--average', 'macro'],
     '--average: for --task classification only'),
    ('classification', ['--num_bootstrap', '500'],
     '--num_bootstrap: only with --confidence_intervals poisson_bootstrap'),
    ('ranking', ['--random_state', '3', '--confidence_level', '0.9'],
     '--random_state, --confidence_level: only with --confidence_intervals'),
])
def test_one_tasks_flags_on_the_other_task_are_errors(tmp_path, task, flags, message):
    # --score_column and --confidence_intervals are both tasks' (tests above, and
    # tests/test_evaluate_bootstrap_trec.py); the others are refused, not ignored
    pq.write_table(pa.table({'q_id': [1], 'predicted_rank': [0], 'truth_relevance': [1],
                             'truth': [1], 'prediction': [1]}), tmp_path / 'logs.parquet')
    with pytest.raises(BeammlError, match=message):
        evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', task,
                      '--output', str(tmp_path / 'o')] + flags)
