"""Evaluate prediction logs: precision, recall, accuracy, F1; query precision, P@k, MAP; per slice.

    beamml evaluate --input 'logs/*.parquet' --task classification --output out/eval
    beamml evaluate --input 'logs/*.parquet' --task ranking --cutoff 5 --slice_by model \\
        --output out/eval

Writes OUTPUT/metrics.json ({"overall", "slices", "counts"}), for ranking also
OUTPUT/per_query/per_query-SSSSS-of-NNNNN.<format>, and the dead letters
OUTPUT/evaluate-errors-*.jsonl.

Streaming (``--streaming``): the same metrics per event-time window (and per
slice), from Pub/Sub (``--input_subscription``/``--input_topic``) or a watched
file pattern (``--input PATTERN --watch_interval S``): one JSON record per
window and pane, ``OUTPUT/metrics-<start>-<end>-pane-<i>-<timing>.jsonl`` (and
``--output_topic``), with ``window_start``, ``window_end`` and ``timing``
(on_time, or late: a late pane replaces the one before). Ranking groups a
query's rows within the window. See docs/streaming.md.
"""
from __future__ import annotations

import functools
import logging

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform import runs, streams
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.flags import (add_deprecated, add_refused_arg, add_table_input_args,
                                              declare_layout)
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import (input_files, is_dry_run, no_results, pipeline_run,
                                                run_pipeline)
from beamml.pipelines._platform.values import positive_int
from beamml.pipelines.evaluate import classification, ranking
from beamml.transforms.core.errors import ERRORS, BeammlError
from beamml.transforms.io import OUTPUT_FORMATS, ReadTable, WriteDeadLetters, WriteTable
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.core.documents import read_json, to_jsonable, write_json
from beamml.transforms.io.sources import RecordsAsRead
from beamml.transforms.metrics import (CLASSIFICATION_METRICS, RANKING_METRICS, SLICE_COLUMN,
                                       ComputeMetrics, ParsePredictionLogs, PrecisionAtK,
                                       per_query_metrics)

LOG = logging.getLogger('beamml')
TASKS = ('classification', 'ranking')
COLUMN_FLAGS = {
    'classification': {'truth': 'truth_column', 'prediction': 'prediction_column'},
    'ranking': {'q_id': 'query_column', 'predicted_rank': 'rank_column',
                'truth_relevance': 'relevance_column'},
}
ZERO_DIVISION = {'0': 0.0, '1': 1.0, 'nan': float('nan')}


class EvaluateOptions:
    """The flags of ``beamml evaluate`` (a plain class, not a PipelineOptions subclass:
    Beam parses every registered subclass for every pipeline built in the process)."""
    #: required in batch (a stream reads a subscription or a topic instead): the platform
    #: checks them, the batch Flex template marks them required
    REQUIRED_IN_BATCH = ('input', 'output')


    @classmethod
    def _add_argparse_args(cls, parser):
        add_table_input_args(
            parser, id_required=False,
            id_help="a row id column; rows with a missing id are refused (default: the "
                    "column 'id' if there is one)", input_required=False)
        parser.add_argument('--task', required=True, choices=TASKS)
        parser.add_argument('--metrics', default=None,
                            help='comma-separated metric names; default: all of the task '
                                 f'(classification: {",".join(CLASSIFICATION_METRICS)}; '
                                 f'ranking: {",".join(RANKING_METRICS)})')
        parser.add_argument('--cutoff', type=positive_int, default=5, metavar='K',
                            help='the cutoff k of precision_at_k: relevant rows with '
                                 'predicted_rank < k, divided by k (default 5; was --k)')
        add_deprecated(parser, '--k', '--cutoff')
        parser.add_argument('--slice_by', default=None,
                            help='comma-separated columns; metrics per combination of '
                                 'their values, keys "col=value" or "a=1,b=x"')
        parser.add_argument('--zero_division', choices=list(ZERO_DIVISION), default='0',
                            help='value of a 0/0 (as scikit-learn); such cases are '
                                 'counted under "undefined" (default 0)')
        parser.add_argument('--truth_column', default='truth')
        parser.add_argument('--prediction_column', default='prediction')
        parser.add_argument('--query_column', default='q_id')
        parser.add_argument('--rank_column', default='predicted_rank',
                            help='integer rank, 0 = top result (default predicted_rank)')
        parser.add_argument('--relevance_column', default='truth_relevance',
                            help='relevance; > 0 is relevant (default truth_relevance)')
        parser.add_argument('--score_column', default=None,   # both tasks: one flag
                            help='classification: a score of the positive class (higher = '
                                 'more positive) for roc_auc, average_precision; a '
                                 'probability in [0, 1] for log_loss and reliability. '
                                 'ranking: rank a table run by this score, descending, ties '
                                 'by doc_id descending (trec_eval), instead of --rank_column')
        parser.add_argument('--query_buckets', type=positive_int, default=32,
                            help='ranking: number of q_id hash buckets, i.e. the parallelism '
                                 'of the per-query step (default 32)')
        parser.add_argument('--output', required=False,
                            help='output directory (local or gs://); required in batch')
        parser.add_argument('--output_format', choices=OUTPUT_FORMATS, default='parquet',
                            help='format of per_query (default parquet)')
        classification.add_args(parser)   # multiclass, weights, scores, intervals
        ranking.add_args(parser)   # judgments, TREC runs, trec_eval's measures
        add_refused_arg(parser)
        runs.add_run_args(parser)
        streams.add_streaming_args(parser)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or '').split(',') if v.strip()]


