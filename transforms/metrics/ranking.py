"""The ranking path in Beam: canonical ranking rows to per-query statistics (QueryStats).

Per-query values need all rows of a query together, and a query's rows may be
spread over batches and files. :class:`QueryStats` keys row fragments by a hash
bucket of ``q_id`` (of blocks of 1024 consecutive integer ids), packs them for the
shuffle, groups each bucket, sorts it by ``(q_id, predicted_rank)`` (no sort when it
arrives in that order, as logs sorted by query do) and reduces it to one row of
counts per query (vectorised, no loop per row). The sort is also where a duplicate
``(q_id, predicted_rank)`` pair is found, across batches and files: the first row in
(file, row) order is kept, the others become dead letters. The ranking metrics then
combine these per-query batches with small accumulators.
"""
from __future__ import annotations

import pickle
import posixpath
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters, dead_letter
from beamml.transforms.metrics.kernels import (_factorize, _group_stats, _query_codes, _sort_dedup,
                                               _strictly_increasing)
from beamml.transforms.metrics.logs import _batch_path
from beamml.transforms.metrics.parsing import SLICE_COLUMN, _np, slice_keys

__all__ = ['query_buckets', 'QueryStats']


# ----------------------------------------------------------------------------- buckets

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(31))
    h = h * _GOLDEN
    return h ^ (h >> np.uint64(29))


def _blocks(q: np.ndarray, block: int) -> np.ndarray:
    """q // block (a shift when block is a power of 2)."""
    if block & (block - 1) == 0:
        return q >> (block.bit_length() - 1)
    return q // block


def query_buckets(q_id: pa.Array, n_buckets: int, block: int = 1) -> np.ndarray:
    """A deterministic bucket in [0, n_buckets) for each query id (int64 or string).

    With ``block`` > 1, integer ids ``q // block`` share a bucket (the blocks are
    hashed), so logs sorted by query give a few long runs of one bucket; string
    ids are hashed one by one whatever ``block``.
    """
    n = len(q_id)
    if n_buckets == 1 or n == 0:
        return np.zeros(n, np.int64)
    if pa.types.is_integer(q_id.type):
        h = _np(pc.cast(q_id, pa.int64()))
        if block > 1:
            h = _blocks(h, block)
        h = h.view(np.uint64)
    else:
        s = pc.cast(q_id, pa.large_string())
        offsets = np.frombuffer(s.buffers()[1], np.int64)[s.offset:s.offset + n + 1]
        data = np.frombuffer(s.buffers()[2], np.uint8) if s.buffers()[2] else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        total = int(offsets[-1] - offsets[0])
        h = lengths.astype(np.uint64)
        if total:
            starts = offsets[:-1] - offsets[0]
            pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
            b = data[offsets[0]:offsets[-1]].astype(np.uint64)
            with np.errstate(over='ignore'):
                terms = b * ((pos.astype(np.uint64) * np.uint64(2) + np.uint64(1)) * _GOLDEN)
            nonempty = lengths > 0
            sums = np.add.reduceat(terms, starts[nonempty])
            h = h.copy()
            h[nonempty] += sums
    with np.errstate(over='ignore'):
        return (_mix(h) % np.uint64(n_buckets)).astype(np.int64)


# ----------------------------------------------------------------------------- fragment codec

def _pack(a: np.ndarray) -> tuple[int, np.ndarray]:
    """An integer array as (base, a - base) in the narrowest unsigned dtype that holds it."""
    if len(a) == 0:
        return 0, a
    lo, hi = int(a.min()), int(a.max())
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi - lo <= np.iinfo(dtype).max:
            return lo, (a - lo).astype(dtype)
    return 0, a


def _unpack(packed: tuple[int, np.ndarray]) -> np.ndarray:
    base, a = packed
    return a.astype(np.int64) + base if a.dtype != np.int64 else a


def _concat(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
    return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]


def _run_starts(q: np.ndarray) -> np.ndarray:
    """Start of each run of equal values."""
    if not len(q):
        return np.zeros(0, np.int64)
    change = np.flatnonzero(q[1:] != q[:-1])
    starts = np.empty(len(change) + 1, np.int64)
    starts[0] = 0
    np.add(change, 1, out=starts[1:])
    return starts


def _run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    lengths = np.empty_like(starts)
    if len(starts):
        np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
        lengths[-1] = n - starts[-1]
    return lengths


