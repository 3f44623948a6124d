"""`beamml evaluate` end to end: metrics.json, per_query, dead letters, flags and errors."""
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from beamml.pipelines import evaluate
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.metrics import MeanAveragePrecision, PrecisionAtK


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


def classification_logs(seed=0, n=400):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    pred = np.where(rng.random(n) < 0.8, truth, ~truth)
    return truth.astype(int), pred.astype(int), rng.choice(['us', 'eu', 'asia'], n)


def test_classification_parquet_with_slices(tmp_path):
    t, p, region = classification_logs()
    pq.write_table(pa.table({'label': t, 'score_label': p, 'region': region,
                             'extra': np.arange(len(t))}), tmp_path / 'logs.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'classification',
                  '--truth_column', 'label', '--prediction_column', 'score_label',
                  '--slice_by', 'region', '--output', out])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': 400, 'records_ok': 400, 'records_refused': 0}
    o = doc['overall']
    assert o['precision'] == pytest.approx(precision_score(t, p))
    assert o['recall'] == pytest.approx(recall_score(t, p))
    assert o['accuracy'] == pytest.approx(accuracy_score(t, p))
    assert o['f1'] == pytest.approx(f1_score(t, p))
    assert o['confusion'] == {'tp': int((t & p).sum()), 'fp': int((~t & p & 1).sum()),
                              'tn': int(((1 - t) & (1 - p)).sum()),
                              'fn': int((t & (1 - p)).sum())}
    assert set(doc['slices']) == {'region=us', 'region=eu', 'region=asia'}
    for key, section in doc['slices'].items():
        sel = region == key.split('=')[1]
        assert section['precision'] == pytest.approx(precision_score(t[sel], p[sel]))
        assert section['f1'] == pytest.approx(f1_score(t[sel], p[sel]))
    assert dead_letters(out) == []


def test_classification_csv_strings_and_dead_letters(tmp_path):
    t, p, _ = classification_logs(1, 300)
    words = np.array(['F', 'T'])
    truth = words[t].astype(object)
    pred = np.array(['false', 'TRUE'])[p].astype(object)
    truth[[5, 17]] = ['maybe', '']       # not a label; missing
    pred[40] = '2'
    pcsv.write_csv(pa.table({'truth': truth.astype(str), 'prediction': pred.astype(str)}),
                   tmp_path / 'logs.csv')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.csv'), '--task', 'classification',
                  '--metrics', 'precision,recall', '--output', out,
                  '--max_refused_fraction', '0.05'])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': 300, 'records_ok': 297, 'records_refused': 3}
    keep = np.ones(300, bool)
    keep[[5, 17, 40]] = False
    assert set(doc['overall']) == {'precision', 'recall', 'undefined'}
    assert doc['overall']['precision'] == pytest.approx(precision_score(t[keep], p[keep]))
    assert doc['overall']['recall'] == pytest.approx(recall_score(t[keep], p[keep]))
    dead = sorted(dead_letters(out), key=lambda d: d['row'])
    assert [d['row'] for d in dead] == [5, 17, 40]
    assert 'not a binary label' in dead[0]['reason'] and dead[0]['record']['truth'] == 'maybe'
    assert 'missing truth' in dead[1]['reason']
    assert 'prediction' in dead[2]['reason']
    assert all(d['file'].endswith('logs.csv') for d in dead)


def test_classification_all_negative_reports_undefined(tmp_path):
    n = 50
    pq.write_table(pa.table({'truth': np.zeros(n, bool), 'prediction': np.zeros(n, bool)}),
                   tmp_path / 'neg.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'neg.parquet'), '--task', 'classification',
                  '--zero_division', '1', '--output', out])
    o = read_json(os.path.join(out, 'metrics.json'))['overall']
    t = p = np.zeros(n, int)
    assert o['precision'] == precision_score(t, p, zero_division=1.0) == 1.0
    assert o['recall'] == recall_score(t, p, zero_division=1.0)
    assert o['f1'] == f1_score(t, p, zero_division=1.0)
    assert o['accuracy'] == 1.0
    assert o['undefined'] == {'precision': 1, 'recall': 1, 'accuracy': 0, 'f1': 1}


def ranking_logs(seed=0, n_queries=60, max_rows=10):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_rows + 1, n_queries)
    q = np.repeat(np.arange(n_queries) * 7 + 3, sizes)
    r = np.concatenate([np.arange(s) for s in sizes])
    rel = rng.integers(0, 3, len(q)) * (rng.random(len(q)) < 0.5)
    model = rng.choice(['m1', 'm2'], len(q))
    return q, r, rel, model


