"""trec_eval's ranking measures, vectorised over queries (numpy and pyarrow only).

A *run* is rows ``(q_id, doc_id)`` in a rank order: by ``predicted_rank`` ascending, or,
as trec_eval orders a run file (it ignores the file's rank column), by ``score``
descending, ties broken by ``doc_id`` descending (byte order, C's ``strcmp``).
*Judgments* (qrels) are rows ``(q_id, doc_id, relevance)``; a returned document
without a judgment is not relevant and has no gain. With ``relevance_level`` l
(trec_eval's ``-l``, default 1) a judged document is relevant when its relevance is
>= l. Per query, with the run in rank order (position i = 0, 1, ... n_ret - 1),
``rel_i`` relevant or not, ``g_i`` the judged relevance (0 unjudged), ``R`` the
number of relevant judged documents (``num_rel``) and ``hits(k)`` the relevant
documents at positions < k:

=================  ===============================================================
trec_eval name     value
=================  ===============================================================
``P_k``            hits(k) / k
``recall_k``       hits(k) / R
``success_k``      1 if hits(k) > 0 else 0
``recip_rank``     1 / (i + 1) of the first relevant position i, else 0
``Rprec``          hits(R) / R
``map``            (1/R) sum over relevant positions i of hits(i + 1) / (i + 1)
``map_cut_k``      the same sum over relevant positions i < k, divided by R
``ndcg_cut_k``     DCG_k / IDCG_k, DCG_k = sum_{i<k, g_i>0} g_i / log2(i + 2), IDCG_k the
                   same over the judged gains > 0 of the query sorted descending
=================  ===============================================================

A 0/0 (``R = 0`` for recall, Rprec, map, map_cut; ``IDCG = 0`` for ndcg_cut) is 0, as
in trec_eval; ``ndcg_cut`` ignores ``relevance_level`` (gain = relevance), as
trec_eval does. Sums run in position order, as trec_eval's, so values agree with it
to the last bits.

Everything is vectorised over queries: rows sorted once by (query, rank order),
group starts, ``np.bincount`` segment sums; no loop per row or per query.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.metrics.kernels import _group_stats, _sort_dedup

__all__ = ['TREC_MEASURES', 'CUTOFF_MEASURES', 'measure_columns', 'parse_measures',
           'text_rank', 'rank_order', 'bucket_stats', 'judged_summary', 'query_measures', 'trec_measures']

#: measures with one value per query, and measures with one value per query and cutoff
SINGLE_MEASURES = ('map', 'recip_rank', 'Rprec')
CUTOFF_MEASURES = ('P', 'recall', 'success', 'map_cut', 'ndcg_cut')
TREC_MEASURES = SINGLE_MEASURES + CUTOFF_MEASURES
#: the measures whose 0/0 (no relevant judged document; ndcg: no positive gain) is 0
ZERO_WITHOUT_RELEVANT = ('recall', 'Rprec', 'map', 'map_cut')


def parse_measures(measures: Sequence[str]) -> tuple[str, ...]:
    """The measure names in :data:`TREC_MEASURES` order; ValueError for an unknown one."""
    unknown = [m for m in measures if m not in TREC_MEASURES]
    if unknown:
        raise ValueError(f'unknown ranking measure(s) {", ".join(unknown)}; one or more of '
                         f'{", ".join(TREC_MEASURES)}')
    return tuple(m for m in TREC_MEASURES if m in set(measures))


def measure_columns(measures: Sequence[str], cutoffs: Sequence[int]) -> list[str]:
    """trec_eval's names of the values: ``map``, ``P_5``, ``ndcg_cut_10``, ..."""
    out = []
    for m in parse_measures(measures):
        out.extend([f'{m}_{k}' for k in cutoffs] if m in CUTOFF_MEASURES else [m])
    return out


def _as_arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(values)


def text_rank(values) -> np.ndarray:
    """The dense rank of each value in byte order (C's strcmp, as trec_eval compares
    document ids; integers are compared as their text)."""
    arr = _as_arrow(values)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return pc.rank(arr, sort_keys='ascending', tiebreaker='dense').to_numpy().astype(np.int64)