def metric_list(args) -> list:
    """The Metric objects of --task / --metrics / --cutoff / --zero_division."""
    classification.check_task(args)
    if classification.active(args):   # multiclass / weights / scores / intervals
        return classification.metric_list(args, _split(args.metrics),
                                          ZERO_DIVISION[str(args.zero_division)])
    registry = CLASSIFICATION_METRICS if args.task == 'classification' else RANKING_METRICS
    names = _split(args.metrics) or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise BeammlError(f'unknown --metrics {", ".join(unknown)} for --task {args.task}; '
                          f'one or more of {", ".join(registry)}')
    zd = ZERO_DIVISION[str(args.zero_division)]
    out = []
    for n in dict.fromkeys(names):
        cls = registry[n]
        out.append(cls(args.cutoff, zero_division=zd) if cls is PrecisionAtK
                   else cls(zero_division=zd))
    if args.task == 'ranking' and 'n_queries' not in names:
        out.append(RANKING_METRICS['n_queries']())
    if args.task == 'ranking':   # --confidence_intervals: queries resampled
        out += classification.query_intervals(args, out, zd)
    return out


def _id_type(layout, column: str) -> str:
    """'int64' when the first file's query column holds numbers, else 'string'."""
    t = layout.head_schema.field(column).type
    return 'int64' if (pa.types.is_integer(t) or pa.types.is_floating(t)) else 'string'


def check_columns(read: ReadTable, args) -> tuple[dict[str, str], list[str]]:
    """(canonical name -> log column, slice columns); BeammlError for a missing column,
    or a column named like one the reader adds (SOURCE_COLUMNS)."""
    columns = {name: getattr(args, flag) for name, flag in COLUMN_FLAGS[args.task].items()}
    slice_by = _split(args.slice_by)
    have = read.layout.columns
    for c in slice_by:
        if c in SOURCE_COLUMNS or c in columns or c in columns.values():
            raise BeammlError(f'cannot --slice_by {c!r}: the metrics read that column '
                              f'(or beamml uses the name: {", ".join(columns)}, '
                              f'{", ".join(SOURCE_COLUMNS)})')
    clash = [c for c in SOURCE_COLUMNS if c in have]
    if clash:
        raise BeammlError(f'{read.paths[0]} has a column {clash[0]!r}, a name beamml gives '
                          'the source of each row; rename it')
    wanted = [(c, f'--{COLUMN_FLAGS[args.task][n]}') for n, c in columns.items()]
    wanted += [(c, '--slice_by') for c in slice_by]
    if classification.active(args):
        wanted += classification.log_columns(args)
    missing = [f'{c!r} ({flag})' for c, flag in wanted if c not in have]
    if missing:
        raise BeammlError(f'{read.paths[0]} has no column {", ".join(missing)}; its columns '
                          f'are {", ".join(have)}')
    return columns, slice_by


def format_metrics(result: dict, task: str, k: int) -> dict:
    """The metrics.json document (without counts; ranking gets k), JSON-ready under the
    one JSON policy: NaN (a 0/0 with --zero_division nan) is written "NaN"."""
    extra = {'k': k} if task == 'ranking' else {}
    return to_jsonable({'task': task, 'overall': {**result['overall'], **extra},
                        'slices': {key: {**section, **extra}
                                   for key, section in result['slices'].items()}})