def _within_runs(q: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of ``q`` (runs start at ``starts``)."""
    n = len(q)
    starts = _run_starts(q) if starts is None else starts
    return np.arange(n) - np.repeat(starts, _run_lengths(starts, n))


def _enc_int(a: np.ndarray, starts: np.ndarray | None = None) -> tuple:
    """An integer array, compact: ('a', first) for first, first + 1, ...; ('r', values,
    lengths) for long runs of equal values (runs start at ``starts`` when given);
    else ('p', base, offsets) (see _pack)."""
    n = len(a)
    if n and int(a[-1]) - int(a[0]) == n - 1 and (n == 1 or bool((np.diff(a) == 1).all())):
        return ('a', int(a[0]))
    starts = _run_starts(a) if starts is None else starts
    if 4 * len(starts) <= n:
        return ('r', _pack(a[starts]), _pack(_run_lengths(starts, n)))
    return ('p',) + _pack(a)


def _dec_int(code: tuple, n: int) -> np.ndarray:
    if code[0] == 'a':
        return np.arange(code[1], code[1] + n, dtype=np.int64)
    if code[0] == 'r':
        return np.repeat(_unpack(code[1]), _unpack(code[2]))
    return _unpack(code[1:]).astype(np.int64, copy=False)


def _encode_part(path, q, rank, relevant, row, slices, line=None) -> tuple:
    """Rows of one batch for one bucket, compact: integer columns by _enc_int (logs
    sorted by query: q in runs, row and line numbers consecutive), ``rank`` ('w',)
    when it is 0, 1, 2, ... within each run of q (ranks listed in order), ``relevant``
    as bits; string ``q`` and ``slices`` (dictionary) stay Arrow Arrays. ``line``
    (physical lines, -1 where unknown) is None when no line is known (Parquet), else
    kept as ``line - row`` when every line is known (a few runs: the blank lines)."""
    n = len(rank)
    if isinstance(q, np.ndarray):
        starts = _run_starts(q)
        q_code = _enc_int(q, starts)
        r_code = (('w',) if np.array_equal(rank, _within_runs(q, starts)) else _enc_int(rank))
    else:
        q_code, r_code = q, _enc_int(rank)
    if line is None:
        l_code = None
    elif n and int(line.min()) >= 0:
        l_code = ('d', _enc_int(line - row))
    else:
        l_code = ('l', _enc_int(line))
    return (path, n, q_code, r_code, np.packbits(relevant), _enc_int(row), slices, l_code)


def _decode_part(part) -> tuple:
    """(path, q, rank, relevant, row function, slices) of an :func:`_encode_part`."""
    path, n, q_code, r_code, bits, row_code, slices = part[:7]
    q = _dec_int(q_code, n) if isinstance(q_code, tuple) else q_code
    rank = _within_runs(q) if r_code == ('w',) else _dec_int(r_code, n)
    relevant = np.unpackbits(bits, count=n).view(bool)
    return path, q, rank, relevant, (lambda: _dec_int(row_code, n)), slices


def _encode_fragment(parts) -> bytes:
    """Encoded parts (:func:`_encode_part`) of one bucket as bytes; Beam's shuffle
    copies these bytes without looking into them."""
    return pickle.dumps(parts, protocol=5)


def _decode_lines(part) -> np.ndarray:
    """The physical lines of an :func:`_encode_part`, -1 where unknown."""
    n, code = part[1], part[7]
    if code is None:
        return np.full(n, -1, np.int64)
    if code[0] == 'd':
        return _dec_int(code[1], n) + _dec_int(part[5], n)
    return _dec_int(code[1], n)


def _decode_fragments(fragments) -> tuple:
    """(segments [(path, n)], q, rank, relevant, row, line, slices list or None) of
    fragments.

    ``row`` and ``line`` are functions returning the row numbers and the physical
    lines, -1 where unknown (only needed for duplicates).
    """
    raw = [p for data in fragments for p in pickle.loads(data) if p[1]]
    if not raw:
        return None
    parts = [_decode_part(p) for p in raw]
    segments = [(p[0], len(p[2])) for p in parts]
    q = _concat([p[1] for p in parts])
    rank = _concat([p[2] for p in parts])
    relevant = _concat([p[3] for p in parts])

    def row():
        return _concat([p[4]() for p in parts])

    def line():
        return _concat([_decode_lines(p) for p in raw])
    slices = None if parts[0][5] is None else [p[5] for p in parts]
    return segments, q, rank, relevant, row, line, slices


# ----------------------------------------------------------------------------- Beam

class _KeyByQueryBucketFn(beam.DoFn):
    """Split canonical ranking batches into (bucket, fragment bytes) by a hash of q_id.

    In the global window, a bundle's rows are buffered per bucket and sent as one
    fragment per bucket at the end of the bundle (or when ``flush_rows`` rows are
    buffered), so the shuffle moves a few large elements rather than
    batches x buckets small ones.
    """

    # Integer ids are bucketed by blocks of QUERY_BLOCK consecutive ids (see
    # query_buckets): a batch of logs sorted by query then holds a few runs of one
    # bucket, cut without a sort, and each bucket receives its queries in order.
    QUERY_BLOCK = 1024

    def __init__(self, n_buckets: int, slice_by: Sequence[str], flush_rows: int = 1 << 22):
        self.n_buckets, self.slice_by = n_buckets, tuple(slice_by)
        self.flush_rows = flush_rows
        self.block = self.QUERY_BLOCK
        self.max_runs = max(64, 2 * n_buckets)

    def start_bundle(self):
        self._parts: dict[int, list] = {}
        self._buffered = 0

    def _flush(self):
        parts, self._parts, self._buffered = self._parts, {}, 0
        for b, ps in parts.items():  # a loop over buckets
            yield b, _encode_fragment(ps)

    def process(self, batch, window=beam.DoFn.WindowParam):
        n = batch.num_rows
        if n == 0:
            return
        path = _batch_path(batch)
        q_col = batch.column('q_id')
        q = _np(q_col) if pa.types.is_integer(q_col.type) else q_col
        rank = _np(batch.column('predicted_rank'))
        relevant = _np(batch.column('truth_relevance')) > 0
        row = (_np(batch.column('_row')) if '_row' in batch.schema.names
               else np.full(n, -1, np.int64))
        line = None
        if '_line' in batch.schema.names:
            col = batch.column('_line')
            if col.null_count < len(col):  # all null: a binary format
                line = _np(pc.fill_null(col, -1))
        slices = (slice_keys(batch, self.slice_by).dictionary_encode() if self.slice_by
                  else None)

        def part(lo, hi, take=None):
            """The packed rows lo:hi (of the batch, or of its rows ``take``)."""
            idx = slice(lo, hi) if take is None else take[lo:hi]
            rs, rel, rw = rank[idx], relevant[idx], row[idx]
            ln = None if line is None else line[idx]
            qs = q[idx] if isinstance(q, np.ndarray) else None
            arrow_rows = None
            if not isinstance(q, np.ndarray) or slices is not None:
                # a pickled Arrow slice would carry the whole batch's buffers: copy
                arrow_rows = pa.array(np.arange(lo, hi) if take is None else take[lo:hi])
            return _encode_part(path, qs if isinstance(q, np.ndarray) else q.take(arrow_rows),
                                rs, rel, rw, None if slices is None else slices.take(arrow_rows),
                                ln)

        starts = (_run_starts(_blocks(q, self.block)) if isinstance(q, np.ndarray)
                  else None)
        if starts is not None and len(starts) <= self.max_runs:
            # logs sorted by query: a few runs of one id block each (hence of one
            # bucket), sliced in place; the bucket of a run is that of its first id
            run_bucket = query_buckets(pa.array(q[starts]), self.n_buckets, self.block)
            ends = starts + _run_lengths(starts, n)
            split = [(int(b), part(lo, hi)) for b, lo, hi in
                     zip(run_bucket, starts, ends)]  # a loop over runs
        else:
            bucket = query_buckets(q_col, self.n_buckets, self.block)
            counts = np.bincount(bucket, minlength=self.n_buckets)
            order = np.argsort(bucket.astype(np.uint16 if self.n_buckets < 65536
                                             else np.int64), kind='stable')
            bounds = np.r_[0, np.cumsum(counts)]
            split = [(int(b), part(bounds[b], bounds[b + 1], order))
                     for b in np.flatnonzero(counts)]  # a loop over buckets, not rows
        if not isinstance(window, GlobalWindow):
            for b, p in split:
                yield b, _encode_fragment([p])
            return
        for b, p in split:
            self._parts.setdefault(b, []).append(p)
        self._buffered += n
        if self._buffered >= self.flush_rows:
            yield from self._flush()

    def finish_bundle(self):
        for kv in self._flush():
            yield GlobalWindows.windowed_value(kv)


class _QueryStatsFn(beam.DoFn):
    """All fragments of one bucket -> per-query statistics (overall and per slice)."""

    def __init__(self, ks: Sequence[int]):
        self.ks = tuple(ks)
        self.counters = RecordCounters()

    def process(self, element):
        decoded = _decode_fragments(element[1])
        if decoded is None:
            return
        segments, q, rank, relevant, row, line, slices = decoded
        codes, uniques = _query_codes(q)
        if _strictly_increasing(codes, rank):
            keep = None  # already in (q_id, rank) order without a repeated pair
        else:
            row = row()
            paths = sorted({p for p, _ in segments if p is not None})
            file_rank = {p: i for i, p in enumerate(paths)}
            file_idx = np.repeat(np.array([file_rank.get(p, -1) for p, _ in segments],
                                          np.int64), [m for _, m in segments])
            order, dup, first = _sort_dedup(codes, rank, (file_idx, row))
            if dup.any():
                yield from self._dead_letters(order, dup, first, paths, file_idx, row,
                                              line(), q, rank, relevant)
            keep = order[~dup]
            codes, rank, relevant = codes[keep], rank[keep], relevant[keep]
        out = [self._stats(_group_stats(codes, rank, relevant, self.ks), uniques, None, 0)]
        if slices is not None:
            sl = pa.concat_arrays([a.dictionary_decode() for a in slices])
            s_codes, s_names = _factorize(sl)
            if keep is not None:
                s_codes = s_codes[keep]
            by_slice = np.argsort(s_codes, kind='stable')  # keeps (q, rank) order within
            ncodes = int(codes.max()) + 1 if len(codes) else 1
            group = s_codes[by_slice] * ncodes + codes[by_slice]
            out.append(self._stats(_group_stats(group, rank[by_slice], relevant[by_slice],
                                                self.ks), uniques, s_names, ncodes))
        for b in out:
            if b.num_rows:
                yield b

    def _stats(self, s, uniques, slice_names, ncodes) -> pa.RecordBatch:
        group = s.pop('group')
        if slice_names is None:
            sl = pa.nulls(len(group), pa.string())
            code = group
        else:
            sl = slice_names.take(pa.array(group // ncodes))
            code = group % ncodes
        q = pa.array(code + uniques) if isinstance(uniques, int) else uniques.take(
            pa.array(code))
        cols = {SLICE_COLUMN: sl, 'q_id': q}
        cols.update({k: pa.array(v) for k, v in s.items()})
        return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))

    def _dead_letters(self, order, dup, first, paths, file_idx, row, line, q, rank,
                      relevant):
        pos = np.flatnonzero(dup)
        rows_dup, rows_kept = order[pos], order[first[pos]]
        self.counters.refuse_accepted(len(pos))
        for i, j in zip(rows_dup, rows_kept):  # a loop over refused rows only
            path = paths[file_idx[i]] if file_idx[i] >= 0 else None
            kept = (f'{posixpath.basename(paths[file_idx[j]])}:' if file_idx[j] >= 0 else
                    'row ') + str(int(row[j]))
            yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                path, int(row[i]) if row[i] >= 0 else None,
                int(line[i]) if line[i] >= 0 else None,
                f'duplicate (q_id, predicted_rank) pair; the row kept is {kept}',
                {'q_id': q[int(i)].item() if isinstance(q, np.ndarray) else q[int(i)].as_py(),
                 'predicted_rank': int(rank[i]), 'relevant': bool(relevant[i])}))


def _check_n_buckets(n_buckets: int) -> None:
    if n_buckets < 1:
        raise BeammlError(f'n_buckets must be >= 1, got {n_buckets}', parameters=('n_buckets',))


class QueryStats(beam.PTransform):
    """Canonical ranking rows -> per-query statistics batches, plus dead letters.

    Rows are keyed by a hash bucket of ``q_id`` (``n_buckets`` keys, the
    parallelism of this step; integer ids by blocks of
    ``_KeyByQueryBucketFn.QUERY_BLOCK`` consecutive ids, so that a batch of logs
    sorted by query is cut into a few slices without a sort), so all rows of a
    query meet in one group whatever batch or file they came from; each group is
    sorted by ``(q_id, predicted_rank)`` unless already in that order, and
    reduced with numpy. Output ``stats`` batches have
    columns ``_slice`` (null for the overall rows, else the slice key),
    ``q_id, n_returned, n_relevant, n_relevant_at_<k>..., ap_sum``; ``errors``
    holds a dead letter for each repeated (q_id, predicted_rank) row.

    Rows travel packed (logs sorted by query with ranks 0, 1, 2...: about one
    bit per row plus a few bytes per query; else about 3-20 bytes per row, see
    :func:`_encode_part`); a bundle buffers at most
    ``flush_rows`` of them before sending. The grouped step holds one bucket's
    rows in memory (about 60 bytes per row while it sorts), so raise ``n_buckets``
    with the data. Meant for the global window (batch).
    """

    def __init__(self, ks: Sequence[int] = (), slice_by: Sequence[str] = (),
                 n_buckets: int = 32, flush_rows: int = 1 << 22, label: str | None = None):
        super().__init__(label)
        _check_n_buckets(n_buckets)
        self.ks = tuple(sorted(set(ks)))
        self.slice_by, self.n_buckets = tuple(slice_by or ()), n_buckets
        self.flush_rows = flush_rows

    def expand(self, rows):
        return (rows
                | 'KeyByQueryBucket' >> beam.ParDo(
                    _KeyByQueryBucketFn(self.n_buckets, self.slice_by, self.flush_rows))
                | 'GroupQueryBuckets' >> beam.GroupByKey()
                | 'ReduceQueries' >> beam.ParDo(_QueryStatsFn(self.ks))
                .with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='stats'))