def test_ranking_two_files_per_query_and_slices(tmp_path):
    q, r, rel, model = ranking_logs()
    n = len(q)
    order = np.random.default_rng(1).permutation(n)  # queries spread over both files
    cols = {'query': q, 'pos': r, 'grade': rel, 'model': model}
    half = n // 2
    for i, part in enumerate([order[:half], order[half:]]):
        pq.write_table(pa.table({k: v[part] for k, v in cols.items()}),
                       tmp_path / f'logs-{i}.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs-*.parquet'), '--task', 'ranking',
                  '--query_column', 'query', '--rank_column', 'pos',
                  '--relevance_column', 'grade', '--cutoff', '3', '--slice_by', 'model',
                  '--query_buckets', '4', '--output', out])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': n, 'records_ok': n, 'records_refused': 0}
    # per-query precision against a numpy group-by
    u, inv = np.unique(q, return_inverse=True)
    n_ret = np.bincount(inv)
    n_rel = np.bincount(inv, weights=rel > 0)
    o = doc['overall']
    assert set(o) == {'average_query_precision', 'precision_at_k', 'k',
                      'mean_average_precision', 'n_queries', 'undefined'}
    assert o['k'] == 3 and o['n_queries'] == len(u)
    assert o['average_query_precision'] == pytest.approx((n_rel / n_ret).mean())
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel)
    assert o['precision_at_k'] == pytest.approx(PrecisionAtK(3)(**arrays))
    assert o['mean_average_precision'] == pytest.approx(MeanAveragePrecision()(**arrays))
    pqr = per_query(out)
    assert list(pqr) == ['q_id', 'n_returned', 'n_relevant', 'precision', 'precision_at_k',
                         'average_precision']
    order = np.argsort(pqr['q_id'])
    np.testing.assert_array_equal(np.array(pqr['q_id'])[order], u)
    np.testing.assert_array_equal(np.array(pqr['n_returned'])[order], n_ret)
    np.testing.assert_allclose(np.array(pqr['precision'])[order], n_rel / n_ret)
    # slices equal the metric on the filtered subset
    for key in ('m1', 'm2'):
        sel = model == key
        sub = {k: v[sel] for k, v in arrays.items()}
        uq, sinv = np.unique(q[sel], return_inverse=True)
        want = (np.bincount(sinv, weights=rel[sel] > 0) / np.bincount(sinv)).mean()
        section = doc['slices'][f'model={key}']
        assert section['average_query_precision'] == pytest.approx(want)
        assert section['n_queries'] == len(uq)
        assert section['mean_average_precision'] == pytest.approx(
            MeanAveragePrecision()(**sub))


def test_ranking_csv_string_ids_duplicates_and_bad_rows(tmp_path):
    rows = [('a', 0, 1), ('a', 1, 0), ('b', 0, 0), ('b', 1, 1), ('a', 2, 1)]
    text = 'q_id,predicted_rank,truth_relevance\n' + ''.join(
        f'{q},{r},{v}\n' for q, r, v in rows)
    (tmp_path / 'a.csv').write_text(text + 'c,x,1\nc,0,1\n')      # 'x' is not a rank
    (tmp_path / 'b.csv').write_text('q_id,predicted_rank,truth_relevance\nb,1,0\nc,1,0\n'
                                    'a,3,true\n')                 # (b, 1) again
    out = str(tmp_path / 'eval')
    flags = ['--input', str(tmp_path / '*.csv'), '--task', 'ranking', '--cutoff', '2',
             '--output', out]
    with pytest.raises(BeammlError, match='max_refused_fraction') as e:
        evaluate.run(flags)
    assert not os.path.exists(out)   # nothing committed; the dead letters kept beside it
    (kept,) = glob.glob(str(e.value).rsplit(' ', 1)[1])
    assert '.beamml-refused-eval-' in kept and len(open(kept).read().splitlines()) == 2
    evaluate.run(flags + ['--max_refused_fraction', '0.2'])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': 10, 'records_ok': 8, 'records_refused': 2}
    dead = sorted(dead_letters(out), key=lambda d: d['file'])
    assert len(dead) == 2
    assert dead[0]['file'].endswith('a.csv') and dead[0]['row'] == 5
    assert 'predicted_rank' in dead[0]['reason']
    assert dead[1]['file'].endswith('b.csv') and dead[1]['row'] == 0
    assert 'duplicate' in dead[1]['reason'] and 'a.csv:3' in dead[1]['reason']
    # kept: a: ranks 0,1,2,3 rel 1,0,1,1; b: ranks 0,1 rel 0,1; c: ranks 0,1 rel 1,0
    o = doc['overall']
    assert o['n_queries'] == 3
    assert o['average_query_precision'] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    assert o['precision_at_k'] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
    ap_a = (1 + 2 / 3 + 3 / 4) / 3
    assert o['mean_average_precision'] == pytest.approx((ap_a + 1 / 2 + 1) / 3)
    pqr = per_query(out)
    assert sorted(pqr['q_id']) == ['a', 'b', 'c']