def rank_order(group: np.ndarray, rank: np.ndarray | None = None,
               score: np.ndarray | None = None, doc_id=None,
               doc_rank: np.ndarray | None = None) -> np.ndarray:
    """The row order by ``(group, rank)``, or by ``(group, score desc, doc_id desc)``.

    ``doc_id`` (compared as trec_eval's strcmp: bytes), or its :func:`text_rank`
    ``doc_rank``, breaks ties in ``score``; give ``rank`` or ``score``.
    """
    if rank is not None:
        return np.lexsort((rank, group))
    if doc_rank is None:
        doc_rank = text_rank(doc_id)
    score = np.asarray(score, np.float64)
    n = len(group)
    if n < 2:
        return np.arange(n)
    # a run file in rank order (the usual one) needs no sort
    g0, g1, s0, s1 = group[:-1], group[1:], score[:-1], score[1:]
    if bool(((g1 > g0) | ((g1 == g0) & ((s1 < s0) | ((s1 == s0) & (doc_rank[1:] <
                                                                  doc_rank[:-1]))))).all()):
        return np.arange(n)
    # one int64 key (group, score rank desc, doc rank desc) when it fits: one sort
    uniq, s_rank = np.unique(score, return_inverse=True)
    n_s, n_d, n_g = len(uniq), int(doc_rank.max()) + 1, int(group.max()) + 1
    if n_g * n_s * n_d < 2 ** 62:
        key = (group.astype(np.int64) * n_s + (n_s - 1 - s_rank.reshape(-1))) * n_d + \
            (n_d - 1 - doc_rank)
        return np.argsort(key, kind='stable')
    return np.lexsort((-doc_rank, -score, group))


def _starts(group: np.ndarray) -> np.ndarray:
    """Whether each row of rows sorted by group starts a group."""
    new = np.empty(len(group), bool)
    if len(group):
        new[0] = True
        np.not_equal(group[1:], group[:-1], out=new[1:])
    return new


