"""Runs joined with judgments (qrels) in Beam: canonical rows, a keyed join by query
bucket, and trec_eval's measures per query (:mod:`~beamml.transforms.metrics.ranking_measures`).

Run rows and judgment rows are keyed by the same hash bucket of ``q_id``
(:func:`~beamml.transforms.metrics.ranking.query_buckets`), so a ``CoGroupByKey``
brings every row and every judgment of a query together, whatever file or batch they
came from; inside a bucket the ``(q_id, doc_id)`` pairs are matched by a sorted merge
(numpy), repeated pairs found and refused, and each query reduced to one row of
statistics and measures. Without judgments the run's own ``truth_relevance`` is the
judgment of each returned row (the same path, one input).
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import ERRORS, RecordCounters, dead_letter
from beamml.transforms.io import RowReasons
from beamml.transforms.metrics.parsing import (SLICE_COLUMN, _np, parse_query_ids, parse_rank,
                                               parse_relevance, slice_keys)
from beamml.transforms.metrics.ranking import _check_n_buckets, query_buckets
from beamml.transforms.metrics.ranking_measures import bucket_stats, parse_measures

__all__ = ['CanonicalRows', 'JudgedQueryStats', 'StreamingJudgedQueryStats', 'LatestJudgments',
           'read_judgments', 'UNJUDGED']

#: the tagged output of JudgedQueryStats: per bucket, the run's queries without judgments
UNJUDGED = 'unjudged'
_SOURCE = ('_file', '_row', '_line')


# ----------------------------------------------------------------------------- parsing

def _kind_parse(kind: str, values, id_type: str):
    """(values, missing, invalid, what a bad value is not) of one column."""
    if kind in ('id', 'doc'):
        id_type = id_type if kind == 'id' else 'string'
        v, missing, invalid = parse_query_ids(values, id_type)
        return v, missing, invalid, ('an integer' if id_type == 'int64' else 'a non-empty id')
    if kind == 'rank':
        v, missing, invalid = parse_rank(values)
        return pa.array(v), missing, invalid, 'an integer >= 0'
    v, missing, invalid = parse_relevance(values)
    if kind == 'score' and pa.types.is_boolean(values.type):
        invalid = invalid | ~missing
    return pa.array(v), missing, invalid, 'a finite number'


class _CanonicalFn(beam.DoFn):
    """Batches with the files' own columns -> canonical typed columns, bad rows refused."""

    def __init__(self, spec: Sequence[tuple[str, str, str]], slice_by: Sequence[str],
                 id_type: str):
        self.spec, self.slice_by, self.id_type = tuple(spec), tuple(slice_by), id_type
        self.counters = RecordCounters()

    def process(self, batch):
        n = batch.num_rows
        if n == 0:
            return
        names = batch.schema.names
        why = RowReasons(n)
        out = {}
        for name, column, kind in self.spec:
            values = batch.column(column) if column in names else pa.nulls(n)
            v, missing, invalid, what = _kind_parse(kind, values, self.id_type)
            why.mark(missing, f'missing {name} ({column!r})')
            why.mark(invalid, f'{name} ({column!r}) is not {what}')
            out[name] = v
        if self.slice_by:
            for c in self.slice_by:   # a JSON lines block without the key: null
                if c not in batch.schema.names:
                    batch = batch.append_column(c, pa.nulls(n, pa.string()))
            out['_slice_key'] = slice_keys(batch, self.slice_by)
        for c in _SOURCE:
            if c in names:
                out[c] = batch.column(c)
        parsed = pa.RecordBatch.from_arrays(list(out.values()), names=list(out))
        if why.refused.any():
            rows = _np(batch.column('_row')) if '_row' in names else None
            lines = (_np(batch.column('_line').fill_null(-1)) if '_line' in names else None)
            keep_cols = [c for c in names if c not in _SOURCE]
            path = batch.column('_file')[0].as_py() if '_file' in names else None
            dead = why.dead_letters(batch.select(keep_cols), path, rows,
                                    None if lines is None else np.where(lines < 0, None, lines))
            for letter in dead:
                yield beam.pvalue.TaggedOutput(ERRORS, letter)
            self.counters.refuse_accepted(len(dead))
            keep = np.flatnonzero(~why.refused)
            if not len(keep):
                return
            parsed = parsed.take(pa.array(keep))
        yield parsed