def per_query_schema(id_type: str) -> pa.Schema:
    return pa.schema([('q_id', pa.int64() if id_type == 'int64' else pa.string()),
                      ('n_returned', pa.int64()), ('n_relevant', pa.int64()),
                      ('precision', pa.float64()), ('precision_at_k', pa.float64()),
                      ('average_precision', pa.float64())])


def per_query_batch(stats: pa.RecordBatch, k: int, zero_division: float):
    """Overall rows of a per-query statistics batch -> the per_query output columns."""
    overall = stats.filter(pc.is_null(stats.column(SLICE_COLUMN)))
    if overall.num_rows == 0:
        return
    values = per_query_metrics(overall, k, zero_division)
    yield pa.RecordBatch.from_arrays(
        [overall.column('q_id'), overall.column('n_returned'), overall.column('n_relevant'),
         pa.array(values['precision']), pa.array(values['precision_at_k']),
         pa.array(values['average_precision'])],
        names=per_query_schema('int64').names)


def parse_logs(args, columns, slice_by, id_type, input_format):
    """The parser of the flags: ParsePredictionLogs, or classification.py's rows."""
    if classification.active(args):
        return classification.parse_transform(args, columns, slice_by, input_format)
    return ParsePredictionLogs(args.task, columns, slice_by, id_type, input_format)


def build(p, args):
    """Read, parse, compute and write; returns {'metrics', 'per_query', 'errors'}.

    ``metrics`` (the metrics.json document) is empty when no row is usable; ``run``
    then writes the metrics of nothing itself.
    """
    classification.check_task(args)   # one task's flags on the other task: refused
    ranking.check_task(args)
    if ranking.wanted(args):   # judgments, TREC runs, trec_eval's measures: ranking.py
        return ranking.build(p, args, stream_columns(args)[1])
    metrics = metric_list(args)
    kwargs = dict(input_format=args.input_format, source_columns=True)
    if args.id_column:
        kwargs['id_column'] = args.id_column
    if is_dry_run(p.options):
        # no input is read: its layout and columns are what the flags say (a row without
        # them would be refused when parsed), its query ids the general type, strings
        read = ReadTable(args.input, **declare_layout(args.input, kwargs, points=False))
        columns, slice_by = stream_columns(args)
        id_type = 'string' if args.task == 'ranking' else 'int64'
    else:
        read = ReadTable(args.input, **kwargs)
        columns, slice_by = check_columns(read, args)
        id_type = (_id_type(read.layout, columns['q_id'])
                   if args.task == 'ranking' else 'int64')
    LOG.info('input: %s, %s; task %s; metrics %s%s', input_files(read),
             read.layout.input_format, args.task, ','.join(m.name for m in metrics),
             f'; slices by {",".join(slice_by)}' if slice_by else '')
    logs = p | 'ReadLogs' >> read
    parsed = logs.batches | 'ParseLogs' >> parse_logs(
        args, columns, slice_by, id_type, read.layout.input_format)
    result = parsed.rows | 'ComputeMetrics' >> compute_metrics(args, metrics, slice_by)
    out = args.output
    # Empty without rows: run() then writes the metrics of nothing (compute_metrics).
    document = result['metrics'] | 'WriteMetrics' >> beam.Map(
        write_metrics, FileSystems.join(out, 'metrics.json'), args.task, args.cutoff)
    written = [document]
    per_query = None
    if args.task == 'ranking':
        zd = ZERO_DIVISION[str(args.zero_division)]
        per_query = result['query_stats'] | 'PerQueryColumns' >> beam.FlatMap(
            per_query_batch, args.cutoff, zd).with_output_types(pa.RecordBatch)
        written.append(per_query | 'WritePerQuery' >> WriteTable(
            FileSystems.join(out, 'per_query/per_query'), args.output_format,
            schema=per_query_schema(id_type)))
    # a duplicate is found among parsed values: its record is the row as read (again)
    duplicates = result['errors'] | 'DuplicatesAsRead' >> RecordsAsRead(read.layout)
    errors = ((logs[ERRORS], parsed[ERRORS], duplicates)
              | 'AllDeadLetters' >> beam.Flatten())
    written.append(errors | 'WriteDeadLetters' >> WriteDeadLetters(
        FileSystems.join(out, 'evaluate')))
    return {'metrics': document, 'per_query': per_query, 'errors': errors, 'read': logs,
            'written': written}