def _positions(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each row's group start, position of each row within its group) of rows
    sorted by group."""
    n = len(group)
    first = np.maximum.accumulate(np.where(_starts(group), np.arange(n), 0)) if n else \
        np.zeros(0, np.int64)
    return first, np.arange(n) - first


def judged_summary(group: np.ndarray, relevance: np.ndarray, n_groups: int,
                   relevance_level: float, cutoffs: Sequence[int] = (),
                   ideal: bool = True) -> dict[str, np.ndarray]:
    """Per group (``0 .. n_groups - 1``) of judgments: ``num_rel`` (relevance >=
    relevance_level), ``num_gain`` (relevance > 0) and, with ``ideal``, ``idcg_<k>``:
    the judged gains > 0 sorted descending, ``sum_{i<k} g_i / log2(i + 2)``."""
    relevance = np.asarray(relevance, np.float64)
    out = {'num_rel': np.bincount(group[relevance >= relevance_level],
                                  minlength=n_groups).astype(np.int64)}
    pos_gain = relevance > 0
    out['num_gain'] = np.bincount(group[pos_gain], minlength=n_groups).astype(np.int64)
    if ideal and cutoffs:
        g, gain = group[pos_gain], relevance[pos_gain]
        order = np.lexsort((-gain, g))
        g, gain = g[order], gain[order]
        _, pos = _positions(g)
        disc = gain / np.log2(pos + 2.0)
        for k in cutoffs:
            top = pos < k
            out[f'idcg_{k}'] = np.bincount(g[top], weights=disc[top], minlength=n_groups)
    return out


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (trec_eval's value of a 0/0)."""
    num = np.asarray(num, np.float64)
    out = np.zeros(len(num))
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


def query_measures(group: np.ndarray, relevance: np.ndarray, judged: np.ndarray,
                   summary: dict[str, np.ndarray], measures: Sequence[str],
                   cutoffs: Sequence[int], relevance_level: float) -> dict[str, np.ndarray]:
    """Every measure of every group, from run rows sorted by (group, rank order).

    Parameters
    ----------
    group : ndarray of shape (n_rows,), int, in ``[0, n_groups)``, sorted (rank order
        within a group)
    relevance : ndarray of shape (n_rows,), float; the judged relevance of each row
    judged : ndarray of shape (n_rows,), bool; False: not judged (not relevant, no gain)
    summary : :func:`judged_summary` of the groups' judgments (n_groups entries)

    Returns
    -------
    dict of ndarray of shape (n_groups,): ``num_ret``, ``num_rel_ret`` and each of
    :func:`measure_columns`.
    """
    measures = parse_measures(measures)
    num_rel = summary['num_rel']
    n_groups = len(num_rel)
    relevance = np.asarray(relevance, np.float64)
    rel = judged & (relevance >= relevance_level)
    _, pos = _positions(group)
    gid_rel, pos_rel = group[rel], pos[rel]
    # hits(i + 1) at each relevant position: 1, 2, ... within the group
    before = np.zeros(n_groups, np.int64)
    counts = np.bincount(gid_rel, minlength=n_groups)
    before[1:] = np.cumsum(counts)[:-1]
    within = np.arange(1, len(gid_rel) + 1) - before[gid_rel]
    out = {'num_ret': np.bincount(group, minlength=n_groups).astype(np.int64),
           'num_rel_ret': counts.astype(np.int64)}
    prec_at = within / (pos_rel + 1.0)   # precision at each relevant position
    if 'map' in measures:
        out['map'] = _divide(np.bincount(gid_rel, weights=prec_at, minlength=n_groups),
                             num_rel)
    if 'recip_rank' in measures:
        first = within == 1
        out['recip_rank'] = np.bincount(gid_rel[first], weights=1.0 / (pos_rel[first] + 1.0),
                                        minlength=n_groups)
    if 'Rprec' in measures:
        in_r = pos_rel < num_rel[gid_rel]
        out['Rprec'] = _divide(np.bincount(gid_rel[in_r], minlength=n_groups), num_rel)
    hits = {k: np.bincount(gid_rel[pos_rel < k], minlength=n_groups) for k in cutoffs}
    if 'P' in measures:
        for k in cutoffs:
            out[f'P_{k}'] = hits[k] / float(k)
    if 'recall' in measures:
        for k in cutoffs:
            out[f'recall_{k}'] = _divide(hits[k], num_rel)
    if 'success' in measures:
        for k in cutoffs:
            out[f'success_{k}'] = (hits[k] > 0).astype(np.float64)
    if 'map_cut' in measures:
        for k in cutoffs:
            top = pos_rel < k
            out[f'map_cut_{k}'] = _divide(np.bincount(gid_rel[top], weights=prec_at[top],
                                                      minlength=n_groups), num_rel)
    if 'ndcg_cut' in measures:
        gain = judged & (relevance > 0)
        g_gain, p_gain = group[gain], pos[gain]
        disc = relevance[gain] / np.log2(p_gain + 2.0)
        for k in cutoffs:
            top = p_gain < k
            dcg = np.bincount(g_gain[top], weights=disc[top], minlength=n_groups)
            out[f'ndcg_cut_{k}'] = _divide(dcg, summary[f'idcg_{k}'])
    return out


def _factorize(*arrays) -> tuple[list[np.ndarray], pa.Array]:
    """Dense codes of the values of several arrays over their union (compared as text
    when the types differ), and the unique values."""
    arrs = [_as_arrow(a) for a in arrays]
    if len({a.type for a in arrs}) > 1:
        arrs = [pc.cast(a, pa.string()) for a in arrs]
    enc = pa.chunked_array(arrs).combine_chunks().dictionary_encode() if arrs else None
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    bounds = np.cumsum([0] + [len(a) for a in arrs])
    return [codes[bounds[i]:bounds[i + 1]] for i in range(len(arrs))], enc.dictionary


def pair_codes(a: np.ndarray, b: np.ndarray, n_b: int) -> np.ndarray:
    """One int64 code per (a, b) pair of dense codes (b < n_b)."""
    return a.astype(np.int64) * max(int(n_b), 1) + b


def first_of_pairs(key: np.ndarray) -> np.ndarray:
    """Mask of the rows whose ``key`` did not occur in an earlier row."""
    order = np.argsort(key, kind='stable')
    ks = key[order]
    first = np.ones(len(key), bool)
    if len(key):
        first[order[1:]] = ks[1:] != ks[:-1]
    return first


def lookup(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray]:
    """(value, found) of each key in a table with unique keys (a sorted merge)."""
    order = np.argsort(table_keys, kind='stable')
    sk = table_keys[order]
    i = np.searchsorted(sk, keys)
    i_c = np.minimum(i, max(len(sk) - 1, 0))
    found = (i < len(sk)) & (sk[i_c] == keys) if len(sk) else np.zeros(len(keys), bool)
    values = np.where(found, np.asarray(table_values, np.float64)[order][i_c] if len(sk)
                      else 0.0, 0.0)
    return values, found


def trec_measures(q_id, doc_id, qrels_q_id, qrels_doc_id, qrels_relevance, *,
                  rank=None, score=None, measures: Sequence[str] = TREC_MEASURES,
                  cutoffs: Sequence[int] = (5, 10), relevance_level: float = 1,
                  complete: bool = False) -> dict:
    """trec_eval's measures of a run against judgments, per query (numpy arrays).

    Parameters
    ----------
    q_id, doc_id : array-like of shape (n_rows,): the run (unique (q_id, doc_id) pairs)
    qrels_q_id, qrels_doc_id, qrels_relevance : array-like of shape (n_judged,): the
        judgments (unique (q_id, doc_id) pairs)
    rank : array-like of shape (n_rows,), int, or ``score`` (trec_eval's order)
    complete : evaluate the judged queries without a returned row too (trec_eval's
        ``-c``: every value 0); by default only the queries both in the run and in
        the judgments are evaluated (trec_eval's and pytrec_eval's default)

    Returns
    -------
    dict: ``q_id`` (sorted), ``num_ret``, ``num_rel``, ``num_rel_ret``, each of
    :func:`measure_columns` (arrays of shape (n_queries,)), and ``unjudged_queries``
    (the run's queries without a judgment, not evaluated).
    """
    measures = parse_measures(measures)
    cutoffs = tuple(int(k) for k in cutoffs)
    (rq, jq), q_names = _factorize(q_id, qrels_q_id)
    (rd, jd), d_names = _factorize(doc_id, qrels_doc_id)
    run_key, j_key = pair_codes(rq, rd, len(d_names)), pair_codes(jq, jd, len(d_names))
    for key, what in ((run_key, 'run'), (j_key, 'judgments')):
        if not first_of_pairs(key).all():
            raise ValueError(f'the {what} repeat a (q_id, doc_id) pair')
    relevance = np.asarray(qrels_relevance, np.float64)
    rel, judged = lookup(run_key, j_key, relevance)
    n_q = len(q_names)
    in_run = np.bincount(rq, minlength=n_q) > 0
    in_qrels = np.bincount(jq, minlength=n_q) > 0
    evaluated = in_qrels if complete else in_run & in_qrels
    summary = judged_summary(jq, relevance, n_q, relevance_level, cutoffs,
                             'ndcg_cut' in measures)
    keep = evaluated[rq]
    order = rank_order(rq[keep], rank=None if rank is None else np.asarray(rank)[keep],
                       score=None if score is None else np.asarray(score)[keep],
                       doc_id=None if rank is not None else _as_arrow(doc_id).filter(
                           pa.array(keep)))
    g = rq[keep][order]
    values = query_measures(g, rel[keep][order], judged[keep][order], summary, measures,
                            cutoffs, relevance_level)
    which = np.flatnonzero(evaluated)
    ids = q_names.take(pa.array(which))
    by_id = pc.sort_indices(ids).to_numpy()
    out = {'q_id': ids.take(pa.array(by_id)).to_numpy(zero_copy_only=False)}
    out['num_rel'] = summary['num_rel'][which][by_id]
    out.update({k: v[which][by_id] for k, v in values.items()})
    out['unjudged_queries'] = int((in_run & ~in_qrels).sum())
    return out


# ----------------------------------------------------------------------------- one bucket

def _dedup(codes: np.ndarray, second: np.ndarray, origin: tuple) -> tuple[np.ndarray, ...]:
    """(keep mask, refused rows, the row kept for each) of repeated (codes, second) pairs;
    among the rows of a pair the smallest ``origin`` (file, row) is kept."""
    order, dup, first = _sort_dedup(codes, second, origin)
    keep = np.ones(len(codes), bool)
    if first is None or not dup.any():
        return keep, np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.flatnonzero(dup)
    keep[order[pos]] = False
    return keep, order[pos], order[first[pos]]


def bucket_stats(run: dict, judgments: dict | None, *, measures: Sequence[str],
                 cutoffs: Sequence[int], ks: Sequence[int] = (), relevance_level: float = 1,
                 complete: bool = False) -> dict:
    """Per-query statistics and measures of the rows of some whole queries.

    ``run``: ``q_id``, ``doc_id`` (optional without judgments), ``predicted_rank`` or
    ``score``, ``truth_relevance`` (the judgments when ``judgments`` is None), optional
    ``slice`` (pa.Array of slice keys) and ``origin`` (a tuple of int arrays, e.g. (file,
    row): among repeated rows the smallest is kept). ``judgments``: ``q_id, doc_id,
    relevance`` and optional ``origin``.

    A repeated (q_id, doc_id) pair of the run or of the judgments, and with
    ``predicted_rank`` a repeated (q_id, predicted_rank) pair, is refused. Evaluated
    queries: those of the run that have judgments (``complete``: every judged query);
    without judgments, every query of the run.

    Returns ``{'groups': [columns of the overall rows, of the slice rows], 'refused_run':
    (rows, kept rows), 'refused_judgments': (rows, kept rows), 'unjudged_queries': n}``;
    the columns are ``q_id`` (an Arrow array), ``slice`` (None for overall),
    ``n_returned, n_relevant, n_relevant_at_<k>, ap_sum`` (the legacy statistics: a row is
    relevant when its relevance is > 0, ranks are ``predicted_rank``, else positions),
    ``num_rel, num_rel_ret, num_gain`` and every :func:`measure_columns`.
    """
    measures = parse_measures(measures)
    cutoffs = tuple(int(k) for k in cutoffs)
    n = len(run['q_id'])
    by_score = 'score' in run
    has_doc = run.get('doc_id') is not None
    if judgments is not None:
        (rq, jq), q_names = _factorize(run['q_id'], judgments['q_id'])
        (rd, jd), d_names = _factorize(run['doc_id'], judgments['doc_id'])
    else:
        (rq,), q_names = _factorize(run['q_id'])
        rd = (_factorize(run['doc_id'])[0][0] if has_doc else None)
    origin = run.get('origin') or (np.arange(n),)
    keep = np.ones(n, bool)
    refused, kept = [], []
    if rd is not None:
        k1, r1, f1 = _dedup(rq, rd, origin)
        keep &= k1
        refused.append(r1), kept.append(f1)
    if not by_score:
        rank_all = np.asarray(run['predicted_rank'], np.int64)
        idx = np.flatnonzero(keep)
        k2, r2, f2 = _dedup(rq[idx], rank_all[idx], tuple(o[idx] for o in origin))
        keep[idx[~k2]] = False
        refused.append(idx[r2]), kept.append(idx[f2])
    out = {'refused_run': (np.concatenate(refused) if refused else np.zeros(0, np.int64),
                           np.concatenate(kept) if kept else np.zeros(0, np.int64)),
           'refused_judgments': (np.zeros(0, np.int64), np.zeros(0, np.int64))}
    n_q = len(q_names)
    if judgments is not None:
        j_origin = judgments.get('origin') or (np.arange(len(jq)),)
        jkeep, jr, jf = _dedup(jq, jd, j_origin)
        out['refused_judgments'] = (jr, jf)
        jq, jd = jq[jkeep], jd[jkeep]
        j_rel = np.asarray(judgments['relevance'], np.float64)[jkeep]
        rel, judged = lookup(pair_codes(rq, rd, len(d_names)), pair_codes(jq, jd, len(d_names)),
                             j_rel)
        in_qrels = np.bincount(jq, minlength=n_q) > 0
    else:
        rel = np.asarray(run['truth_relevance'], np.float64)
        judged = keep.copy()
        jq, j_rel = rq[keep], rel[keep]
        in_qrels = None
    in_run = np.bincount(rq[keep], minlength=n_q) > 0
    if in_qrels is None:
        in_qrels = in_run
    evaluated = in_qrels if complete else in_run & in_qrels
    out['unjudged_queries'] = int((in_run & ~in_qrels).sum())
    summary = judged_summary(jq, j_rel, n_q, relevance_level, cutoffs, 'ndcg_cut' in measures)
    rows = np.flatnonzero(keep & evaluated[rq])
    doc_rows = None
    if by_score:   # the byte order of the distinct ids, then of each row's
        names = d_names if judgments is not None else _factorize(run['doc_id'])[1]
        codes = rd if rd is not None else _factorize(run['doc_id'])[0][0]
        doc_rows = text_rank(names)[codes[rows]]
    score = np.asarray(run['score'], np.float64)[rows] if by_score else None
    rank = None if by_score else np.asarray(run['predicted_rank'], np.int64)[rows]
    groups = [_group_columns(rq[rows], np.flatnonzero(evaluated), n_q, rel[rows],
                             judged[rows], rank, score, doc_rows, summary, measures, cutoffs,
                             ks, relevance_level)]
    groups[0]['q_id'] = q_names.take(pa.array(groups[0].pop('q')))
    groups[0]['slice'] = None
    if run.get('slice') is not None:
        (sc,), s_names = _factorize(_as_arrow(run['slice']).take(pa.array(rows)))
        pair = pair_codes(sc, rq[rows], n_q)
        uniq, dense = np.unique(pair, return_inverse=True)
        q_of = uniq % max(n_q, 1)
        sub = {k: v[q_of] for k, v in summary.items()}
        g = _group_columns(dense.reshape(-1), np.arange(len(uniq)), len(uniq), rel[rows],
                           judged[rows], rank, score, doc_rows, sub, measures, cutoffs, ks,
                           relevance_level)
        g['q_id'] = q_names.take(pa.array(q_of[g.pop('q')]))
        g['slice'] = s_names.take(pa.array(uniq // max(n_q, 1)))
        groups.append(g)
    out['groups'] = groups
    return out


def _group_columns(group, which, n_groups, rel, judged, rank, score, doc_rank, summary,
                   measures, cutoffs, ks, relevance_level) -> dict:
    """The columns of the groups ``which`` (codes < n_groups) of rows in any order."""
    order = rank_order(group, rank=rank, score=score, doc_rank=doc_rank)
    g, rel_s, judged_s = group[order], rel[order], judged[order]
    values = query_measures(g, rel_s, judged_s, summary, measures, cutoffs, relevance_level)
    _, position = _positions(g)
    legacy_rank = position if rank is None else rank[order]
    legacy = _group_stats(g, legacy_rank, judged_s & (rel_s > 0), ks)
    out = {'q': which}
    present = legacy.pop('group')
    for name, v in legacy.items():
        full = np.zeros(n_groups, v.dtype)
        full[present] = v
        out[name] = full[which]
    out['num_rel'] = summary['num_rel'][which]
    out['num_gain'] = summary['num_gain'][which]
    out.update({k: v[which] for k, v in values.items() if k != 'num_ret'})
    return out