class CanonicalRows(beam.PTransform):
    """Table batches -> canonical rows: ``spec`` is ``(name, column, kind)`` triples (kind
    ``id`` (q_id: int64 or string, ``id_type``), ``doc`` (text), ``rank``, ``score`` or
    ``relevance``); ``slice_by`` columns become one ``_slice_key``; source columns kept.
    Outputs ``rows`` and ``errors``."""

    def __init__(self, spec, slice_by: Sequence[str] = (), id_type: str = 'string',
                 label: str | None = None):
        super().__init__(label)
        self.spec, self.slice_by, self.id_type = list(spec), tuple(slice_by), id_type

    def expand(self, batches):
        fn = _CanonicalFn(self.spec, self.slice_by, self.id_type)
        return batches | 'CanonicalRows' >> beam.ParDo(fn).with_output_types(
            pa.RecordBatch).with_outputs(ERRORS, main='rows')


# ----------------------------------------------------------------------------- the join

class _BucketRowsFn(beam.DoFn):
    """(bucket of q_id, the batch's rows of that bucket) for each bucket of a batch.

    What crosses the shuffle is kept small: a TREC file's rank (never read: the run is
    ordered by score) is left out, the file path, string query ids and slice keys are
    dictionary-encoded, row and line numbers int32 when they fit."""

    def __init__(self, n_buckets: int):
        self.n_buckets = n_buckets

    def process(self, batch):
        if batch.num_rows == 0:
            return
        if 'rank' in batch.schema.names:
            batch = batch.drop_columns(['rank'])
        for name in ('_file', 'q_id', '_slice_key'):   # repeated strings: dictionaries
            i = batch.schema.get_field_index(name)
            if i >= 0 and not pa.types.is_integer(batch.schema.field(i).type) and \
                    not pa.types.is_dictionary(batch.schema.field(i).type):
                batch = batch.set_column(i, name, batch.column(i).dictionary_encode())
        for name in ('_row', '_line'):   # int32 when they fit
            i = batch.schema.get_field_index(name)
            if i >= 0 and batch.num_rows:
                col = batch.column(i)
                hi = pc.max(col).as_py()
                if hi is not None and hi < 2 ** 31 and pa.types.is_int64(col.type):
                    batch = batch.set_column(i, name, col.cast(pa.int32()))
        bucket = query_buckets(batch.column('q_id'), self.n_buckets)
        order = np.argsort(bucket, kind='stable')
        bounds = np.r_[0, np.cumsum(np.bincount(bucket, minlength=self.n_buckets))]
        for b in np.flatnonzero(bounds[1:] > bounds[:-1]):   # a loop over buckets
            yield int(b), batch.take(pa.array(order[bounds[b]:bounds[b + 1]]))