def test_missing_column_is_an_error_before_running(tmp_path):
    pq.write_table(pa.table({'q': [1], 'rank': [0], 'rel': [1]}), tmp_path / 'x.parquet')
    with pytest.raises(BeammlError) as e:
        evaluate.run(['--input', str(tmp_path / 'x.parquet'), '--task', 'ranking',
                      '--query_column', 'q', '--output', str(tmp_path / 'out')])
    msg = str(e.value)
    assert "'predicted_rank' (--rank_column)" in msg and 'q, rank, rel' in msg
    assert not os.path.exists(tmp_path / 'out' / 'metrics.json')
    with pytest.raises(BeammlError, match='slice_by'):
        evaluate.run(['--input', str(tmp_path / 'x.parquet'), '--task', 'ranking',
                      '--query_column', 'q', '--rank_column', 'rank',
                      '--relevance_column', 'rel', '--slice_by', 'model',
                      '--output', str(tmp_path / 'out')])


def test_unknown_metric_and_bad_k(tmp_path):
    pq.write_table(pa.table({'truth': [1], 'prediction': [1]}), tmp_path / 'x.parquet')
    base = ['--input', str(tmp_path / 'x.parquet'), '--output', str(tmp_path / 'out')]
    with pytest.raises(BeammlError, match='precision_at_k'):
        evaluate.run(base + ['--task', 'classification', '--metrics', 'precision_at_k'])
    with pytest.raises(BeammlError, match='--cutoff'):
        evaluate.run(base + ['--task', 'ranking', '--cutoff', '0'])
    with pytest.raises(BeammlError, match='slice_by'):
        evaluate.run(base + ['--task', 'classification', '--slice_by', 'truth'])


def test_ranking_on_gcs(gcs_bucket):
    from apache_beam.io.filesystems import FileSystems
    q, r, rel, _ = ranking_logs(3, n_queries=20)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({'q_id': q, 'predicted_rank': r, 'truth_relevance': rel}), sink)
    with FileSystems.create(f'{gcs_bucket}/logs/a.parquet') as f:
        f.write(sink.getvalue().to_pybytes())
    out = f'{gcs_bucket}/eval'
    evaluate.run(['--input', f'{gcs_bucket}/logs/*.parquet', '--task', 'ranking',
                  '--output', out])
    with FileSystems.open(f'{out}/metrics.json') as f:
        doc = json.loads(f.read())
    u, inv = np.unique(q, return_inverse=True)
    want = (np.bincount(inv, weights=rel > 0) / np.bincount(inv)).mean()
    assert doc['overall']['average_query_precision'] == pytest.approx(want)
    assert doc['counts']['records_read'] == len(q)
    (match,) = FileSystems.match([f'{out}/per_query/per_query-*.parquet'])
    assert len(match.metadata_list) == 1


def test_ranking_from_json_lines(tmp_path):
    import json as _json
    from beamml.pipelines import evaluate as _evaluate
    rows = [{'q_id': 1, 'predicted_rank': r, 'truth_relevance': int(r < 2)} for r in range(4)]
    rows += [{'q_id': 2, 'predicted_rank': r, 'truth_relevance': 1} for r in range(3)]
    path = tmp_path / 'rank.jsonl'
    path.write_text(''.join(_json.dumps(r) + '\n' for r in rows))
    out = tmp_path / 'ev'
    _evaluate.run(['--input', str(path), '--task', 'ranking', '--cutoff', '2', '--output', str(out)])
    got = _json.loads((out / 'metrics.json').read_text())
    assert got['overall']['average_query_precision'] == 0.75  # (2/4 + 3/3) / 2
    assert got['overall']['precision_at_k'] == 1.0
    assert got['overall']['n_queries'] == 2
    assert got['counts'] == {'records_read': 7, 'records_ok': 7, 'records_refused': 0}


