"""Metrics: numpy kernels against scikit-learn / numpy oracles, CombineFns, ComputeMetrics."""
import itertools
import math
import os
import pickle
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score,
                             precision_score, recall_score)

from beamml.transforms.core.errors import ERRORS, BeammlError
from beamml.transforms.metrics import (Accuracy, AverageQueryPrecision, ComputeMetrics,
                                       ConfusionCounts, F1, MeanAveragePrecision, MetricsCombineFn,
                                       ParsePredictionLogs, Precision, PrecisionAtK, QueryCount,
                                       QueryPrecision, QueryStats, Recall, binary_labels,
                                       confusion_counts, parse_binary, parse_query_ids, parse_rank,
                                       parse_relevance, per_query_metrics, query_buckets,
                                       query_stats)

SKLEARN = {'precision': precision_score, 'recall': recall_score, 'f1': f1_score}


def classification_metrics(zero_division=0.0):
    return [Precision(zero_division=zero_division), Recall(zero_division=zero_division),
            Accuracy(zero_division=zero_division), F1(zero_division=zero_division),
            ConfusionCounts()]


def random_logs(seed, n, p_truth=0.4, p_pred=0.5):
    rng = np.random.default_rng(seed)
    return (rng.random(n) < p_truth).astype(int), (rng.random(n) < p_pred).astype(int)


# ----------------------------------------------------------------------------- classification

CASES = {
    'random': random_logs(0, 500),
    'random_small': random_logs(1, 7),
    'all_negative_truth': (np.zeros(50, int), random_logs(2, 50)[1]),
    'all_positive_truth': (np.ones(50, int), random_logs(3, 50)[1]),
    'all_negative_both': (np.zeros(20, int), np.zeros(20, int)),
    'all_positive_both': (np.ones(20, int), np.ones(20, int)),
    'no_predicted_positive': (random_logs(4, 60)[0], np.zeros(60, int)),
    'one_row': (np.array([1]), np.array([0])),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('zero_division', [0.0, 1.0])
def test_classification_against_sklearn(case, zero_division):
    t, p = CASES[case]
    for m in classification_metrics(zero_division)[:4]:
        got, undefined = m.evaluate(truth=t, prediction=p)
        if m.name == 'accuracy':
            want = accuracy_score(t, p)
        else:
            want = SKLEARN[m.name](t, p, zero_division=zero_division)
        assert got == pytest.approx(want, abs=1e-12), m.name
    # undefined cases are counted, not hidden
    tp = int(((t == 1) & (p == 1)).sum())
    assert Precision().evaluate(truth=t, prediction=p)[1] == int((p == 1).sum() == 0)
    assert Recall().evaluate(truth=t, prediction=p)[1] == int((t == 1).sum() == 0)
    assert F1().evaluate(truth=t, prediction=p)[1] == int(tp == 0 and (t != p).sum() == 0
                                                          and (t == 1).sum() == 0)


def test_confusion_counts_and_label_forms():
    t = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([1, 1, 0, 1, 0, 0])
    want = {'tp': 2, 'fp': 1, 'tn': 2, 'fn': 1}
    assert ConfusionCounts()(truth=t, prediction=p) == want
    forms = [t.astype(bool), np.array(['T', 'f', 'true', 'TRUE', 'False', 'F']),
             np.array([' t ', '0', '1', 'True', 'false', 'f'], dtype=object),
             pa.array(t.astype(bool)), np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
             np.array([True, 0, 'T', 1, 'f', False], dtype=object)]
    for form in forms:
        assert ConfusionCounts()(truth=form, prediction=p) == want, form
    assert confusion_counts(t, p).tolist() == [2, 1, 2, 1]


def test_metrics_ignore_unused_keywords_and_need_theirs():
    t, p = random_logs(5, 40)
    arrays = dict(truth=t, prediction=p, q_id=np.arange(3), anything='else')
    got = {m.name: m(**arrays) for m in classification_metrics()}
    assert got['precision'] == pytest.approx(precision_score(t, p))
    with pytest.raises(TypeError, match='prediction'):
        Precision()(truth=t)


@pytest.mark.parametrize('bad', [2, 'yes', None, -1, 0.5, float('nan')])
def test_invalid_labels(bad):
    values = np.array([1, 0, bad, 1], dtype=object)
    labels, missing, invalid = parse_binary(values)
    assert (missing | invalid).tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match='not binary labels'):
        binary_labels(values, 'truth')
    with pytest.raises(ValueError, match='truth'):
        Precision()(truth=values, prediction=np.ones(4, int))