def _table(batches) -> pa.Table | None:
    """One table of a bucket's batches, the dictionaries of :class:`_BucketRowsFn` (but
    the file's) decoded."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return None
    t = pa.Table.from_batches(batches).combine_chunks()
    for i, f in enumerate(t.schema):
        if f.name != '_file' and pa.types.is_dictionary(f.type):
            t = t.set_column(i, f.name, pa.chunked_array(
                [c.dictionary_decode() for c in t.column(i).chunks], f.type.value_type))
    return t


def _column(t: pa.Table, name: str):
    col = t.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _origin(t: pa.Table) -> tuple[list, np.ndarray, np.ndarray]:
    """(sorted paths, file index, row) of each row (index -1 / row -1 unknown)."""
    n = t.num_rows
    if '_file' not in t.schema.names:
        return [], np.full(n, -1, np.int64), np.arange(n, dtype=np.int64)
    files = _column(t, '_file').dictionary_encode()
    names = files.dictionary.to_pylist()
    paths = sorted(p for p in names if p is not None)
    rank = np.array([paths.index(p) if p is not None else -1 for p in names] or [0], np.int64)
    idx = rank[_np(files.indices.fill_null(0)).astype(np.int64)] if n else np.zeros(0, np.int64)
    return paths, idx, _np(_column(t, '_row').fill_null(-1)).astype(np.int64)


class _JudgedStatsFn(beam.DoFn):
    """One bucket's run rows and judgments -> per-query statistics batches."""

    def __init__(self, measures, cutoffs, ks, relevance_level, complete, order):
        self.kw = dict(measures=tuple(measures), cutoffs=tuple(cutoffs), ks=tuple(ks),
                       relevance_level=relevance_level, complete=complete)
        self.order = order
        self.counters = RecordCounters()

    def process(self, element):
        _, grouped = element
        run_t = _table(grouped.get('run', ()))
        judg_t = _table(grouped.get('qrels', ()))
        if run_t is None and judg_t is None:
            return
        if judg_t is None and 'qrels' in grouped:   # a bucket of queries without judgments
            q_type = run_t.schema.field('q_id').type
            judg_t = pa.table({'q_id': pa.array([], q_type), 'doc_id': pa.array([], pa.string()),
                               'relevance': pa.array([], pa.float64())})
        run_t = run_t if run_t is not None else self._empty_run(judg_t)
        paths, file_idx, row = _origin(run_t)
        run = {'q_id': _column(run_t, 'q_id'), 'origin': (file_idx, row)}
        for c in ('doc_id', 'predicted_rank', 'score', 'truth_relevance'):
            if c in run_t.schema.names and (c != 'score' or self.order == 'score') and (
                    c != 'predicted_rank' or self.order == 'rank'):
                run[c] = _column(run_t, c)
        if '_slice_key' in run_t.schema.names:
            run['slice'] = _column(run_t, '_slice_key')
        judgments = None
        if judg_t is not None:
            j_paths, j_file, j_row = _origin(judg_t)
            judgments = {'q_id': _column(judg_t, 'q_id'), 'doc_id': _column(judg_t, 'doc_id'),
                         'relevance': _column(judg_t, 'relevance'), 'origin': (j_file, j_row)}
        res = bucket_stats(run, judgments, **self.kw)
        yield from self._refused(run_t, run, res['refused_run'], paths)
        if judgments is not None:
            yield from self._refused(judg_t, judgments, res['refused_judgments'], j_paths)
        if res['unjudged_queries']:
            yield beam.pvalue.TaggedOutput(UNJUDGED, res['unjudged_queries'])
        for g in res['groups']:
            if len(g['q_id']):
                yield _stats_batch(g)

    def _empty_run(self, judg_t):
        cols = {'q_id': pa.array([], judg_t.schema.field('q_id').type),
                'doc_id': pa.array([], pa.string())}
        cols['score' if self.order == 'score' else 'predicted_rank'] = pa.array(
            [], pa.float64() if self.order == 'score' else pa.int64())
        return pa.table(cols)

    def _refused(self, t, rows, refused, paths):
        bad, kept = refused
        if not len(bad):
            return
        self.counters.refuse_accepted(len(bad))
        file_idx, row = rows['origin']
        lines = (_np(_column(t, '_line').fill_null(-1)) if '_line' in t.schema.names
                 else np.full(t.num_rows, -1))
        doc = _column(t, 'doc_id') if 'doc_id' in rows else None
        record_cols = [c for c in t.schema.names if not c.startswith('_')]
        for i, j in zip(bad, kept):   # a loop over refused rows only
            what = ('(q_id, doc_id)' if doc is not None and doc[int(i)] == doc[int(j)]
                    else '(q_id, predicted_rank)')
            where = (f'{paths[file_idx[j]].rsplit("/", 1)[-1]}:' if file_idx[j] >= 0
                     else 'row ') + str(int(row[j]))
            yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                paths[file_idx[i]] if file_idx[i] >= 0 else None,
                int(row[i]) if row[i] >= 0 else None, int(lines[i]) if lines[i] >= 0 else None,
                f'duplicate {what} pair; the row kept is {where}',
                {c: t.column(c)[int(i)].as_py() for c in record_cols}))


def _stats_batch(g: dict) -> pa.RecordBatch:
    cols = {SLICE_COLUMN: (pa.nulls(len(g['q_id']), pa.string()) if g['slice'] is None
                           else g['slice'].cast(pa.string())),
            'q_id': g['q_id']}
    cols.update({k: pa.array(v) for k, v in g.items() if k not in ('q_id', 'slice')})
    return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))


