"""trec_eval's measures (transforms/metrics/ranking_measures.py) against pytrec_eval itself,
per query and overall, on generated runs: ties in score, graded and negative relevance,
documents judged but never returned, returned but never judged, queries without a relevant
document, queries only in the run or only in the judgments, every relevance level."""
import numpy as np
import pytest

pytrec_eval = pytest.importorskip('pytrec_eval')

from beamml.transforms.metrics.ranking_measures import (TREC_MEASURES, measure_columns,  # noqa: E402
                                                        trec_measures)

CUTOFFS = (1, 2, 3, 5, 10, 100)


def generated(seed, n_queries=40, max_docs=30, n_docs=60, score_levels=4):
    """(run rows, qrels rows): random docs per query, scores from few levels (ties)."""
    rng = np.random.default_rng(seed)
    run, qrels = [], []
    for q in range(n_queries):
        qid = f'q{q}'
        docs = rng.choice(n_docs, size=rng.integers(1, max_docs + 1), replace=False)
        scores = rng.integers(0, score_levels, len(docs)) / 2.0 - 0.5
        run += [(qid, f'd{d}', float(s)) for d, s in zip(docs, scores)]
        judged = rng.choice(n_docs, size=rng.integers(0, 25), replace=False)
        if q % 7 == 3:
            rels = np.zeros(len(judged), int)          # judged, none relevant
        else:
            rels = rng.choice([-1, 0, 0, 1, 2, 3], len(judged))
        qrels += [(qid, f'd{d}', int(r)) for d, r in zip(judged, rels)]
    # a query only in the run, one only in the judgments
    run += [('only_run', 'd1', 1.0), ('only_run', 'd2', 0.0)]
    qrels += [('only_qrels', 'd1', 1)]
    return run, qrels


def oracle(run, qrels, level, measures, cutoffs):
    qd, rd = {}, {}
    for q, d, r in qrels:
        qd.setdefault(q, {})[d] = int(r)
    for q, d, s in run:
        rd.setdefault(q, {})[d] = float(s)
    names = {m if m not in ('P', 'recall', 'success', 'map_cut', 'ndcg_cut')
             else f'{m}.{",".join(map(str, cutoffs))}' for m in measures}
    names |= {'num_rel', 'num_ret'}
    return pytrec_eval.RelevanceEvaluator(qd, names, relevance_level=level).evaluate(rd)


def columns(rows):
    return [np.array([r[i] for r in rows]) for i in range(3)]


@pytest.mark.parametrize('seed,level', [(0, 1), (1, 1), (2, 2), (3, 1), (4, 3)])
def test_equal_to_pytrec_eval_per_query_and_overall(seed, level):
    run, qrels = generated(seed)
    rq, rd, rs = columns(run)
    jq, jd, jr = columns(qrels)
    got = trec_measures(rq, rd, jq, jd, jr, score=rs, cutoffs=CUTOFFS, relevance_level=level)
    want = oracle(run, qrels, level, TREC_MEASURES, CUTOFFS)
    assert sorted(want) == list(got['q_id'])
    assert got['unjudged_queries'] == len({q for q, _, _ in run} - {q for q, _, _ in qrels})
    worst = 0.0
    for name in measure_columns(TREC_MEASURES, CUTOFFS):
        ref = np.array([want[q][name] for q in got['q_id']])
        worst = max(worst, float(np.max(np.abs(got[name] - ref))))
        assert abs(got[name].mean() - ref.mean()) <= 1e-12, name
    assert worst <= 1e-12
    assert [want[q]['num_rel'] for q in got['q_id']] == list(got['num_rel'])
    assert [want[q]['num_ret'] for q in got['q_id']] == list(got['num_ret'])


def test_ties_are_broken_by_doc_id_descending_as_trec_eval():
    run = [('q', d, 1.0) for d in ('a', 'b', 'c', 'B', 'ab')] + [('q', 'z', 2.0)]
    for relevant in ('a', 'b', 'c', 'B', 'ab', 'z'):
        qrels = [('q', relevant, 1)]
        got = trec_measures(*columns(run)[:2], *columns(qrels), score=columns(run)[2],
                            measures=['recip_rank'], cutoffs=())
        want = oracle(run, qrels, 1, ['recip_rank'], ())
        assert got['recip_rank'][0] == want['q']['recip_rank'], relevant


