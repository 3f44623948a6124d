"""Poisson-bootstrap intervals of trec_eval's measures (issue 22, parts 1 and 3 together):
queries are resampled, so every overall ranking measure that is a mean over queries gets an
interval, with --qrels too. Agreement with a plain numpy bootstrap over pytrec_eval's
per-query values (the same draws: ``poisson_weights`` of the query ids' ``text_keys``),
batch overall and per slice, with --complete, and per streaming window."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from beamml.pipelines import evaluate
from beamml.transforms.metrics.bootstrap import poisson_weights, text_keys
from beamml.transforms.metrics.query_bootstrap import QueryIntervals, is_query_mean
from beamml.transforms.metrics.ranking_measures import TREC_MEASURES, measure_columns
from test_evaluate_ranking import oracle, per_query, trec_pair, write_trec

pytrec_eval = pytest.importorskip('pytrec_eval')

B, SEED, LEVEL = 40, 2, 0.9
CI_FLAGS = ['--confidence_intervals', 'poisson_bootstrap', '--num_bootstrap', str(B),
            '--random_state', str(SEED), '--confidence_level', str(LEVEL)]
#: the keys of a metrics.json section that are not measures
NOT_MEASURES = {'undefined', 'confidence_intervals', 'k', 'cutoffs', 'relevance_level',
                'unjudged_queries', 'n_queries'}


def plain_bootstrap(qids, values):
    """(replicates (B,), weights): each query's B Poisson(1) weights keyed by its id as
    text (ids are compared as text with judgments), the weighted mean per replicate."""
    w = poisson_weights(text_keys(np.array(qids, dtype=object).astype(str)), B, SEED)
    return (w * np.asarray(values, float)[:, None]).sum(axis=0) / w.sum(axis=0)


def check_interval(ci, rep, what):
    a = (1 - LEVEL) / 2
    assert np.isclose(ci['lower'], np.quantile(rep, a), rtol=1e-12, atol=1e-15), what
    assert np.isclose(ci['upper'], np.quantile(rep, 1 - a), rtol=1e-12, atol=1e-15), what
    assert np.isclose(ci['standard_error'], np.std(rep, ddof=1), rtol=1e-10, atol=1e-15), what


def test_every_mean_over_queries_gets_an_interval_with_qrels_and_slices(tmp_path):
    run, qrels = trec_pair(5, n_queries=30)
    q = np.array([r[0] for r in run])
    model = np.where(q.astype(int) % 3 == 0, 'a', 'b')
    pq.write_table(pa.table({'query': q.astype(int), 'doc': [r[1] for r in run],
                             'sim': [r[3] for r in run], 'model': model}),
                   tmp_path / 'run.parquet')
    pcsv.write_csv(pa.table({'q_id': [r[0] for r in qrels], 'doc_id': [r[1] for r in qrels],
                             'relevance': [r[2] for r in qrels]}), tmp_path / 'qrels.csv')
    cutoffs = (1, 3, 10)
    trec = measure_columns(TREC_MEASURES, cutoffs)
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'run.parquet'), '--task', 'ranking',
                  '--query_column', 'query', '--doc_column', 'doc', '--score_column', 'sim',
                  '--qrels', str(tmp_path / 'qrels.csv'), '--slice_by', 'model',
                  '--metrics', ','.join(['mean_average_precision', 'precision_at_k',
                                         'n_queries'] + list(TREC_MEASURES)),
                  '--cutoffs', '1,3,10', '--cutoff', '3', '--output', out] + CI_FLAGS)
    with open(os.path.join(out, 'metrics.json')) as f:
        doc = json.load(f)
    want = oracle(run, qrels, cutoffs=cutoffs)   # pytrec_eval, per query
    rows = per_query(out)
    qids = [str(x) for x in rows['q_id']]
    assert sorted(qids) == sorted(want)
    # trec_eval's values from pytrec_eval; the older measures from beamml's own per_query
    # rows (their per-query definitions are tested in tests/test_evaluate*.py)
    values = {name: np.array([want[i][name] for i in qids]) for name in trec}
    values['mean_average_precision'] = np.array(rows['average_precision'])
    values['precision_at_k'] = np.array(rows['precision_at_k'])
    groups = {'model': np.array(['a' if int(i) % 3 == 0 else 'b' for i in qids])}
    for key, chosen in ((None, np.ones(len(qids), bool)),
                        ('model=a', groups['model'] == 'a'),
                        ('model=b', groups['model'] == 'b')):
        sec = doc['overall'] if key is None else doc['slices'][key]
        measures = set(sec) - NOT_MEASURES
        assert measures == set(values), key   # every mean over queries ...
        assert set(sec['confidence_intervals']) == measures, key   # ... has an interval
        for name in sorted(measures):
            v = values[name][chosen]
            assert abs(sec[name] - v.mean()) <= 1e-12, (key, name)
            rep = plain_bootstrap(np.array(qids)[chosen], v)
            check_interval(sec['confidence_intervals'][name], rep, (key, name))


def test_complete_queries_are_resampled_with_their_zeros(tmp_path):
    run, qrels = trec_pair(6, n_queries=12)
    write_trec(tmp_path, run, qrels)
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'run.txt'), '--run_format', 'trec', '--task',
                  'ranking', '--qrels', str(tmp_path / 'qrels.txt'), '--metrics',
                  'map,ndcg_cut', '--cutoffs', '10', '--complete', '--output', out] + CI_FLAGS)
    with open(os.path.join(out, 'metrics.json')) as f:
        overall = json.load(f)['overall']
    want = oracle(run, qrels, cutoffs=(10,))
    judged = sorted({r[0] for r in qrels})
    assert len(judged) == len(want) + 1   # '998': judged, not in the run: every value 0
    for name in ('map', 'ndcg_cut_10'):
        v = [want[i][name] if i in want else 0.0 for i in judged]
        assert abs(overall[name] - np.mean(v)) <= 1e-12
        check_interval(overall['confidence_intervals'][name], plain_bootstrap(judged, v), name)


def test_streaming_windows_with_qrels_get_intervals(tmp_path):
    from test_evaluate_ranking_streaming import W, run_stream
    rng = np.random.default_rng(7)
    rows, times, qrels = [], [], {}
    for q in range(16):   # 8 queries per window
        for d in rng.choice(30, size=5, replace=False):
            rows.append({'q_id': f'q{q}', 'doc_id': f'd{d}', 'score': float(rng.integers(0, 3))})
            times.append(1 + (q // 8) * W)
        qrels[f'q{q}'] = {f'd{d}': int(rng.integers(0, 3))
                          for d in rng.choice(30, size=8, replace=False)}
    with open(tmp_path / 'qrels.txt', 'w') as f:
        f.writelines(f'{q} 0 {d} {r}\n' for q, js in qrels.items() for d, r in js.items())
    records = run_stream(tmp_path, rows, times, [
        '--qrels', str(tmp_path / 'qrels.txt'), '--score_column', 'score',
        '--metrics', 'map,ndcg_cut', '--cutoffs', '3'] + CI_FLAGS)
    assert len(records) == 2
    for record in records:
        start = int(record['window_start'][17:19]) + 60 * int(record['window_start'][14:16])
        run = {}
        for r, t in zip(rows, times):
            if start <= t < start + W:
                run.setdefault(r['q_id'], {})[r['doc_id']] = r['score']
        want = pytrec_eval.RelevanceEvaluator(qrels, {'map', 'ndcg_cut.3'}).evaluate(run)
        qids = sorted(want)
        assert set(record['overall']['confidence_intervals']) == {'map', 'ndcg_cut_3'}
        for name in ('map', 'ndcg_cut_3'):
            rep = plain_bootstrap(qids, [want[i][name] for i in qids])
            check_interval(record['overall']['confidence_intervals'][name], rep, (start, name))


def test_which_names_are_means_over_queries():
    for name in ('map', 'recip_rank', 'Rprec', 'P_5', 'recall_100', 'success_1',
                 'map_cut_10', 'ndcg_cut_20', 'precision_at_k', 'mean_average_precision',
                 'average_query_precision'):
        assert is_query_mean(name), name
    for name in ('n_queries', 'P', 'ndcg_cut', 'P_0', 'P_x', 'map_5', 'unjudged_queries'):
        assert not is_query_mean(name), name
    with pytest.raises(ValueError, match='no per-query mean for n_queries'):
        QueryIntervals(['map', 'n_queries'])