class JudgedQueryStats(beam.PTransform):
    """Canonical run rows (and judgment rows) -> per-query statistics and measures.

    ``rows`` batches: ``q_id``, ``doc_id`` (needed with judgments, or with scores),
    ``predicted_rank`` (``order='rank'``) or ``score`` (``order='score'``: trec_eval's
    order, score descending then doc_id descending), ``truth_relevance`` (without
    judgments), optional ``_slice_key`` and source columns. ``judgments`` batches:
    ``q_id, doc_id, relevance`` (+ source columns); q_id of the same type as the run's.
    Outputs: ``stats`` (one row per evaluated query and per (slice, query): the columns
    of :func:`~beamml.transforms.metrics.ranking_measures.bucket_stats` and ``_slice``),
    ``errors`` (dead letters of repeated pairs) and ``unjudged`` (counts of the run's
    queries without judgments, not evaluated).
    """

    def __init__(self, judgments=None, *, measures: Sequence[str] = (),
                 cutoffs: Sequence[int] = (), ks: Sequence[int] = (),
                 relevance_level: float = 1, complete: bool = False, order: str = 'rank',
                 n_buckets: int = 32, label: str | None = None):
        super().__init__(label)
        _check_n_buckets(n_buckets)
        if order not in ('rank', 'score'):
            raise ValueError(f"order must be 'rank' or 'score', got {order!r}")
        self.judgments, self.measures = judgments, parse_measures(measures)
        self.cutoffs, self.ks = tuple(sorted(set(cutoffs))), tuple(sorted(set(ks)))
        self.relevance_level, self.complete = relevance_level, complete
        self.order, self.n_buckets = order, n_buckets

    def expand(self, rows):
        keyed = {'run': rows | 'BucketRunRows' >> beam.ParDo(_BucketRowsFn(self.n_buckets))}
        if self.judgments is not None:
            keyed['qrels'] = self.judgments | 'BucketJudgments' >> beam.ParDo(
                _BucketRowsFn(self.n_buckets))
        return (keyed
                | 'JoinByQueryBucket' >> beam.CoGroupByKey()
                | 'ReduceJudgedQueries' >> beam.ParDo(_JudgedStatsFn(
                    self.measures, self.cutoffs, self.ks, self.relevance_level,
                    self.complete, self.order))
                .with_output_types(pa.RecordBatch)
                .with_outputs(ERRORS, UNJUDGED, main='stats'))


# ----------------------------------------------------------------------------- streaming

