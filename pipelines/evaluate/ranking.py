"""``beamml evaluate --task ranking`` with trec_eval's measures: judgments (``--qrels``),
TREC run files, several cutoffs, relevance levels (issue 22, part 1).

The path is taken when ``--qrels``, ``--run_format trec``, ``--score_column`` or one of
trec_eval's measures in ``--metrics`` is given (:func:`wanted`); otherwise ``evaluate``
runs exactly as before. The run's rows and the judgments meet in a keyed join by query
bucket (:class:`~beamml.transforms.metrics.qrels.JudgedQueryStats`); each query becomes
one row of statistics and measures; the overall values are means of those rows.
"""
from __future__ import annotations

import logging

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform.flags import declare_layout
from beamml.pipelines._platform.runners import is_dry_run
from beamml.pipelines.evaluate import classification
from beamml.transforms.core.documents import to_jsonable, write_json
from beamml.transforms.core.errors import ERRORS, BeammlError
from beamml.transforms.io import ReadTable, WriteDeadLetters, WriteTable
from beamml.transforms.metrics import RANKING_METRICS, SLICE_COLUMN, MetricsCombineFn
from beamml.transforms.metrics.definitions import PrecisionAtK, per_query_metrics
from beamml.transforms.metrics.qrels import (UNJUDGED, CanonicalRows, JudgedQueryStats,
                                             StreamingJudgedQueryStats)
from beamml.transforms.metrics.ranking_measures import TREC_MEASURES, measure_columns
from beamml.transforms.metrics.trec import ReadTrecFiles
from beamml.transforms.metrics.trec_metrics import trec_metrics

LOG = logging.getLogger('beamml')
#: --zero_division's values (evaluate's own table; this module does not import its package)
ZERO_DIVISION = {'0': 0.0, '1': 1.0, 'nan': float('nan')}
QRELS_FORMATS = ('auto', 'trec', 'csv', 'jsonl', 'parquet')
_TABLE_EXTENSIONS = {'.csv': 'csv', '.jsonl': 'jsonl', '.json': 'jsonl', '.parquet': 'parquet'}
#: the columns of a table of judgments
QRELS_COLUMNS = ('q_id', 'doc_id', 'relevance')


def add_args(parser) -> None:
    """The flags of trec_eval's measures (``--task ranking``)."""
    g = parser.add_argument_group('ranking with judgments (trec_eval measures)')
    g.add_argument('--qrels', default=None, metavar='PATH',
                   help='judgments: a TREC qrels file "q_id iteration doc_id relevance" or a '
                        'table with columns q_id, doc_id, relevance (file, glob or gs://); '
                        'relevance then comes from here, joined by (q_id, doc_id)')
    g.add_argument('--qrels_format', choices=QRELS_FORMATS, default='auto',
                   help='format of --qrels (default auto: .csv/.jsonl/.json/.parquet are '
                        'tables, anything else TREC qrels text)')
    g.add_argument('--run_format', choices=('table', 'trec'), default='table',
                   help='--input is a table of logs (default) or TREC run files "q_id Q0 '
                        'doc_id rank score tag" (ranked by score, as trec_eval)')
    g.add_argument('--doc_column', default='doc_id',
                   help='the document id column of a table run (default doc_id); needed '
                        'with --qrels or --score_column')
    # --score_column (rank a table run by a score): evaluate's own flag, shared with
    # classification
    g.add_argument('--cutoffs', default='5,10', metavar='K,K,...',
                   help='cutoffs of P, recall, success, map_cut, ndcg_cut (default 5,10)')
    g.add_argument('--relevance_level', type=float, default=1.0,
                   help='a judged document is relevant when its relevance is >= this '
                        "(trec_eval's -l; default 1; ndcg_cut's gain is the relevance itself)")
    g.add_argument('--qrels_refresh_seconds', type=float, default=60.0,
                   help='with --streaming: each worker reads --qrels again when its files '
                        'change, looking at most this often (default 60)')
    g.add_argument('--complete', action='store_true',
                   help="also evaluate judged queries the run has no row for, every value 0 "
                        "(trec_eval's -c); default: only queries in both")


def _split(value) -> list[str]:
    return [v.strip() for v in (value or '').split(',') if v.strip()]


#: the flags of this path (dest: its default); given on --task classification, refused
RANKING_ONLY = {'qrels': None, 'qrels_format': 'auto', 'run_format': 'table',
                'doc_column': 'doc_id', 'cutoffs': '5,10', 'relevance_level': 1.0,
                'qrels_refresh_seconds': 60.0, 'complete': False}