def finish_metrics(args, output: str, counts: dict) -> None:
    """The commit's last touch to metrics.json: the metrics of nothing when no row (or no
    query) was combined, and the run's record counts (:class:`~beamml.pipelines._platform.runs.DatedRun`)."""
    path = FileSystems.join(output, 'metrics.json')
    if not FileSystems.exists(path) and ranking.wanted(args):
        ranking.write_metrics(ranking.empty_result(args), path, args)
    elif not FileSystems.exists(path):
        write_metrics(compute_metrics(args).empty_result(), path, args.task, args.cutoff)
    add_counts(path, counts)


def stream_columns(args) -> tuple[dict[str, str], list[str]]:
    """(canonical name -> log column, slice columns) from the flags alone (a stream has no
    file to check them against: a row without them is refused when it is parsed)."""
    columns = {name: getattr(args, flag) for name, flag in COLUMN_FLAGS[args.task].items()}
    slice_by = _split(args.slice_by)
    for c in slice_by:
        if c in SOURCE_COLUMNS or c in columns or c in columns.values():
            raise BeammlError(f'cannot --slice_by {c!r}: the metrics read that column '
                              f'(or beamml uses the name: {", ".join(columns)}, '
                              f'{", ".join(SOURCE_COLUMNS)})')
    return columns, slice_by


