"""The streaming side of the pipelines: flags, sources, windows, sinks, and running a stream.

``--streaming`` turns ``assign``, ``evaluate`` and ``kmeans`` into streaming jobs
over the same graph: a streaming source gives the RecordBatches the file readers
give, then the batch steps run per window. This module holds what they share:

* the flags (:func:`add_streaming_args`): the source (``--input_subscription`` /
  ``--input_topic``, or ``--input PATTERN --watch_interval S``), event time
  (``--timestamp_attribute``), windows (``--window_size``, ``--window_period``,
  ``--allowed_lateness``), batching (``--max_batch_size``), sinks
  (``--output`` per-window files, ``--output_topic``, ``--dead_letter_topic``) and
  ``--stop_after`` (end the run after so many seconds: tests and demos);
* :func:`read_stream`: the source, windowed, through the
  :class:`~beamml.transforms.streaming.windows.LateGate`;
* :func:`write_rows` and :func:`write_dead_letters`: per-window files and topics;
* :func:`streaming_options` picks the local runner (the BundleBasedDirectRunner) and
  :func:`run_stream` runs the pipeline, cancelling it after ``--stop_after``.
"""
from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import StandardOptions

from beamml.pipelines._platform.flags import STREAMING_GROUP
from beamml.pipelines._platform.values import positive_int, positive_seconds, seconds
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.streaming.direct_counts import count_every_bundle
from beamml.transforms.streaming.panes import (WritePanes, pane_file_name,  # noqa: F401
                                               window_fields, write_dead_letter_lines,
                                               write_json_lines, write_tables)
from beamml.transforms.streaming.windows import (LateGate, check_windows, discarding_panes, window_into)

__all__ = ['add_streaming_args', 'check_streaming_args', 'is_streaming', 'read_stream',
           'window_and_gate', 'gate', 'write_records', 'stream_layout', 'run_and_count',
           'write_rows', 'write_dead_letters', 'all_errors', 'run_stream', 'source_name',
           'dead_letter_glob',
           'window_fields', 'WritePanes', 'pane_file_name']

LOG = logging.getLogger('beamml')
#: the local runner of every stream (Pub/Sub, TestStream, a watched pattern)
LOCAL_STREAMING_RUNNER = 'BundleBasedDirectRunner'


def add_streaming_args(parser, *, sliding: bool = True) -> None:
    """The flags of a pipeline that runs with ``--streaming`` too."""
    g = parser.add_argument_group(STREAMING_GROUP)
    g.add_argument('--input_subscription', default=None,
                   help='read Pub/Sub messages from projects/P/subscriptions/S (a message: '
                        'one JSON object with the fields of a file row, a JSON array of them, '
                        'or Arrow IPC bytes with the attribute format=arrow)')
    g.add_argument('--input_topic', default=None,
                   help='read Pub/Sub messages from projects/P/topics/T (a subscription is '
                        'made for the job)')
    g.add_argument('--timestamp_attribute', default=None,
                   help='message attribute holding the event time (RFC 3339 or ms since '
                        'the epoch); default: the publish time')
    g.add_argument('--watch_interval', type=positive_seconds, default=None,
                   help='with --input PATTERN: poll the pattern every S seconds and read '
                        'each new file once, as it lands')
    g.add_argument('--stop_after', type=positive_seconds, default=None,
                   help='end the stream after S seconds (default: run until cancelled)')
    g.add_argument('--window_size', type=positive_seconds, default=60.0,
                   help='event-time window length in seconds (default 60)')
    if sliding:
        g.add_argument('--window_period', type=positive_seconds, default=None,
                       help='sliding windows: a new window every S seconds (default: fixed '
                            'windows, period = size)')
    g.add_argument('--allowed_lateness', type=seconds, default=0.0,
                   help='seconds after a window ends during which late data still updates '
                        'it (a late pane); later data goes to the dead letters, reason late '
                        '(default 0)')
    g.add_argument('--max_batch_size', type=positive_int, default=1000,
                   help='messages per batch at most (default 1000)')
    g.add_argument('--output_topic', default=None,
                   help='also publish every output row to projects/P/topics/T as one JSON '
                        'object (the fields of the batch output)')
    g.add_argument('--dead_letter_topic', default=None,
                   help='also publish every dead letter to projects/P/topics/T')