@pytest.mark.parametrize('task', ['ranking', 'classification'])
def test_no_usable_row_writes_the_metrics_of_nothing(tmp_path, task):
    # every row is refused: metrics.json holds the metrics of no row (and, with
    # --overwrite, replaces the metrics.json of an earlier run in the same directory;
    # a run refused by --max_refused_fraction leaves that earlier one as it was)
    if task == 'ranking':
        good = 'q_id,predicted_rank,truth_relevance\n1,0,1\n1,1,0\n2,0,1\n'
        bad = 'q_id,predicted_rank,truth_relevance\n1,x,1\n2,-1,0\n'
    else:
        good = 'truth,prediction\n1,1\n0,1\n1,0\n'
        bad = 'truth,prediction\n1,7\nyes,0\n'
    out = str(tmp_path / 'eval')
    (tmp_path / 'good.csv').write_text(good)
    evaluate.run(['--input', str(tmp_path / 'good.csv'), '--task', task, '--output', out])
    before = read_json(os.path.join(out, 'metrics.json'))
    (tmp_path / 'bad.csv').write_text(bad)
    again = ['--input', str(tmp_path / 'bad.csv'), '--task', task, '--output', out,
             '--overwrite']
    with pytest.raises(BeammlError, match='max_refused_fraction'):
        evaluate.run(again)
    assert read_json(os.path.join(out, 'metrics.json')) == before
    evaluate.run(again + ['--max_refused_fraction', '1'])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': 2, 'records_ok': 0, 'records_refused': 2}
    assert doc != before and len(dead_letters(out)) == 2
    o = doc['overall']
    if task == 'ranking':
        assert before['overall']['n_queries'] == 2
        assert o['n_queries'] == 0 and o['k'] == 5
        assert o['average_query_precision'] == 0.0
        assert o['undefined']['mean_average_precision'] == 1
    else:
        assert o['confusion'] == {'tp': 0, 'fp': 0, 'tn': 0, 'fn': 0}
        assert o['precision'] == 0.0 and o['undefined']['precision'] == 1
    assert doc['slices'] == {}


def strict_json(path):
    """metrics.json parsed as strict JSON: a bare NaN / Infinity token is an error."""
    def refuse(token):
        raise ValueError(f'non-standard JSON token {token}')
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_zero_division_nan_is_written_as_the_string_nan(tmp_path, capsys):
    # the one JSON policy: a non-finite metric is "NaN" (as BigQuery reads a FLOAT64),
    # not null; add_counts reads it back and rewrites it unchanged
    pq.write_table(pa.table({'truth': np.zeros(20, bool), 'prediction': np.zeros(20, bool)}),
                   tmp_path / 'neg.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'neg.parquet'), '--task', 'classification',
                  '--zero_division', 'nan', '--output', out])
    doc = strict_json(os.path.join(out, 'metrics.json'))
    o = doc['overall']
    assert o['precision'] == o['recall'] == o['f1'] == 'NaN'
    assert o['accuracy'] == 1.0
    assert o['undefined'] == {'precision': 1, 'recall': 1, 'accuracy': 0, 'f1': 1}
    assert doc['counts'] == {'records_read': 20, 'records_ok': 20, 'records_refused': 0}
    assert 'precision=NaN' in capsys.readouterr().out


def test_ranking_per_query_values_and_nan_average_precision(tmp_path):
    # query 1: ranks 0-3, relevant at 1 and 3; query 2: nothing relevant (AP 0/0 -> nan)
    rows = [{'q_id': 1, 'predicted_rank': r, 'truth_relevance': int(r in (1, 3))}
            for r in range(4)]
    rows += [{'q_id': 2, 'predicted_rank': r, 'truth_relevance': 0} for r in range(2)]
    path = tmp_path / 'rank.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    out = str(tmp_path / 'ev')
    evaluate.run(['--input', str(path), '--task', 'ranking', '--cutoff', '2',
                  '--zero_division', 'nan', '--output', out])
    pqr = per_query(out)
    by_q = {q: i for i, q in enumerate(pqr['q_id'])}
    one, two = by_q[1], by_q[2]
    assert pqr['precision'][one] == 0.5 and pqr['precision'][two] == 0.0
    assert pqr['precision_at_k'][one] == 0.5 and pqr['precision_at_k'][two] == 0.0
    assert pqr['average_precision'][one] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert np.isnan(pqr['average_precision'][two])
    o = strict_json(os.path.join(out, 'metrics.json'))['overall']
    assert o['mean_average_precision'] == 'NaN'
    assert o['undefined']['mean_average_precision'] == 1
    assert o['precision_at_k'] == 0.25


def test_bad_query_buckets_is_an_error_before_running(tmp_path):
    pq.write_table(pa.table({'q_id': [1], 'predicted_rank': [0], 'truth_relevance': [1]}),
                   tmp_path / 'x.parquet')
    with pytest.raises(BeammlError, match="--query_buckets: '0' is not an integer >= 1"):
        evaluate.run(['--input', str(tmp_path / 'x.parquet'), '--task', 'ranking',
                      '--query_buckets', '0', '--output', str(tmp_path / 'out')])
    assert not os.path.exists(tmp_path / 'out' / 'metrics.json')