def _window_record(doc: dict, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    """One window's metrics document with its window and pane timing (a pane index too:
    a late pane replaces the record of the pane before)."""
    yield {**streams.window_fields(window, pane), 'pane': int(pane.index), **doc}


def build_streaming(p, args, source: dict | None = None, input_format: str = 'jsonl') -> dict:
    """The streaming graph: source (or ``source``, {'batches', 'errors'} windowed and
    gated: tests give a TestStream), ParsePredictionLogs and ComputeMetrics per window,
    one metrics record per window and pane. Returns {'metrics', 'errors'}."""
    classification.check_task(args)
    ranking.check_task(args)
    trec = ranking.wanted(args)   # judgments, trec_eval's measures: ranking.py
    if trec:
        ranking.check_streaming(args)
    metrics = None if trec else metric_list(args)
    columns, slice_by = stream_columns(args)
    id_type = 'string'
    if source is None:
        layout, nothing_yet = None, False
        if args.input and not is_dry_run(p.options):   # (a dry run reads nothing)
            try:
                read = ReadTable(args.input, input_format=args.input_format,
                                 **({'id_column': args.id_column} if args.id_column else {}))
                columns, slice_by = check_columns(read, args)
                layout, input_format = read.layout, read.layout.input_format
                if args.task == 'ranking':
                    id_type = _id_type(layout, columns['q_id'])
            except BeammlError as e:   # a watched pattern no file of which landed yet
                if not any(x in str(e) for x in ('no file', 'matches no', 'no input file')):
                    raise
                nothing_yet = True
        if layout is None and args.input and (nothing_yet or is_dry_run(p.options)):
            layout = declare_layout(args.input, dict(
                input_format=args.input_format, id_column=args.id_column), points=False)['layout']
            input_format = layout.input_format
        if layout is None:
            from beamml.transforms.streaming.messages import message_layout
            layout = message_layout(id_column=args.id_column, points=False)
        source = streams.read_stream(p, args, layout, points=False, source_columns=True,
                                       accumulating=True)
    if trec:
        per_window, parse_errors, fmt = ranking.streaming_metrics(source['batches'], args,
                                                                  slice_by)
        duplicates = None
    else:
        parsed = source['batches'] | 'ParseLogs' >> parse_logs(
            args, columns, slice_by, id_type, input_format)
        result = parsed.rows | 'ComputeMetrics' >> compute_metrics(args, metrics, slice_by)
        per_window, parse_errors, duplicates = result['metrics'], parsed[ERRORS], result['errors']
        fmt = functools.partial(format_metrics, task=args.task, k=args.cutoff)
    records = (per_window
               | 'Format' >> beam.Map(fmt)
               | 'WithWindow' >> beam.FlatMap(_window_record))
    out = args.output
    streams.write_records(records, args, prefix=out and FileSystems.join(out, 'metrics'),
                            label='WriteMetrics')
    if duplicates is not None and source.get('layout') is not None:
        # watched files: a duplicate's record as read
        duplicates = duplicates | 'DuplicatesAsRead' >> RecordsAsRead(source['layout'])
    errors = streams.all_errors(source['errors'], parse_errors,
                                *([duplicates] if duplicates is not None else []))
    streams.write_dead_letters(errors, args, out and FileSystems.join(out, 'evaluate-errors'))
    return {'metrics': records, 'errors': errors}


def compute_metrics(args, metrics=None, slice_by=None) -> ComputeMetrics:
    """The ComputeMetrics of the flags (its ``metrics`` is empty without rows)."""
    return ComputeMetrics(metric_list(args) if metrics is None else metrics,
                          _split(args.slice_by) if slice_by is None else slice_by,
                          ks=(args.cutoff,) if args.task == 'ranking' else (),
                          n_buckets=args.query_buckets, defaults=False)


def write_metrics(result: dict, path: str, task: str, k: int) -> dict:
    """Format the single element of the metrics PCollection and write it to ``path``."""
    doc = format_metrics(result, task, k)
    write_json(path, doc, indent=2)  # the single element: a retry rewrites the same content
    return doc


def add_counts(metrics_path: str, counts: dict | None) -> dict:
    """Add the run's record counts to metrics.json (rewritten in place; a non-finite
    value, written "NaN", is read back and written again as that same string)."""
    doc = read_json(metrics_path)
    doc['counts'] = {k: (counts or {}).get(k) for k in
                     ('records_read', 'records_ok', 'records_refused')}
    write_json(metrics_path, doc, indent=2)
    return doc


def summary(doc: dict) -> str:
    overall = doc['overall']
    parts = []
    for k, v in overall.items():
        if k == 'undefined':
            continue
        if isinstance(v, (dict, list)) and any(isinstance(x, (dict, list)) for x in
                                               (v.values() if isinstance(v, dict) else v)):
            continue   # a table (per_class, confusion_matrix, ...): in metrics.json
        if isinstance(v, dict):
            v = '(' + ' '.join(f'{a}={b}' for a, b in v.items()) + ')'
        elif isinstance(v, float):
            v = f'{v:.6g}'
        parts.append(f'{k}={v}')
    text = 'overall: ' + ' '.join(parts)
    undefined = {k: v for k, v in overall.get('undefined', {}).items() if v}
    if undefined:
        text += '\nundefined (0/0, replaced by --zero_division): ' + ', '.join(
            f'{k} {v}' for k, v in undefined.items())
    if doc['slices']:
        text += f'\nslices: {len(doc["slices"])}'
    return text


@pipeline_run
def run(argv=None):
    args, options = parse_args(EvaluateOptions, argv, prog='beamml evaluate',
                                      description=__doc__, streaming=True)
    streams.check_streaming_args(args, options)
    if streams.is_streaming(options):
        return _run_streaming(args, options)

    def show(_):
        metrics_path = FileSystems.join(args.output, 'metrics.json')
        print(summary(read_json(metrics_path)))
        print(f'metrics: {metrics_path}')
        if args.task == 'ranking':
            print(f'per_query: {FileSystems.join(args.output, "per_query")}/per_query-?????-'
                  f'of-?????.{args.output_format}')
    return runs.run_and_show(
        args, options, 'evaluate', build, show, folder=True, report=False,
        errors_glob=lambda out: WriteDeadLetters.glob(FileSystems.join(out, 'evaluate')),
        finish=functools.partial(finish_metrics, args))


def _run_streaming(args, options):
    p = beam.Pipeline(options=streams.streaming_options(options, args))
    build_streaming(p, args)
    if no_results(options):
        return run_pipeline(p)
    result = streams.run_and_count(p, args, streams.dead_letter_glob(
        args, args.output and FileSystems.join(args.output, 'evaluate-errors')))
    if args.output:
        print(f'metrics: {FileSystems.join(args.output, "metrics")}-<window start>-<window '
              f'end>-pane-<i>-<timing>.jsonl; dead letters: '
              f'{FileSystems.join(args.output, "evaluate-errors")}-*.jsonl')
    return result


if __name__ == '__main__':
    import sys
    sys.exit(main_wrapper(run, prog='beamml evaluate'))