def test_parse_binary_nulls_and_types():
    labels, missing, invalid = parse_binary(pa.array(['T', None, 'x', 'false']))
    assert labels.tolist() == [True, False, False, False]
    assert missing.tolist() == [False, True, False, False]
    assert invalid.tolist() == [False, False, True, False]
    labels, missing, invalid = parse_binary(pa.array([1, 2, None, 0], pa.int64()))
    assert labels.tolist() == [True, False, False, False]
    assert invalid.tolist() == [False, True, False, False]
    assert missing.tolist() == [False, False, True, False]


def test_zero_division_values():
    with pytest.raises(ValueError, match='zero_division'):
        Precision(zero_division=0.5)
    v, n = Precision(zero_division=float('nan')).evaluate(truth=[0, 1], prediction=[0, 0])
    assert math.isnan(v) and n == 1
    assert Accuracy().evaluate(truth=np.zeros(0, int), prediction=np.zeros(0, int)) == (0.0, 1)


# ----------------------------------------------------------------------------- ranking

def four_queries():
    """Query precisions 2/4, 3/3, 0/5, 2/4 (mean 0.5), rows shuffled."""
    q = np.repeat([10, 20, 30, 40], [4, 3, 5, 4])
    r = np.concatenate([np.arange(4), np.arange(3), np.arange(5), np.arange(4)])
    rel = np.array([1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1])
    order = np.random.default_rng(0).permutation(len(q))
    return q[order], r[order], rel[order]


def test_average_query_precision_example():
    q, r, rel = four_queries()
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel)
    assert AverageQueryPrecision()(**arrays) == pytest.approx(0.5)
    qp = QueryPrecision()(**arrays)
    assert qp['q_id'].tolist() == [10, 20, 30, 40]
    assert qp['precision'].tolist() == [0.5, 1.0, 0.0, 0.5]
    assert QueryCount()(**arrays) == 4
    # P@2: 1/2, 2/2, 0/2, 1/2 -> 0.5
    assert PrecisionAtK(2)(**arrays) == pytest.approx(0.5)


def random_ranking(seed, n_queries=40, max_rows=12, string_ids=False, gaps=False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_rows + 1, n_queries)
    q = np.repeat(rng.choice(10 * n_queries, n_queries, replace=False), sizes)
    r = np.concatenate([np.sort(rng.choice(3 * s, s, replace=False)) if gaps else np.arange(s)
                        for s in sizes])
    rel = rng.integers(0, 4, len(q)) * (rng.random(len(q)) < 0.4)
    if string_ids:
        q = np.array([f'query-{x}' for x in q], dtype=object)
    order = rng.permutation(len(q))
    return q[order], r[order], rel[order]


def oracle_per_query(q, r, rel, k):
    """Plain Python per query (test oracle)."""
    out = {}
    for qid in set(q.tolist()):
        m = q == qid
        ranks, relevant = r[m], rel[m] > 0
        ap_terms = [relevant[ranks <= x].sum() / (x + 1) for x in ranks[relevant]]
        out[qid] = dict(n_returned=int(m.sum()), n_relevant=int(relevant.sum()),
                        p_at_k=relevant[ranks < k].sum() / k,
                        ap=float(np.mean(ap_terms)) if ap_terms else None)
    return out


@pytest.mark.parametrize('string_ids', [False, True])
@pytest.mark.parametrize('seed', [0, 1])
def test_query_precision_against_groupby(seed, string_ids):
    q, r, rel = random_ranking(seed, string_ids=string_ids, gaps=bool(seed))
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel)
    qp = QueryPrecision()(**arrays)
    # numpy group-by oracle
    u, inv = np.unique(q.astype(str) if string_ids else q, return_inverse=True)
    n_ret = np.bincount(inv)
    n_rel = np.bincount(inv, weights=rel > 0)
    assert [str(x) for x in qp['q_id']] == [str(x) for x in u]
    np.testing.assert_array_equal(qp['n_returned'], n_ret)
    np.testing.assert_array_equal(qp['n_relevant'], n_rel)
    np.testing.assert_allclose(qp['precision'], n_rel / n_ret)
    assert AverageQueryPrecision()(**arrays) == pytest.approx((n_rel / n_ret).mean())
    want = oracle_per_query(q, r, rel, 3)
    assert PrecisionAtK(3)(**arrays) == pytest.approx(
        np.mean([v['p_at_k'] for v in want.values()]))
    aps = [v['ap'] for v in want.values()]
    value, undefined = MeanAveragePrecision().evaluate(**arrays)
    assert undefined == sum(a is None for a in aps)
    assert value == pytest.approx(np.mean([a or 0.0 for a in aps]))
    assert MeanAveragePrecision(zero_division=1.0)(**arrays) == pytest.approx(
        np.mean([1.0 if a is None else a for a in aps]))