def read_judgments(pattern: str, fmt: str) -> tuple[pa.Table, list[str]]:
    """Every judgment of the files of ``pattern`` (``fmt`` 'trec', 'csv', 'jsonl' or
    'parquet') in this process: (table ``q_id`` (text), ``doc_id``, ``relevance``, the
    first of each repeated (q_id, doc_id) pair in file/line order; the reasons of the
    refused lines)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    from beamml.transforms.core.objects import open_file
    from beamml.transforms.io import match_input
    from beamml.transforms.metrics.ranking_measures import _factorize, first_of_pairs, pair_codes
    from beamml.transforms.metrics.trec import read_trec_file
    parts, refused = [], []
    for path, _ in match_input(pattern):
        if fmt == 'trec':
            for batch, dead, _ in read_trec_file(path, 'qrels'):
                parts.append(pa.table({c: batch.column(c) for c in QRELS}))
                refused += [f'{path}:{d["line"]}: {d["reason"]}' for d in dead]
            continue
        with open_file(path) as f:
            data = f.read()
        reader = {'csv': pcsv.read_csv, 'jsonl': pjson.read_json,
                  'parquet': pq.read_table}[fmt]
        t = reader(pa.py_buffer(data) if fmt != 'parquet' else pa.BufferReader(data))
        why = RowReasons(t.num_rows)
        cols = {}
        for name, kind in zip(QRELS, ('id', 'doc', 'relevance')):
            values = (t.column(name).combine_chunks() if name in t.column_names
                      else pa.nulls(t.num_rows))
            v, missing, invalid, what = _kind_parse(kind, values, 'string')
            why.mark(missing | invalid, f'{name} is missing or not {what}')
            cols[name] = v
        keep = ~why.refused
        refused += [f'{path}: row {i}: {why.texts[why.code[i]]}'
                    for i in np.flatnonzero(~keep)]   # a loop over refused rows only
        parts.append(pa.table(cols).filter(pa.array(keep)))
    table = (pa.concat_tables(parts) if parts else
             pa.table({'q_id': pa.array([], pa.string()), 'doc_id': pa.array([], pa.string()),
                       'relevance': pa.array([], pa.float64())}))
    (q,), _ = _factorize(table.column('q_id'))
    (d,), names = _factorize(table.column('doc_id'))
    first = first_of_pairs(pair_codes(q, d, len(names)))
    if not first.all():
        refused.append(f'{int((~first).sum())} repeated (q_id, doc_id) judgment(s) left out')
        table = table.filter(pa.array(first))
    return table, refused


QRELS = ('q_id', 'doc_id', 'relevance')


class LatestJudgments:
    """The judgments of a pattern, read again when its files change (looked at at most
    every ``refresh_seconds``), split by query bucket: as ``assign --streaming`` looks
    for a new model. A look that fails keeps the judgments in use."""

    def __init__(self, pattern: str, fmt: str, refresh_seconds: float, n_buckets: int,
                 clock=None):
        import time
        self.pattern, self.fmt, self.refresh_seconds = pattern, fmt, refresh_seconds
        self.n_buckets, self.clock = n_buckets, clock or time.monotonic
        self.files, self.by_bucket, self._looked = None, None, -float('inf')

    def _load(self, files):
        import logging
        table, refused = read_judgments(self.pattern, self.fmt)
        bucket = query_buckets(table.column('q_id').combine_chunks(), self.n_buckets)
        order = np.argsort(bucket, kind='stable')
        bounds = np.r_[0, np.cumsum(np.bincount(bucket, minlength=self.n_buckets))]
        self.by_bucket = {int(b): table.take(pa.array(order[bounds[b]:bounds[b + 1]]))
                          for b in range(self.n_buckets)}
        self.files = files
        log = logging.getLogger('beamml')
        log.info('judgments: %d from %s', table.num_rows, self.pattern)
        if refused:
            log.warning('judgments: %d line(s) of %s left out, e.g. %s', len(refused),
                        self.pattern, refused[0])

    def get(self, bucket: int) -> pa.Table:
        from apache_beam.io.filesystems import FileSystems

        from beamml.transforms.io import match_input
        now = self.clock()
        if self.by_bucket is None or now - self._looked >= self.refresh_seconds:
            self._looked = now
            try:
                files = [(p, size, m.last_updated_in_seconds) for (p, size) in
                         match_input(self.pattern) for m in
                         FileSystems.match([p])[0].metadata_list[:1]]
                if files != self.files:
                    self._load(files)
            except Exception:   # keep the judgments in use (none yet: fail loudly)
                if self.by_bucket is None:
                    raise
        return self.by_bucket[bucket]


class _StreamJudgedStatsFn(_JudgedStatsFn):
    """:class:`_JudgedStatsFn` with the judgments of each bucket from
    :class:`LatestJudgments` (read by each worker), not from a join."""
    _LOOKUPS: dict = {}

    def __init__(self, pattern, fmt, refresh_seconds, n_buckets, *args):
        super().__init__(*args)
        self.lookup_key = (pattern, fmt, refresh_seconds, n_buckets)

    def setup(self):
        self.latest = self._LOOKUPS.get(self.lookup_key)
        if self.latest is None:
            self.latest = self._LOOKUPS[self.lookup_key] = LatestJudgments(*self.lookup_key)

    def process(self, element):
        bucket, batches = element
        judged = self.latest.get(bucket)
        yield from super().process((bucket, {'run': batches, 'qrels': judged.to_batches()}))


class StreamingJudgedQueryStats(JudgedQueryStats):
    """:class:`JudgedQueryStats` per window, the judgments read from ``pattern`` by each
    worker and read again when the files change (``refresh_seconds``), not joined: they
    must fit in a worker's memory."""

    def __init__(self, pattern: str, fmt: str, refresh_seconds: float = 60.0, **kwargs):
        super().__init__(None, **kwargs)
        self.pattern, self.fmt, self.refresh_seconds = pattern, fmt, refresh_seconds

    def expand(self, rows):
        return (rows
                | 'BucketRunRows' >> beam.ParDo(_BucketRowsFn(self.n_buckets))
                | 'GroupQueryBuckets' >> beam.GroupByKey()
                | 'ReduceJudgedQueries' >> beam.ParDo(_StreamJudgedStatsFn(
                    self.pattern, self.fmt, self.refresh_seconds, self.n_buckets,
                    self.measures, self.cutoffs, self.ks, self.relevance_level,
                    self.complete, self.order))
                .with_output_types(pa.RecordBatch)
                .with_outputs(ERRORS, UNJUDGED, main='stats'))