def is_streaming(options) -> bool:
    return bool(options.view_as(StandardOptions).streaming)


def check_streaming_args(args, options, *, needs_output: bool = True) -> None:
    """One-line errors for streaming flags that do not fit together; streaming flags
    without ``--streaming`` are refused too (they would be ignored)."""
    streaming = is_streaming(options)
    given = [f for f in ('input_subscription', 'input_topic', 'timestamp_attribute',
                         'watch_interval', 'stop_after', 'output_topic', 'dead_letter_topic')
             if getattr(args, f, None) is not None]
    if not streaming:
        if given:
            raise BeammlError(f'--{given[0]} needs --streaming')
        return
    from beamml.pipelines._platform.runs import RUN_FLAGS
    batch_only = [f for f, off in RUN_FLAGS.items() if hasattr(args, f) and getattr(args, f) != off]
    if batch_only:   # a stream writes a file per window: nothing to commit once
        raise BeammlError(f'--{batch_only[0]} is for a batch run (a dated run committed once '
                          'with _SUCCESS); a stream writes a file per window and pane')
    sources = [f for f in ('input_subscription', 'input_topic') if getattr(args, f, None)]
    if getattr(args, 'watch_interval', None) is not None:
        if not getattr(args, 'input', None):
            raise BeammlError('--watch_interval needs --input PATTERN (the files to watch)')
        sources.append('input')
    elif getattr(args, 'input', None) and not sources:
        raise BeammlError('--streaming reads --input_subscription, --input_topic, or --input '
                          'PATTERN with --watch_interval S')
    if len(sources) != 1:
        raise BeammlError('--streaming needs exactly one source: --input_subscription, '
                          '--input_topic, or --input with --watch_interval'
                          + (f' (got {", ".join("--" + s for s in sources)})' if sources else ''))
    try:
        check_windows(args.window_size, getattr(args, 'window_period', None),
                      args.allowed_lateness)
    except BeammlError as e:
        raise BeammlError('--' + str(e)) from e
    if needs_output and not (getattr(args, 'output', None) or args.output_topic):
        raise BeammlError('--streaming needs --output PREFIX (per-window files) or '
                          '--output_topic')
    if 'input' in sources and getattr(args, 'output', None):   # a watched pattern
        from beamml.pipelines._platform.overlap import check_input_overlap, output_namespace
        check_input_overlap([('--input', args.input)], [output_namespace(
            '--output', getattr(args, 'output_given', None) or args.output)])
    _check_pubsub_names(args)
    if needs_output and not getattr(args, 'output', None) and not args.dead_letter_topic:
        raise BeammlError('--streaming with --output_topic alone has nowhere to keep its dead '
                          'letters (refused and late records): give --dead_letter_topic '
                          'projects/P/topics/T, or --output PREFIX for files beside the rows')


def dead_letter_glob(args, prefix: str | None) -> str | None:
    """Where a stream's dead letters go, for the records line: ``PREFIX-*.jsonl`` (files),
    else the dead-letter topic."""
    return f'{prefix}-*.jsonl' if prefix else getattr(args, 'dead_letter_topic', None)


def _check_pubsub_names(args) -> None:
    """Each Pub/Sub flag's value is a subscription or topic name, or one line naming the
    flag (the transforms check the names too, but word them as their own parameters)."""
    from beamml.transforms.streaming.pubsub import check_subscription, check_topic
    for flag, check in (('input_subscription', check_subscription),
                        ('input_topic', check_topic), ('output_topic', check_topic),
                        ('dead_letter_topic', check_topic)):
        value = getattr(args, flag, None)
        if value is not None:
            check(value, flag)