def check_task(args) -> None:
    """These flags are for --task ranking: a classification run with one (other than its
    default) is an error, not a flag silently ignored."""
    if args.task != 'ranking':
        given = [f'--{k}' for k, default in RANKING_ONLY.items()
                 if getattr(args, k, default) != default]
        if given:
            raise BeammlError(f'{", ".join(given)}: for --task ranking only')


def wanted(args) -> bool:
    """Whether these flags take the trec_eval path."""
    return args.task == 'ranking' and bool(
        args.qrels or args.run_format == 'trec' or args.score_column
        or set(_split(args.metrics)) & set(TREC_MEASURES))


def cutoffs(args) -> tuple[int, ...]:
    try:
        ks = sorted({int(k) for k in _split(args.cutoffs)})
    except ValueError:
        ks = [0]
    if not ks or ks[0] < 1:
        raise BeammlError(f'--cutoffs must be integers >= 1 separated by commas, got '
                          f'{args.cutoffs!r}')
    return tuple(ks)


def check(args) -> tuple[list, list, list]:
    """(legacy metrics, trec_eval measures, every Metric) of the flags; BeammlError for a
    flag a user can fix."""
    names = _split(args.metrics) or (list(TREC_MEASURES) if args.qrels or
                                     args.run_format == 'trec' else list(RANKING_METRICS))
    unknown = [n for n in names if n not in RANKING_METRICS and n not in TREC_MEASURES]
    if unknown:
        raise BeammlError(f'unknown --metrics {", ".join(unknown)} for --task ranking; one or '
                          f'more of {", ".join(list(RANKING_METRICS) + list(TREC_MEASURES))}')
    if not args.relevance_level > 0:
        raise BeammlError(f'--relevance_level must be > 0, got {args.relevance_level}')
    legacy = [n for n in dict.fromkeys(names) if n in RANKING_METRICS]
    measures = [n for n in TREC_MEASURES if n in names]
    if args.complete and not args.qrels:
        raise BeammlError('--complete needs --qrels (queries judged but not in the run)')
    if args.complete and set(legacy) - {'n_queries'}:
        raise BeammlError(f'--complete evaluates queries without a returned row, which '
                          f'{", ".join(sorted(set(legacy) - {"n_queries"}))} cannot; '
                          'ask for trec_eval measures only')
    zd = ZERO_DIVISION[str(args.zero_division)]
    objs = [RANKING_METRICS[n](args.cutoff, zero_division=zd) if RANKING_METRICS[n] is
            PrecisionAtK else RANKING_METRICS[n](zero_division=zd) if n != 'n_queries'
            else RANKING_METRICS[n]() for n in legacy]
    if 'n_queries' not in legacy:
        objs.append(RANKING_METRICS['n_queries']())
    objs += trec_metrics(measures, cutoffs(args), zd)
    # --confidence_intervals: every mean over queries (queries resampled, query_bootstrap.py)
    objs += classification.query_intervals(args, objs, zd)
    return legacy, measures, objs


def qrels_format(args) -> str:
    if args.qrels_format != 'auto':
        return args.qrels_format
    path = args.qrels.lower()
    return next((f for ext, f in _TABLE_EXTENSIONS.items() if path.endswith(ext)), 'trec')


class _Reads:
    """The records of several readers as one reader's outputs (``batches``, ``[ERRORS]``):
    what the commit counts as read."""

    def __init__(self, p, reads):
        self.batches = [r.batches for r in reads] | 'AllRecordsRead' >> beam.Flatten()
        self._errors = [r[ERRORS] for r in reads] | 'AllReadErrors' >> beam.Flatten()

    def __getitem__(self, tag):
        assert tag == ERRORS
        return self._errors


def _check_table(read, wanted_cols) -> None:
    have = read.layout.columns
    missing = [f'{c!r} ({flag})' for c, flag in wanted_cols if c not in have]
    if missing:
        raise BeammlError(f'{read.paths[0]} has no column {", ".join(missing)}; its columns '
                          f'are {", ".join(have)}')