def test_average_precision_against_sklearn():
    q, r, rel = random_ranking(3, n_queries=30)
    per_query = []
    for qid in np.unique(q):
        m = q == qid
        if (rel[m] > 0).any():
            per_query.append(average_precision_score(rel[m] > 0, -r[m]))
        else:
            per_query.append(0.0)
    assert MeanAveragePrecision()(q_id=q, predicted_rank=r, truth_relevance=rel) == \
        pytest.approx(np.mean(per_query))


def test_ranking_input_errors():
    with pytest.raises(ValueError, match='duplicate'):
        AverageQueryPrecision()(q_id=[1, 1, 2], predicted_rank=[0, 0, 0],
                                truth_relevance=[1, 0, 1])
    with pytest.raises(ValueError, match='predicted_rank'):
        AverageQueryPrecision()(q_id=[1, 1], predicted_rank=[0, -1], truth_relevance=[1, 0])
    with pytest.raises(ValueError, match='truth_relevance'):
        AverageQueryPrecision()(q_id=[1, 1], predicted_rank=[0, 1],
                                truth_relevance=[1, float('nan')])
    with pytest.raises(ValueError, match='k must be'):
        PrecisionAtK(0)
    empty = dict(q_id=np.zeros(0, int), predicted_rank=np.zeros(0, int),
                 truth_relevance=np.zeros(0))
    assert AverageQueryPrecision().evaluate(**empty) == (0.0, 1)
    assert QueryCount()(**empty) == 0


def test_parameter_errors_name_the_parameter():
    # a transform names its parameter; the command line words it as a flag (for_cli)
    cases = [(lambda: PrecisionAtK(0), 'k'),
             (lambda: Precision(zero_division=2), 'zero_division'),
             (lambda: QueryStats(n_buckets=0), 'n_buckets'),
             (lambda: ComputeMetrics([QueryCount()], n_buckets=0), 'n_buckets'),
             (lambda: ParsePredictionLogs('regression'), 'task'),
             (lambda: ParsePredictionLogs('ranking', id_type='float'), 'id_type')]
    for make, name in cases:
        with pytest.raises(BeammlError) as e:
            make()
        assert e.value.parameters == (name,)
        assert str(e.value).startswith(f'{name} ') and '--' not in str(e.value)
        assert e.value.for_cli().startswith(f'--{name} ')
    ComputeMetrics([Precision()], n_buckets=0)  # no ranking step, nothing to check


def test_query_stats_drop_keeps_first():
    s = query_stats([1, 1, 1], [0, 0, 1], [1, 0, 0], ks=(1,), duplicates='drop')
    assert s['duplicates'] == 1
    assert s['n_returned'].tolist() == [2] and s['n_relevant'].tolist() == [1]


@pytest.mark.parametrize('zero_division', [0.0, float('nan')])
def test_per_query_metrics_against_oracle(zero_division):
    q, r, rel = random_ranking(9, n_queries=40, gaps=True)
    s = query_stats(q, r, rel, ks=(3,))
    want = oracle_per_query(q, r, rel, 3)
    for stats in (s, pa.RecordBatch.from_pydict({k: v for k, v in s.items()
                                                 if k != 'duplicates'})):
        got = per_query_metrics(stats, 3, zero_division)
        for i, qid in enumerate(s['q_id'].tolist()):
            v = want[qid]
            assert got['precision'][i] == pytest.approx(v['n_relevant'] / v['n_returned'])
            assert got['precision_at_k'][i] == pytest.approx(v['p_at_k'])
            assert got['average_precision'][i] == pytest.approx(
                zero_division if v['ap'] is None else v['ap'], nan_ok=True)
    # the per-query values are what the metrics average
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel)
    got = per_query_metrics(s, 3)
    assert got['precision'].mean() == pytest.approx(AverageQueryPrecision()(**arrays))
    assert got['precision_at_k'].mean() == pytest.approx(PrecisionAtK(3)(**arrays))
    assert got['average_precision'].mean() == pytest.approx(MeanAveragePrecision()(**arrays))