def stream_layout(args, read_kwargs: dict, dimension_of, dimension_hint: str = '', *,
                  dry_run: bool = False):
    """What the points of a stream look like: inspected from the files a watched pattern
    already matches (as ``ReadPoints`` with ``read_kwargs``), else from the flags: ids
    in ``--id_column`` (default ``id``), features in ``--feature_columns`` (default a
    ``features`` list), ``--weight_column``, and the dimension ``dimension_of()`` gives
    (called only then; None is an error naming --dimension, and ``dimension_hint``).
    A ``dry_run`` matches nothing (it touches no storage): the flags decide."""
    if args.input and args.watch_interval is not None and not dry_run:
        from apache_beam.io.filesystems import FileSystems
        from beamml.transforms.io import ReadPoints
        from beamml.transforms.io.layout import listable
        try:
            matched = FileSystems.match([listable(args.input)])[0].metadata_list
        except Exception:   # nothing there yet (or not listable): the flags decide
            matched = []
        if matched:
            return ReadPoints(args.input, **read_kwargs).layout
    dimension = dimension_of()
    if dimension is None:
        raise BeammlError('--streaming from Pub/Sub (or from a pattern that matches no file '
                          f'yet) needs --dimension D{dimension_hint}')
    from beamml.transforms.streaming.messages import message_layout
    features = tuple(args.feature_columns.split(',')) if args.feature_columns else ('features',)
    return message_layout(id_column=args.id_column or 'id', feature_columns=features,
                          dimension=dimension,
                          weight_column=getattr(args, 'weight_column', None))


def source_name(args) -> str:
    """What the dead letters of a stream name as their ``file``."""
    return args.input_subscription or args.input_topic or args.input


def read_stream(p, args, layout, *, points: bool = True, source_columns: bool = False,
                accumulating: bool = True, refuse_zero: bool = False,
                weight_column: str | None = None, message_ids: bool = False) -> dict:
    """The streaming source, windowed and gated: ``{'batches', 'errors', 'layout'}``.

    ``batches`` are RecordBatches as the file readers make them, in event-time
    windows (``--window_size``/``--window_period``, ``--allowed_lateness``), with
    ``window_start``, ``window_end`` and ``timing`` columns; ``errors`` the source's
    dead letters and the rows too late for their window; ``layout`` the watched files'
    (None for Pub/Sub, whose messages cannot be read again). With ``message_ids`` a
    Pub/Sub stream's batches carry each row's ``message_id``.
    """
    windowing = window_into(args.window_size, getattr(args, 'window_period', None),
                            args.allowed_lateness)
    if args.input_subscription or args.input_topic:
        from beamml.transforms.streaming.pubsub import ReadPubSubBatches
        read = p | 'ReadPubSub' >> ReadPubSubBatches(
            subscription=args.input_subscription, topic=args.input_topic, layout=layout,
            timestamp_attribute=args.timestamp_attribute, windowing=windowing,
            max_batch_size=args.max_batch_size, points=points,
            source_columns=source_columns, refuse_zero=refuse_zero,
            allow_nan=getattr(args, 'allow_nan', False),
            message_id_column='message_id' if message_ids else None)
        batches = read.batches
    else:
        from beamml.transforms.streaming.files import ReadWatchedPoints, ReadWatchedTable
        from beamml.pipelines._platform.flags import declare_layout
        from beamml.pipelines._platform.runners import is_dry_run
        cls = ReadWatchedPoints if points else ReadWatchedTable
        kwargs = dict(input_format=args.input_format, id_column=args.id_column,
                      source_columns=source_columns)
        if points:
            kwargs.update(feature_columns=layout.feature_columns, dimension=layout.dimension,
                          allow_nan=getattr(args, 'allow_nan', False), refuse_zero=refuse_zero,
                          **({'weight_column': weight_column} if weight_column else {}))
        if is_dry_run(p.options):   # nothing is matched: the layout the flags declare
            kwargs = declare_layout(args.input, kwargs, points=points)
        elif not _matches_a_file(args.input):   # nothing landed yet: the flags, as a
            if points:                            # stream's (integer ids in 'id' by default)
                kwargs['id_column'] = args.id_column or layout.id_column
            kwargs = declare_layout(args.input, kwargs, points=points)
            if points and kwargs['layout'].id_column:
                kwargs['layout'] = dataclasses.replace(kwargs['layout'], id_type=layout.id_type)
        watcher = cls(args.input, interval=args.watch_interval, stop_after=args.stop_after,
                      **kwargs)
        files_layout = watcher.layout   # what a dead letter's row is read again with
        read = p | 'WatchFiles' >> watcher
        batches = read.batches | 'Windows' >> windowing
    gated = gate(batches, args, accumulating=accumulating)
    errors = (_rewindow_global(read.errors, 'SourceErrorsGlobal'),
              _rewindow_global(gated['errors'], 'LateErrorsGlobal')) \
        | 'SourceErrors' >> beam.Flatten()
    return {'batches': gated['batches'], 'errors': errors,
            'layout': None if args.input_subscription or args.input_topic else files_layout}