def _read_run(p, args, slice_by, order):
    """(reader outputs, canonical rows, parse errors or None, q_id type)."""
    dry = is_dry_run(p.options)
    if args.run_format == 'trec':
        read = p | 'ReadRun' >> ReadTrecFiles(args.input, 'run',
                                              paths=[args.input] if dry else None)
        return read, read.batches, None, 'string'
    kwargs = dict(input_format=args.input_format, source_columns=True)
    if args.id_column:
        kwargs['id_column'] = args.id_column
    read = ReadTable(args.input, **(declare_layout(args.input, kwargs, points=False) if dry
                                    else kwargs))
    need_doc = bool(args.qrels) or order == 'score'
    spec = [('q_id', args.query_column, 'id')]
    if need_doc:
        spec.append(('doc_id', args.doc_column, 'doc'))
    spec.append(('score', args.score_column, 'score') if order == 'score'
                else ('predicted_rank', args.rank_column, 'rank'))
    if not args.qrels:
        spec.append(('truth_relevance', args.relevance_column, 'relevance'))
    flags = {'q_id': '--query_column', 'doc_id': '--doc_column', 'score': '--score_column',
             'predicted_rank': '--rank_column', 'truth_relevance': '--relevance_column'}
    id_type = 'string'
    if not dry:
        _check_table(read, [(c, flags[n]) for n, c, _ in spec] +
                     [(c, '--slice_by') for c in slice_by])
        t = read.layout.head_schema.field(args.query_column).type
        if not args.qrels and (pa.types.is_integer(t) or pa.types.is_floating(t)):
            id_type = 'int64'
    logs = p | 'ReadLogs' >> read
    parsed = logs.batches | 'ParseRun' >> CanonicalRows(spec, slice_by, id_type)
    return logs, parsed.rows, parsed[ERRORS], id_type


def _read_qrels(p, args):
    """(reader outputs, canonical judgment rows, parse errors or None)."""
    fmt = qrels_format(args)
    dry = is_dry_run(p.options)
    if fmt == 'trec':
        read = p | 'ReadQrels' >> ReadTrecFiles(args.qrels, 'qrels',
                                                paths=[args.qrels] if dry else None)
        return read, read.batches, None
    kwargs = dict(input_format=fmt, source_columns=True)
    read = ReadTable(args.qrels, **(declare_layout(args.qrels, kwargs, points=False) if dry
                                    else kwargs))
    if not dry:
        _check_table(read, [(c, '--qrels') for c in QRELS_COLUMNS])
    qlogs = p | 'ReadQrelsTable' >> read
    parsed = qlogs.batches | 'ParseQrels' >> CanonicalRows(
        [('q_id', 'q_id', 'id'), ('doc_id', 'doc_id', 'doc'), ('relevance', 'relevance',
                                                               'relevance')], (), 'string')
    return qlogs, parsed.rows, parsed[ERRORS]


def per_query_schema(id_type: str, measures, ks) -> pa.Schema:
    base = [('q_id', pa.int64() if id_type == 'int64' else pa.string()),
            ('n_returned', pa.int64()), ('n_relevant', pa.int64()),
            ('precision', pa.float64()), ('precision_at_k', pa.float64()),
            ('average_precision', pa.float64())]   # evaluate's per_query columns, as before
    extra = [('num_rel', pa.int64()), ('num_rel_ret', pa.int64())]
    extra += [(c, pa.float64()) for c in measure_columns(measures, ks)]
    return pa.schema(base + extra)


def per_query_batch(stats: pa.RecordBatch, k: int, zero_division: float, schema: pa.Schema):
    """Overall rows of a statistics batch -> the per_query columns."""
    overall = stats.filter(pc.is_null(stats.column(SLICE_COLUMN)))
    if overall.num_rows == 0:
        return
    values = per_query_metrics(overall, k, zero_division)
    cols = []
    for f in schema:
        if f.name in values:
            cols.append(pa.array(values[f.name]))
        else:
            cols.append(overall.column(f.name).cast(f.type))
    yield pa.RecordBatch.from_arrays(cols, schema=schema)


def _document(result: dict, args, unjudged: int) -> dict:
    extra = {'k': args.cutoff, 'cutoffs': list(cutoffs(args)),
             'relevance_level': args.relevance_level}
    overall = {**result['overall'], **extra}
    if args.qrels and unjudged is not None:   # (not counted per window)
        overall['unjudged_queries'] = int(unjudged)
    return to_jsonable({'task': 'ranking', 'overall': overall,
                        'slices': {key: {**s, **extra} for key, s in result['slices'].items()}})


def write_metrics(result: dict, path: str, args, unjudged: int = 0) -> dict:
    doc = _document(result, args, unjudged)
    write_json(path, doc, indent=2)
    return doc


def empty_result(args) -> dict:
    fn = MetricsCombineFn(check(args)[2])
    return fn.extract_output(fn.create_accumulator())