def test_ranks_given_order_the_run():
    rng = np.random.default_rng(5)
    run, qrels = generated(5, score_levels=1000)
    rq, rd, rs = columns(run)
    # the same order as the scores, as ranks: 0 = highest score (no tie among 1000 levels
    # is not guaranteed, so rank by (score desc, doc desc), as trec_eval orders)
    order = np.lexsort((-np.unique(rd, return_inverse=True)[1], -rs, rq))
    rank = np.empty(len(rq), np.int64)
    rank[order] = np.arange(len(rq))
    perm = rng.permutation(len(rq))
    jq, jd, jr = columns(qrels)
    a = trec_measures(rq, rd, jq, jd, jr, score=rs, cutoffs=CUTOFFS)
    b = trec_measures(rq[perm], rd[perm], jq, jd, jr, rank=rank[perm], cutoffs=CUTOFFS)
    for name in measure_columns(TREC_MEASURES, CUTOFFS):
        np.testing.assert_array_equal(a[name], b[name])


def test_complete_counts_judged_queries_without_rows_as_zero():
    run, qrels = generated(6)
    got = trec_measures(*columns(run)[:2], *columns(qrels), score=columns(run)[2],
                        cutoffs=(5,), complete=True)
    assert 'only_qrels' in got['q_id'] and 'only_run' not in got['q_id']
    i = list(got['q_id']).index('only_qrels')
    assert got['num_ret'][i] == 0 and got['map'][i] == 0 and got['ndcg_cut_5'][i] == 0


def test_one_row_and_repeated_pairs():
    got = trec_measures(['q'], ['d'], ['q'], ['d'], [2], score=[0.0], cutoffs=(1,))
    assert got['ndcg_cut_1'][0] == 1.0 and got['map'][0] == 1.0
    with pytest.raises(ValueError, match='repeat'):
        trec_measures(['q', 'q'], ['d', 'd'], ['q'], ['d'], [1], score=[1.0, 0.0])
    with pytest.raises(ValueError, match='unknown ranking measure'):
        trec_measures(['q'], ['d'], ['q'], ['d'], [1], score=[0.0], measures=['ndcg'])


def test_bucket_stats_equal_pytrec_eval_with_slices_and_refuse_repeats():
    from beamml.transforms.metrics.ranking_measures import bucket_stats
    run, qrels = generated(7)
    rq, rd, rs = columns(run)
    jq, jd, jr = columns(qrels)
    # repeated pairs: a run row and a judgment again, later in (file, row) order
    rq2, rd2, rs2 = np.r_[rq, rq[:1]], np.r_[rd, rd[:1]], np.r_[rs, [9.0]]
    jq2, jd2, jr2 = np.r_[jq, jq[:1]], np.r_[jd, jd[:1]], np.r_[jr, [3]]
    model = np.array(['m' + str(int(q[1:]) % 2) if q[0] == 'q' else 'mx' for q in rq2])
    got = bucket_stats({'q_id': rq2, 'doc_id': rd2, 'score': rs2, 'slice': model,
                        'origin': (np.zeros(len(rq2), np.int64), np.arange(len(rq2)))},
                       {'q_id': jq2, 'doc_id': jd2, 'relevance': jr2},
                       measures=TREC_MEASURES, cutoffs=CUTOFFS, ks=(5,), relevance_level=1)
    assert list(got['refused_run'][0]) == [len(rq)] and list(got['refused_run'][1]) == [0]
    assert list(got['refused_judgments'][0]) == [len(jq)]
    want = oracle(run, qrels, 1, TREC_MEASURES, CUTOFFS)
    overall, sliced = got['groups']
    ids = overall['q_id'].to_pylist()
    assert sorted(ids) == sorted(want)
    for name in measure_columns(TREC_MEASURES, CUTOFFS):
        ref = np.array([want[q][name] for q in ids])
        assert np.max(np.abs(overall[name] - ref)) <= 1e-12, name
        # slices partition the queries here: each (slice, query) row is the query's row
        sref = np.array([want[q][name] for q in sliced['q_id'].to_pylist()])
        assert np.max(np.abs(sliced[name] - sref)) <= 1e-12, name
    assert set(sliced['slice'].to_pylist()) == {'m0', 'm1'}