def _matches_a_file(pattern: str) -> bool:
    """Whether a watched pattern matches a file now (a folder that does not exist yet, or
    a bucket listing that fails, matches none: the watcher lists it again each poll)."""
    from apache_beam.io.filesystems import FileSystems
    try:
        results = FileSystems.match([pattern])
    except Exception:   # BeamIOError: nothing listable there yet
        return False
    return any(not m.path.endswith('/') for r in results for m in r.metadata_list)


def window_and_gate(batches, args, *, accumulating: bool = True) -> dict:
    """Timestamped RecordBatches (a TestStream, a source without windows) -> windowed
    and gated ``{'batches', 'errors'}``, as :func:`read_stream` gives them."""
    windowed = batches | 'Windows' >> window_into(
        args.window_size, getattr(args, 'window_period', None), args.allowed_lateness)
    return gate(windowed, args, accumulating=accumulating)


def gate(batches, args, *, accumulating: bool = True) -> dict:
    return batches | 'LateGate' >> LateGate(args.allowed_lateness, source=source_name(args),
                                            accumulating=accumulating)


def write_rows(rows, args, schema: pa.Schema, *, label: str = 'Write') -> None:
    """Windowed RecordBatches to ``--output`` (a file per window and pane:
    ``PREFIX-<start>-<end>-pane-<i>-<timing>.<format>``) and ``--output_topic``."""
    fmt = getattr(args, 'output_format', 'jsonl')
    if getattr(args, 'output', None):
        rows | f'{label}Files' >> WritePanes(args.output, '.' + fmt,
                                             write_tables(fmt, schema), what='rows')
    if args.output_topic:
        from beamml.transforms.streaming.pubsub import WriteJsonToPubSub
        rows | f'{label}Topic' >> WriteJsonToPubSub(
            args.output_topic, getattr(args, 'output_topic_format', 'json'))


def write_records(records, args, *, prefix: str, label: str) -> None:
    """Windowed JSON-able dicts (metrics records, alarms) to
    ``<prefix>-<start>-<end>-pane-<i>-<timing>.jsonl`` and ``--output_topic``."""
    if getattr(args, 'output', None):
        (records
         | f'{label}Discarding' >> discarding_panes(args.allowed_lateness)
         | f'{label}Files' >> WritePanes(prefix, '.jsonl', write_json_lines))
    if args.output_topic:
        from beamml.transforms.streaming.pubsub import WriteDeadLettersToPubSub
        records | f'{label}Topic' >> WriteDeadLettersToPubSub(args.output_topic)


def _rewindow_global(pcoll, label):
    return pcoll | label >> beam.WindowInto(beam.window.GlobalWindows())


def all_errors(*pcolls):
    """Dead-letter PCollections of several steps (in different windows), flattened in the
    global window."""
    return ([_rewindow_global(pc, f'ErrorsGlobal{i}') for i, pc in enumerate(pcolls)]
            | 'AllErrors' >> beam.Flatten())


def _now_or_later(letter, timestamp=beam.DoFn.TimestampParam):
    """A dead letter stamped with the time it is written (never earlier than its own):
    the letter of data too late for its window must not be late itself."""
    from apache_beam.transforms.window import TimestampedValue
    from apache_beam.utils.timestamp import Timestamp
    yield TimestampedValue(letter, max(Timestamp.now(), timestamp))