def build(p, args, slice_by) -> dict:
    """Read the run (and the judgments), join, compute, write: as ``evaluate.build``."""
    legacy, measures, metrics = check(args)
    ks = cutoffs(args)
    order = 'score' if args.run_format == 'trec' or args.score_column else 'rank'
    logs, rows, parse_errors, id_type = _read_run(p, args, slice_by, order)
    reads, errors = [logs], [logs[ERRORS]] + ([parse_errors] if parse_errors is not None
                                              else [])
    judgments = None
    if args.qrels:
        qlogs, judgments, q_errors = _read_qrels(p, args)
        reads.append(qlogs)
        errors += [qlogs[ERRORS]] + ([q_errors] if q_errors is not None else [])
    LOG.info('input: %s; ranking measures %s at %s%s', args.input,
             ','.join(m.name for m in metrics), ks,
             f'; judgments {args.qrels}' if args.qrels else '')
    stats = rows | 'JudgedQueryStats' >> JudgedQueryStats(
        judgments, measures=measures, cutoffs=ks, ks=(args.cutoff,),
        relevance_level=args.relevance_level, complete=args.complete, order=order,
        n_buckets=args.query_buckets)
    unjudged = stats[UNJUDGED] | 'CountUnjudged' >> beam.CombineGlobally(sum)
    out = args.output
    result = stats.stats | 'CombineQueryMetrics' >> beam.CombineGlobally(
        MetricsCombineFn(metrics)).without_defaults()
    document = result | 'WriteMetrics' >> beam.Map(
        write_metrics, FileSystems.join(out, 'metrics.json'), args,
        beam.pvalue.AsSingleton(unjudged))
    zd = ZERO_DIVISION[str(args.zero_division)]
    schema = per_query_schema(id_type, measures, ks)
    per_query = stats.stats | 'PerQueryColumns' >> beam.FlatMap(
        per_query_batch, args.cutoff, zd, schema).with_output_types(pa.RecordBatch)
    written = [document, per_query | 'WritePerQuery' >> WriteTable(
        FileSystems.join(out, 'per_query/per_query'), args.output_format, schema=schema)]
    all_errors = (errors + [stats[ERRORS]]) | 'AllDeadLetters' >> beam.Flatten()
    written.append(all_errors | 'WriteDeadLetters' >> WriteDeadLetters(
        FileSystems.join(out, 'evaluate')))
    read = _Reads(p, reads) if len(reads) > 1 else logs
    return {'metrics': document, 'per_query': per_query, 'errors': all_errors, 'read': read,
            'written': written}


def check_streaming(args) -> None:
    if args.run_format == 'trec':
        raise BeammlError('--run_format trec reads files in batch; a stream carries log rows '
                          '(q_id, doc_id, score or rank columns)')
    if args.complete:
        raise BeammlError('--complete is for a batch run (every window would count every '
                          'judged query)')
    if not args.qrels_refresh_seconds > 0:
        raise BeammlError(f'--qrels_refresh_seconds must be > 0, got '
                          f'{args.qrels_refresh_seconds}')


def streaming_metrics(batches, args, slice_by) -> tuple:
    """The trec_eval path per window: (metrics PCollection, dead letters, formatter of a
    metrics element). Judgments, with ``--qrels``, are read by each worker and read
    again when their files change (:class:`StreamingJudgedQueryStats`)."""
    check_streaming(args)
    legacy, measures, metrics = check(args)
    ks = cutoffs(args)
    order = 'score' if args.score_column else 'rank'
    spec = [('q_id', args.query_column, 'id')]
    if args.qrels or order == 'score':
        spec.append(('doc_id', args.doc_column, 'doc'))
    spec.append(('score', args.score_column, 'score') if order == 'score'
                else ('predicted_rank', args.rank_column, 'rank'))
    if not args.qrels:
        spec.append(('truth_relevance', args.relevance_column, 'relevance'))
    parsed = batches | 'ParseRun' >> CanonicalRows(spec, slice_by, 'string')
    kw = dict(measures=measures, cutoffs=ks, ks=(args.cutoff,),
              relevance_level=args.relevance_level, order=order, n_buckets=args.query_buckets)
    if args.qrels:
        stats = parsed.rows | 'JudgedQueryStats' >> StreamingJudgedQueryStats(
            args.qrels, qrels_format(args), args.qrels_refresh_seconds, **kw)
    else:
        stats = parsed.rows | 'JudgedQueryStats' >> JudgedQueryStats(None, **kw)
    result = stats.stats | 'CombineQueryMetrics' >> beam.CombineGlobally(
        MetricsCombineFn(metrics)).without_defaults()
    errors = (parsed[ERRORS], stats[ERRORS]) | 'RankingDeadLetters' >> beam.Flatten()
    return result, errors, lambda result: _document(result, args, None)