def test_parsers():
    rank, missing, invalid = parse_rank(pa.array(['3', ' 0 ', '2.0', '-1', 'x', None, '1.5']))
    assert rank[:3].tolist() == [3, 0, 2]
    assert invalid.tolist() == [False, False, False, True, True, False, True]
    assert missing.tolist() == [False] * 5 + [True, False]
    rel, missing, invalid = parse_relevance(pa.array(['2', 'true', 'F', 'nan', 'x', None]))
    assert rel[:3].tolist() == [2.0, 1.0, 0.0]
    assert invalid.tolist() == [False, False, False, True, True, False]
    ids, missing, invalid = parse_query_ids(pa.array(['7', 'q', None]), 'int64')
    assert ids[0].as_py() == 7 and invalid.tolist() == [False, True, False]
    ids, missing, invalid = parse_query_ids(pa.array([1.0, 2.5]), 'int64')
    assert invalid.tolist() == [False, True]
    ids, missing, invalid = parse_query_ids(pa.array(['a', ' ', None]), 'string')
    assert invalid.tolist() == [False, True, False] and missing.tolist() == [False, False, True]


def test_query_buckets_deterministic():
    ints = pa.array(np.arange(1000, dtype=np.int64))
    b = query_buckets(ints, 16)
    assert b.min() >= 0 and b.max() < 16 and len(np.unique(b)) == 16
    strings = pa.array([f'q{i}' for i in range(1000)] + ['', 'q5'])
    s = query_buckets(strings, 16)
    assert len(np.unique(s)) == 16 and s[5] == s[-1]
    # the bucket of a value does not depend on its neighbours (slices / other batches)
    np.testing.assert_array_equal(query_buckets(strings.slice(3, 10), 16), s[3:13])
    np.testing.assert_array_equal(query_buckets(ints.slice(3, 10), 16), b[3:13])


# ----------------------------------------------------------------------------- CombineFns

def split_batches(columns: dict, n_parts: int, seed=0):
    n = len(next(iter(columns.values())))
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), n_parts - 1,
                                                      replace=False))
    return [pa.RecordBatch.from_pydict({k: pa.array(np.asarray(v)[lo:hi])
                                        for k, v in columns.items()})
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n])]


def combine(fn, batches_per_acc, order=None):
    accs = []
    for batches in batches_per_acc:
        acc = fn.create_accumulator()
        for b in batches:
            acc = fn.add_input(acc, b)
        accs.append(acc)
    if order is not None:
        accs = [accs[i] for i in order]
    return fn.extract_output(fn.merge_accumulators(accs))


def test_classification_combine_fn_merge_order():
    t, p = random_logs(7, 300)
    model = np.random.default_rng(7).choice(['a', 'b', 'c'], 300)
    batches = split_batches({'truth': t.astype(bool), 'prediction': p.astype(bool),
                             'model': model}, 6)
    fn = MetricsCombineFn(classification_metrics(), slice_by=['model'])
    groups = [batches[:2], batches[2:3], [], batches[3:]]
    results = [combine(fn, groups, order) for order in itertools.permutations(range(4))]
    assert all(r == results[0] for r in results)
    got = results[0]
    for m in classification_metrics():
        assert got['overall'][m.name] == pytest.approx(m(truth=t, prediction=p)) \
            if m.name != 'confusion' else got['overall'][m.name] == m(truth=t, prediction=p)
        assert m.combine_fn().extract_output(
            combine_single(m.combine_fn(), batches)) == got['overall'][m.name]
    for key in ('a', 'b', 'c'):
        sel = model == key
        for m in classification_metrics():
            assert got['slices'][f'model={key}'][m.name] == m(truth=t[sel], prediction=p[sel])


def combine_single(fn, batches):
    acc = fn.create_accumulator()
    for b in batches:
        acc = fn.add_input(acc, b)
    return fn.merge_accumulators([fn.create_accumulator(), acc, fn.create_accumulator()])