def test_bucket_stats_from_the_logs_own_relevance_keep_the_legacy_statistics():
    from beamml.transforms.metrics import query_stats
    from beamml.transforms.metrics.ranking_measures import bucket_stats
    rng = np.random.default_rng(8)
    n = 500
    q = rng.integers(0, 40, n)
    rank = rng.permutation(n)            # unique ranks with gaps within a query
    rel = rng.choice([0, 0, 1, 2, 3], n).astype(float)
    got = bucket_stats({'q_id': q, 'predicted_rank': rank, 'truth_relevance': rel},
                       None, measures=TREC_MEASURES, cutoffs=CUTOFFS, ks=(5,))
    overall = got['groups'][0]
    legacy = query_stats(q, rank, rel, (5,))
    by = np.argsort(overall['q_id'].to_numpy())
    for name in ('n_returned', 'n_relevant', 'n_relevant_at_5', 'ap_sum'):
        np.testing.assert_allclose(overall[name][by], legacy[name], rtol=0, atol=1e-12)
    # the trec_eval measures: the log's rows are the judgments, ranks order the run
    docs = np.arange(n).astype(str)
    ref = trec_measures(q.astype(str), docs, q.astype(str), docs, rel, rank=rank,
                        cutoffs=CUTOFFS)
    mine = dict(zip(overall['q_id'].to_numpy().astype(str), range(len(by))))
    for name in measure_columns(TREC_MEASURES, CUTOFFS):
        np.testing.assert_allclose([overall[name][mine[x]] for x in ref['q_id']], ref[name],
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize('n_levels', [3, 1000])
def test_a_run_already_in_trec_eval_order_and_any_order_agree(n_levels):
    from beamml.transforms.metrics.ranking_measures import rank_order, text_rank
    run, qrels = generated(9, score_levels=n_levels)
    rq, rd, rs = columns(run)
    codes = np.unique(rq, return_inverse=True)[1]
    dr = text_rank(rd)
    want = np.lexsort((-dr, -rs, codes))             # trec_eval's order, by a plain lexsort
    np.testing.assert_array_equal(rank_order(codes, score=rs, doc_rank=dr), want)
    sorted_ = rank_order(codes[want], score=rs[want], doc_rank=dr[want])
    np.testing.assert_array_equal(sorted_, np.arange(len(want)))   # no sort needed
    jq, jd, jr = columns(qrels)
    a = trec_measures(rq[want], rd[want], jq, jd, jr, score=rs[want], cutoffs=CUTOFFS)
    ref = oracle(run, qrels, 1, TREC_MEASURES, CUTOFFS)
    for name in measure_columns(TREC_MEASURES, CUTOFFS):
        assert np.max(np.abs(a[name] - [ref[q][name] for q in a['q_id']])) <= 1e-12


@pytest.mark.parametrize('block_bytes', [7, 64, 1 << 20])
def test_trec_files_read_the_same_by_blocks_fast_or_not(tmp_path, block_bytes):
    from beamml.transforms.metrics.trec import read_trec_file
    lines = ['301 Q0 d1 1 2.5 run', '301\tQ0  d2 2 2.5 run\r', '', '  302 Q0 d3 1 -1e3 run  ',
             '302 Q0 d4 x 1 run', '302 Q0 d5 1 nan run', '303 Q0 d6 1', '303 Q0 d7 0 inf run',
             '303 Q0 d8 3 0.25 run']
    path = tmp_path / 'run.txt'
    path.write_text('\n'.join(lines))          # no newline at the end
    got, dead, n = [], [], 0
    for batch, d, m in read_trec_file(str(path), 'run', block_bytes=block_bytes):
        got += list(zip(*[batch.column(c).to_pylist() for c in
                          ('q_id', 'doc_id', 'rank', 'score', '_line')]))
        dead += [(x['line'], x['reason'], x['record']) for x in d]
        n += m
    assert n == 8   # the blank line is no record
    assert got == [('301', 'd1', 1, 2.5, 1), ('301', 'd2', 2, 2.5, 2),
                   ('302', 'd3', 1, -1000.0, 4), ('303', 'd8', 3, 0.25, 9)]
    assert dead == [(5, 'rank is not an integer >= 0', '302 Q0 d4 x 1 run'),
                    (6, 'score is not a finite number', '302 Q0 d5 1 nan run'),
                    (7, 'a TREC run line has 6 fields (q_id Q0 doc_id rank score tag)',
                     '303 Q0 d6 1'),
                    (8, 'score is not a finite number', '303 Q0 d7 0 inf run')]


def test_the_fast_block_reader_equals_the_general_one():
    from beamml.transforms.metrics.trec import _fast_block, _lines, parse_trec_lines
    rng = np.random.default_rng(10)
    block = ''.join(f'{q}{" " if q % 2 else chr(9)}Q0 D{d}  {r} {s} tag\r\n' for q, d, r, s in
                    zip(rng.integers(0, 50, 300), rng.integers(0, 10 ** 6, 300),
                        rng.integers(0, 1000, 300), rng.normal(size=300).round(4))).encode()
    fast = _fast_block(block, 'run')
    assert fast is not None
    text, _, not_utf8 = _lines(block)
    slow, why = parse_trec_lines(text, 'run', not_utf8)
    assert not why.refused.any() and not fast[1].refused.any() and fast[2] == len(text)
    for c in ('q_id', 'doc_id', 'rank', 'score'):
        assert fast[0][c].to_pylist() == slow[c].to_pylist(), c
    assert _fast_block(block + b'\n', 'run') is None   # a blank line: the general path