def write_dead_letters(errors, args, prefix: str | None = None) -> None:
    """Dead letters (in the global window: :func:`all_errors`) to
    ``<prefix>-<start>-<end>-pane-<i>-<timing>.jsonl`` files (default prefix
    ``--output-errors``), one per ``--window_size`` window of the time they were written
    (processing time: they are written as they come), and ``--dead_letter_topic``."""
    from apache_beam.transforms import trigger
    from apache_beam.utils.timestamp import Duration
    if prefix or getattr(args, 'output', None):
        (errors
         | 'ErrorsStamped' >> beam.FlatMap(_now_or_later)
         | 'ErrorWindows' >> beam.WindowInto(
             beam.window.FixedWindows(args.window_size),
             trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
             accumulation_mode=trigger.AccumulationMode.DISCARDING,
             allowed_lateness=Duration.of(24 * 3600))
         | 'WriteErrorFiles' >> WritePanes(prefix or f'{args.output}-errors', '.jsonl',
                                           write_dead_letter_lines, what='dead letters'))
    if args.dead_letter_topic:
        from beamml.transforms.streaming.pubsub import WriteDeadLettersToPubSub
        (errors
         | 'CountErrorsForTopic' >> beam.ParDo(_CountDeadLetters(args.dead_letter_topic))
         | 'WriteErrorTopic' >> WriteDeadLettersToPubSub(args.dead_letter_topic))


class _CountDeadLetters(beam.DoFn):
    """Passes dead letters on to their topic and logs how many (and how many late) each
    bundle publishes: the count is taken as they pass, no pass of its own."""

    def __init__(self, topic: str):
        self.topic = topic

    def start_bundle(self):
        self.n = self.late = 0

    def process(self, letter):
        self.n += 1
        self.late += str(letter.get('reason', '')).startswith('late')
        yield letter

    def finish_bundle(self):
        if self.n:
            LOG.info('stream: %d dead letters (late: %d) -> %s', self.n, self.late, self.topic)


# ----------------------------------------------------------------------------- running

def streaming_options(options, args=None):
    """The runner for a local stream: the BundleBasedDirectRunner (it runs beamml's local
    Pub/Sub read, TestStream, and a watched pattern's polls as a step that moves the
    watermark: transforms/streaming/local_files.py), so each window is written when it
    closes, with its counters of every bundle (:func:`~beamml.transforms.streaming.
    direct_counts.count_every_bundle`: that runner reports a step's first bundle only);
    Dataflow stays Dataflow."""
    del args   # (every local stream runs there)
    std = options.view_as(StandardOptions)
    if std.runner in (None, 'FnApiRunner', 'DirectRunner', 'SwitchingDirectRunner',
                      LOCAL_STREAMING_RUNNER):
        std.runner = LOCAL_STREAMING_RUNNER
        count_every_bundle()
    return options


def _local(options) -> bool:
    """Whether the stream runs on Beam's BundleBasedDirectRunner, in this process."""
    return options.view_as(StandardOptions).runner == LOCAL_STREAMING_RUNNER


def run_stream(p, args):
    """Run a streaming pipeline and watch it (:mod:`~beamml.pipelines._platform.supervise`):
    credentials and the Pub/Sub resources are checked first (one line, exit 2); a
    pipeline that fails, or whose Pub/Sub resources go, ends the run with one line within
    seconds; with ``--stop_after`` it is cancelled after that many seconds (a
    watched-files source ends by itself then). Returns the PipelineResult."""
    from beamml.pipelines._platform import supervise
    supervise.preflight(args)
    stop_after = getattr(args, 'stop_after', None)
    if getattr(args, 'watch_interval', None) is not None:
        stop_after = None   # a watched pattern stops polling at --stop_after by itself, then
        #                     writes its last windows: a cancel would drop them
    if not _local(p.options):   # Dataflow: it reports a failed job itself
        return supervise.supervise(p.run(), stop_after, local=False)
    count_every_bundle()   # (once: a local stream built without streaming_options counts too)
    with supervise.BundleFailures() as failures:   # the first failed bundle, as one line
        return supervise.supervise(p.run(), stop_after, supervise.pubsub_resources(args),
                                   failures)


def run_and_count(p, args, errors_glob: str | None = None):
    """:func:`run_stream`, then the one records line, ``records_read = records_ok +
    records_refused`` checked (a BeammlError when it is off). The counts are Beam's
    committed counters on every runner (on the local one, of every bundle:
    :func:`streaming_options`); a bundle that failed and was retried counts once."""
    from beamml.pipelines._platform.main import check_counts, record_counts, records_line
    result = run_stream(p, args)
    counts = record_counts(result)
    if counts is None:
        print('records: counts not reported by this runner')
        return result
    print(records_line(counts, errors_glob))
    check_counts(counts)
    return result