def test_query_combine_fn_merge_order():
    q, r, rel = random_ranking(8, n_queries=60)
    s = query_stats(q, r, rel, ks=(3,))
    stats = {k: v for k, v in s.items() if k != 'duplicates'}
    batches = split_batches(stats, 5)
    metrics = [AverageQueryPrecision(), PrecisionAtK(3), MeanAveragePrecision(), QueryCount(),
               QueryPrecision()]
    fn = MetricsCombineFn(metrics)
    results = [combine(fn, [[b] for b in batches], order)
               for order in [range(5), [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]]]
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel)
    for res in results:
        for m in metrics[:4]:
            assert res['overall'][m.name] == pytest.approx(m(**arrays))
        np.testing.assert_allclose(res['overall']['query_precision']['precision'],
                                   QueryPrecision()(**arrays)['precision'])


def _accumulate(fn, batches):
    acc = fn.create_accumulator()
    for b in batches:
        acc = fn.add_input(acc, b)
    return acc


def assert_same_output(got, want):
    """Metric outputs equal: the same keys, counts and arrays, floats up to rounding."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for k in want:
            assert_same_output(got[k], want[k])
    elif isinstance(want, np.ndarray):
        if want.dtype.kind == 'f':
            np.testing.assert_allclose(got, want, rtol=1e-12)
        else:
            np.testing.assert_array_equal(got, want)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, nan_ok=True)
    else:
        assert got == want


def merge_contract_cases():
    """(CombineFn, batches of A, B, C): A holds slice a, B slices a and b, C b and c, so
    that B brings a merge slices the first accumulator does not have yet and C adds
    into them."""
    t, p = random_logs(31, 240)
    model = np.array(['a'] * 60 + ['a', 'b'] * 30 + ['b', 'c'] * 60)
    rows = {'truth': t.astype(bool), 'prediction': p.astype(bool), 'model': model}

    def batch(lo, hi):
        return pa.RecordBatch.from_pydict({k: v[lo:hi] for k, v in rows.items()})
    classification = (MetricsCombineFn(classification_metrics(), slice_by=['model']),
                      [batch(0, 30), batch(30, 60)], [batch(60, 120)],
                      [batch(120, 180), batch(180, 240)])
    q, r, rel = random_ranking(32, n_queries=60)
    stats = {k: v for k, v in query_stats(q, r, rel, ks=(3,)).items() if k != 'duplicates'}

    def stats_batch(lo, hi, key):
        cols = {'_slice': pa.array([key] * (hi - lo), pa.string())}
        cols.update({k: pa.array(v[lo:hi]) for k, v in stats.items()})
        return pa.RecordBatch.from_pydict(cols)
    ranking = (MetricsCombineFn([AverageQueryPrecision(), PrecisionAtK(3),
                                 MeanAveragePrecision(), QueryCount(), QueryPrecision()]),
               [stats_batch(0, 20, None), stats_batch(20, 30, 'model=a')],
               [stats_batch(30, 40, 'model=a'), stats_batch(40, 50, 'model=b'),
                stats_batch(0, 10, None)],
               [stats_batch(50, 60, 'model=b'), stats_batch(10, 20, 'model=c')])
    return {'classification': classification, 'ranking': ranking}


@pytest.mark.parametrize('first', ['empty', 'A'])
@pytest.mark.parametrize('case', ['classification', 'ranking'])
def test_merge_changes_only_the_first_accumulator(case, first):
    # Beam's CombineFn contract: merge_accumulators may modify and return only the first
    # accumulator (combiner lifting, retries and speculative merges reuse the others).
    fn, a, b, c = merge_contract_cases()[case]
    accs = [_accumulate(fn, a if first == 'A' else []), _accumulate(fn, b),
            _accumulate(fn, c)]
    before = [pickle.dumps(acc) for acc in accs[1:]]
    merged = fn.merge_accumulators(accs)
    assert [pickle.dumps(acc) for acc in accs[1:]] == before
    single = _accumulate(fn, (a if first == 'A' else []) + b + c)
    assert_same_output(fn.extract_output(merged), fn.extract_output(single))
    # adding to the merged accumulator does not reach into B or C either
    fn.extract_output(fn.add_input(merged, c[0]))
    assert [pickle.dumps(acc) for acc in accs[1:]] == before
    # B and C, unchanged, still merge to the same result (as on a retry)
    again = fn.merge_accumulators([fn.create_accumulator()] + accs[1:])
    assert_same_output(fn.extract_output(again),
                       fn.extract_output(_accumulate(fn, b + c)))


# ----------------------------------------------------------------------------- Beam

def _dump(element, directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, uuid.uuid4().hex), 'wb') as f:
        pickle.dump(element, f)


def _load(directory):
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), 'rb') as f:
            out.append(pickle.load(f))
    return out


def run_compute(tmp_path, batches, metrics, slice_by=None, n_buckets=4):
    """Run ComputeMetrics on the FnApiRunner; its outputs, collected through files."""
    d = tmp_path / uuid.uuid4().hex
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = (p | beam.Create(batches, reshuffle=False)
               | ComputeMetrics(metrics, slice_by, n_buckets=n_buckets))
        for name in ('metrics', 'errors', 'query_stats'):
            res[name] | f'Keep{name}' >> beam.Map(_dump, str(d / name))
    return {name: _load(str(d / name)) for name in ('metrics', 'errors', 'query_stats')}


def test_compute_metrics_one_pass_equals_one_by_one_with_slices(tmp_path):
    rng = np.random.default_rng(11)
    q, r, rel = random_ranking(11, n_queries=50)
    n = len(q)
    model = rng.choice(['a', 'b'], n)
    t, p = random_logs(11, n)
    cols = {'q_id': q, 'predicted_rank': r, 'truth_relevance': rel.astype(float),
            'truth': t.astype(bool), 'prediction': p.astype(bool), 'model': model,
            '_row': np.arange(n)}
    batches = split_batches(cols, 7)
    metrics = classification_metrics() + [AverageQueryPrecision(), PrecisionAtK(2),
                                          MeanAveragePrecision(), QueryCount()]
    out = run_compute(tmp_path, batches, metrics, ['model'])
    (got,) = out['metrics']
    assert out['errors'] == []
    arrays = dict(q_id=q, predicted_rank=r, truth_relevance=rel, truth=t, prediction=p)
    for m in metrics:
        assert got['overall'][m.name] == pytest.approx(m(**arrays)), m.name
        for key in ('a', 'b'):
            sel = model == key
            sub = {k: v[sel] for k, v in arrays.items()}
            assert got['slices'][f'model={key}'][m.name] == pytest.approx(m(**sub)), (m, key)
    # metric by metric, one pipeline each, gives the same values
    single = run_compute(tmp_path, batches, [AverageQueryPrecision()], ['model'])['metrics'][0]
    assert single['overall']['average_query_precision'] == \
        got['overall']['average_query_precision']
    assert single['slices']['model=b'] == {
        'average_query_precision': got['slices']['model=b']['average_query_precision'],
        'undefined': {'average_query_precision': 0}}


def test_compute_metrics_duplicates_across_batches(tmp_path):
    # query 1 is spread over three batches; rank 1 appears twice (rows 1 and 5)
    b1 = pa.RecordBatch.from_pydict({'q_id': [1, 1, 2], 'predicted_rank': [0, 1, 0],
                                     'truth_relevance': [1.0, 0.0, 1.0], '_row': [0, 1, 2]})
    b2 = pa.RecordBatch.from_pydict({'q_id': [2, 1], 'predicted_rank': [1, 2],
                                     'truth_relevance': [0.0, 1.0], '_row': [3, 4]})
    b3 = pa.RecordBatch.from_pydict({'q_id': [1], 'predicted_rank': [1],
                                     'truth_relevance': [1.0], '_row': [5]})
    out = run_compute(tmp_path, [b3, b1, b2], [AverageQueryPrecision(), MeanAveragePrecision(),
                                     QueryCount()], n_buckets=3)
    (got,) = out['metrics']
    (dead,) = out['errors']
    assert dead['row'] == 5 and 'duplicate' in dead['reason']
    assert dead['record'] == {'q_id': 1, 'predicted_rank': 1, 'relevant': True}
    # kept: q1 ranks 0,1,2 relevance 1,0,1 -> precision 2/3, AP (1 + 2/3) / 2; q2: 1/2, AP 1
    assert got['overall']['n_queries'] == 2
    assert got['overall']['average_query_precision'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got['overall']['mean_average_precision'] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_compute_metrics_empty_input(tmp_path):
    out = run_compute(tmp_path, [], classification_metrics() + [AverageQueryPrecision()])
    (got,) = out['metrics']
    assert got['overall']['precision'] == 0.0
    assert got['overall']['undefined']['precision'] == 1
    assert got['overall']['confusion'] == {'tp': 0, 'fp': 0, 'tn': 0, 'fn': 0}
    assert got['overall']['average_query_precision'] == 0.0
    assert got['slices'] == {}


def test_query_stats_string_ids_two_slice_columns_small_flushes(tmp_path):
    q, r, rel = random_ranking(12, n_queries=30, string_ids=True, gaps=True)
    n = len(q)
    rng = np.random.default_rng(12)
    model, country = rng.choice(['a', 'b'], n), rng.choice([1, 2], n)
    cols = {'q_id': q.astype(str), 'predicted_rank': r, 'truth_relevance': rel.astype(float),
            'model': model, 'country': country, '_row': np.arange(n)}
    batches = split_batches(cols, 5)
    d = tmp_path / 'stats'
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = (p | beam.Create(batches, reshuffle=False)
               | QueryStats(ks=(2,), slice_by=['model', 'country'], n_buckets=3, flush_rows=7))
        res.stats | 'KeepStats' >> beam.Map(_dump, str(d))
        res[ERRORS] | 'KeepErrors' >> beam.Map(_dump, str(tmp_path / 'errors'))
    assert _load(str(tmp_path / 'errors')) == []
    stats = pa.Table.from_batches(_load(str(d))).to_pylist()
    got = {(s['_slice'], s['q_id']): s for s in stats}
    keys = [None] + [f'model={m},country={c}' for m in 'ab' for c in (1, 2)]
    want = {}
    for key in keys:
        sel = np.ones(n, bool) if key is None else np.array(
            [f'model={m},country={c}' == key for m, c in zip(model, country)])
        for qid, v in oracle_per_query(q[sel], r[sel], rel[sel], 2).items():
            want[(key, qid)] = v
    assert set(got) == set(want)
    for k, v in want.items():
        s = got[k]
        assert (s['n_returned'], s['n_relevant']) == (v['n_returned'], v['n_relevant'])
        assert s['n_relevant_at_2'] / 2 == pytest.approx(v['p_at_k'])
        if v['ap'] is not None:
            assert s['ap_sum'] / s['n_relevant'] == pytest.approx(v['ap'])


def test_query_buckets_blocks():
    ints = pa.array(np.arange(-5000, 5000, 7, dtype=np.int64))
    b = query_buckets(ints, 16, block=1024)
    np.testing.assert_array_equal(b, query_buckets(pa.array(np.arange(-5000, 5000, 7) // 1024),
                                                   16))
    assert len(np.unique(b)) > 1
    strings = pa.array([f'q{i}' for i in range(100)])
    np.testing.assert_array_equal(query_buckets(strings, 16, block=1024),
                                  query_buckets(strings, 16))


@pytest.mark.parametrize('ids', ['dense', 'spread'])
@pytest.mark.parametrize('sorted_logs', [True, False])
def test_query_stats_int_ids_runs_and_shuffled_with_duplicates(tmp_path, ids, sorted_logs):
    # dense ids: a sorted batch is a few runs of one bucket (cut in place); spread ids or
    # shuffled rows: many runs (cut after a sort by bucket). Duplicates across batches.
    rng = np.random.default_rng(21)
    n_queries = 150
    qids = (3000 + 37 * np.arange(n_queries) if ids == 'dense'
            else rng.choice(10 ** 9, n_queries, replace=False) - 5 * 10 ** 8)
    sizes = rng.integers(1, 12, n_queries)
    q = np.repeat(qids, sizes)
    r = np.concatenate([np.arange(s) for s in sizes])
    rel = rng.integers(0, 3, len(q)) * (rng.random(len(q)) < 0.5)
    # repeated (q, rank) pairs with other relevances, later in the logs
    dup_src = rng.choice(len(q), 25, replace=False)
    q = np.r_[q, q[dup_src]]
    r = np.r_[r, r[dup_src]]
    rel = np.r_[rel, 2 - np.minimum(rel[dup_src], 2)]
    order = np.argsort(q, kind='stable') if sorted_logs else rng.permutation(len(q))
    q, r, rel = q[order], r[order], rel[order]
    n = len(q)
    cols = {'q_id': q, 'predicted_rank': r, 'truth_relevance': rel.astype(float),
            '_row': np.arange(n)}
    batches = split_batches(cols, 4)
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = (p | beam.Create(batches[::-1], reshuffle=False)
               | QueryStats(ks=(3,), n_buckets=5))
        res.stats | 'KeepStats' >> beam.Map(_dump, str(tmp_path / 'stats'))
        res[ERRORS] | 'KeepErrors' >> beam.Map(_dump, str(tmp_path / 'errors'))
    # oracle: the first row (by _row) of each (q, rank) pair is kept
    _, first = np.unique(np.stack([q, r], 1), axis=0, return_index=True)
    kept = np.zeros(n, bool)
    kept[first] = True
    errors = _load(str(tmp_path / 'errors'))
    assert sorted(e['row'] for e in errors) == np.flatnonzero(~kept).tolist()
    assert all('duplicate' in e['reason'] for e in errors)
    stats = pa.Table.from_batches(_load(str(tmp_path / 'stats'))).to_pylist()
    got = {s['q_id']: s for s in stats}
    want = oracle_per_query(q[kept], r[kept], rel[kept], 3)
    assert set(got) == set(want) == set(qids.tolist())
    for qid, v in want.items():
        s = got[qid]
        assert (s['n_returned'], s['n_relevant']) == (v['n_returned'], v['n_relevant'])
        assert s['n_relevant_at_3'] / 3 == pytest.approx(v['p_at_k'])
        if v['ap'] is not None:
            assert s['ap_sum'] / s['n_relevant'] == pytest.approx(v['ap'])
        else:
            assert s['n_relevant'] == 0


@pytest.mark.parametrize('case', ['sorted', 'shuffled', 'wide', 'one', 'strings', 'gaps'])
def test_fragment_encoding_round_trip(case):
    from beamml.transforms.metrics.ranking import _decode_part, _encode_part
    rng = np.random.default_rng(5)
    n = 1 if case == 'one' else 500
    q = np.sort(rng.integers(-40, 60, n))
    rank = np.concatenate([np.arange(c) for c in np.unique(q, return_counts=True)[1]])
    row = np.arange(1000, 1000 + n)
    if case == 'shuffled':
        perm = rng.permutation(n)
        q, rank, row = q[perm], rank[perm], row[perm]
    if case == 'wide':
        q = q * 2 ** 40
        row = rng.permutation(n) * 2 ** 35
    if case == 'gaps':
        rank = rank * 3 + 1
        row = np.arange(n) * 2
    relevant = rng.random(n) < 0.3
    qa = pa.array([f'q{x}' for x in q]) if case == 'strings' else q
    path, q2, rank2, rel2, row2, slices = _decode_part(pickle.loads(pickle.dumps(
        _encode_part('f', qa, rank, relevant, row, None))))
    assert path == 'f' and slices is None
    if case == 'strings':
        assert q2.to_pylist() == qa.to_pylist()
    else:
        np.testing.assert_array_equal(q2, q)
        assert q2.dtype == np.int64
    np.testing.assert_array_equal(rank2, rank)
    np.testing.assert_array_equal(rel2, relevant)
    np.testing.assert_array_equal(row2(), row)
    assert rank2.dtype == np.int64 and rel2.dtype == bool and row2().dtype == np.int64


def test_record_batch_coder_round_trip_and_registered():
    from beamml.transforms.io import RecordBatchCoder
    coder = beam.coders.registry.get_coder(pa.RecordBatch)
    assert isinstance(coder, RecordBatchCoder)
    batch = pa.RecordBatch.from_pydict({
        'q_id': pa.array([3, 1, None], pa.int64()), 'name': ['a', None, 'c'],
        '_file': pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()),
                                                pa.array(['f.parquet']))})
    for b in (batch, batch.slice(1, 2), batch.slice(0, 0)):
        got = coder.decode(coder.encode(b))
        assert got.equals(b) and got.schema == b.schema
    assert coder.estimate_size(batch) == batch.nbytes
    # through a shuffle on the FnApiRunner (values encoded with the coder)
    from typing import Tuple
    from apache_beam.testing.util import assert_that, equal_to
    with beam.Pipeline(runner='FnApiRunner') as p:
        out = (p | beam.Create([batch, batch.slice(1, 2)], reshuffle=False)
               | beam.Map(lambda b: (1, b)).with_output_types(Tuple[int, pa.RecordBatch])
               | beam.GroupByKey()
               | beam.Map(lambda kv: sorted(b.column('name').to_pylist()[-1] for b in kv[1])))
        assert_that(out, equal_to([['c', 'c']]))
