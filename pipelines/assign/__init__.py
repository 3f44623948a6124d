"""Nearest-centroid batch inference: rows id, cluster, distance, model_version for every point.

    beamml assign --input 'data/*.parquet' --model models/ --output out/assigned
                  [--all_distances] [--output_format csv]

``--model`` is a model directory (its LATEST version), a version directory or a
model.json, local or gs://. The model is loaded and its dimension checked
against the data before the graph is built; it then reaches the workers as a
side input. With ``--all_distances`` the rows also hold ``distances``, the
distance to every centre. ``<output>-summary.json`` holds the model version
and the number of points per cluster.

Streaming (``--streaming``): the same assignment per element batch, from
Pub/Sub (``--input_subscription``/``--input_topic``) or a watched file pattern
(``--input PATTERN --watch_interval S``), in event-time windows
(``--window_size``), to per-window files under ``--output`` and/or
``--output_topic``. The model is looked up again every
``--model_refresh_seconds`` (default 60): a new version saved in the model
directory is picked up without a restart, and moving LATEST back rolls back;
every row names its ``model_version`` and carries ``window_start``,
``window_end`` and ``timing`` (on_time or late). See docs/streaming.md.

Deployment (:mod:`beamml.pipelines.assign.deploy`): ``--shadow_model`` compares a
candidate on every point (``<output>-shadow.json``; the rows stay --model's),
``--canary_model`` with ``--canary_fraction F`` serves a stable, hash-of-id share with
it, ``--gate YAML`` decides promote or keep (``<output>-decision.json``) and
``--promote_on_pass`` moves LATEST to the candidate after the run has committed.
"""
from __future__ import annotations

import logging
import sys

import apache_beam as beam
import pyarrow as pa

from beamml.pipelines.assign import deploy as assign_deploy
from beamml.pipelines._platform import runs, streams
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.flags import (add_input_args, add_output_args, check_output,
                                              read_kwargs)
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import (input_files, is_dry_run, local_for_dry_run,
                                                no_results, pipeline_run, run_pipeline)
from beamml.pipelines._platform.values import fraction, positive_seconds
from beamml.transforms.assignment import AssignLatest, AssignNearestCentroid, ClusterSizesFn
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadPoints, WriteDeadLetters, WriteTable
from beamml.transforms.core.documents import read_json, write_json
from beamml.transforms.deployment import (SHADOW_TAG, AssignDeployed, AssignDeployedLatest,
                                          ShadowComparisonFn, VersionCountsFn)
from beamml.transforms.model import CentroidModel
from beamml.transforms.streaming.publish import DEFAULT_MESSAGE_FORMAT, MESSAGE_FORMATS

LOG = logging.getLogger('beamml')


class AssignOptions:
    """The flags of ``beamml assign``.

    Not a ``PipelineOptions`` subclass: Beam parses every registered subclass's
    flags for every pipeline built in the process, so the required ``--model``
    would break other pipelines run in the same process (tests, demo).
    """
    #: required in batch (a stream reads a subscription or a topic instead): the platform
    #: checks them, the batch Flex template marks them required
    REQUIRED_IN_BATCH = ('input', 'output')


    @classmethod
    def _add_argparse_args(cls, parser):
        add_input_args(parser, required=False)
        parser.add_argument('--model', required=True,
                            help='model directory (uses its LATEST version), version '
                                 'directory or model.json; local or gs://')
        add_output_args(parser, required=False)
        runs.add_run_args(parser)
        parser.add_argument('--all_distances', action='store_true',
                            help='also write "distances": the distance to every centre')
        parser.add_argument('--model_refresh_seconds', type=positive_seconds, default=60.0,
                            help='with --streaming: look for a new model version in the '
                                 'model directory every S seconds (default 60)')
        parser.add_argument('--output_topic_format', choices=MESSAGE_FORMATS,
                            default=DEFAULT_MESSAGE_FORMAT,
                            help='with --streaming --output_topic: json (one JSON object '
                                 'per row, the default), json_array (a JSON array of up to '
                                 '1000 rows per message: for throughput) or arrow (Arrow IPC, '
                                 'attribute format=arrow)')
        deploy = parser.add_argument_group('shadow, canary and the promote/keep gate')
        deploy.add_argument('--shadow_model', default=None, metavar='PATH',
                            help='also assign every point with this candidate model and '
                                 'compare it with --model (agreement, inertia, cluster '
                                 'shares) in <output>-shadow.json; the rows stay --model\'s')
        deploy.add_argument('--canary_model', default=None, metavar='PATH',
                            help='assign a deterministic share of the points (by a hash '
                                 'of the id, see --canary_fraction) with this model')
        deploy.add_argument('--canary_fraction', type=fraction, default=None, metavar='F',
                            help='with --canary_model: the share of ids, in [0, 1], it '
                                 'assigns (the same ids in every run and on every machine)')
        deploy.add_argument('--gate', default=None, metavar='YAML',
                            help='with --shadow_model: thresholds on the comparison that '
                                 'decide promote or keep, written to <output>-decision.json')
        deploy.add_argument('--promote_on_pass', action='store_true',
                            help='with --gate (batch): point LATEST of the shadow model\'s '
                                 'model directory at the shadow version when the gate '
                                 'passes, after the run committed (the previous version '
                                 'goes in decision.json and <model dir>/ROLLBACK)')
        streams.add_streaming_args(parser, sliding=False)


#: flags a streaming run refuses (left out of the streaming Flex template)
_BATCH_ONLY = {'promote_on_pass': False}


def assign_schema(id_type: pa.DataType, k: int, all_distances: bool,
                  windowed: bool = False, message_id: bool = False) -> pa.Schema:
    fields = [('id', id_type), ('cluster', pa.int64()), ('distance', pa.float64())]
    if all_distances:
        fields.append(('distances', pa.list_(pa.float64(), k)))
    fields.append(('model_version', pa.string()))
    if windowed:   # the streaming rows: their window and whether it was on time
        fields += [('window_start', pa.timestamp('us', tz='UTC')),
                   ('window_end', pa.timestamp('us', tz='UTC')), ('timing', pa.string())]
    if message_id:   # a Pub/Sub stream: the message each row came from (duplicates)
        fields.append(('message_id', pa.string()))
    return pa.schema(fields)


def load_model(args, dimension: int) -> CentroidModel:
    """Load --model and refuse it when its dimension differs from the data's."""
    model = CentroidModel.load(args.model)
    model.check_dimension(dimension, f'the input {args.input}')
    return model


def summary_path(output: str) -> str:
    return f'{output}-summary.json'


def shadow_path(output: str) -> str:
    return f'{output}-shadow.json'


def decision_path(output: str) -> str:
    return f'{output}-decision.json'


def build(p, args, model: CentroidModel | None = None):
    """Read, assign, write rows, summary and dead letters.

    Returns {'assigned', 'errors', 'sizes', 'model'}; ``model`` is loaded from
    ``args.model`` unless given.
    """
    if is_dry_run(p.options):   # no input is read: the model's d is the default
        model = model or CentroidModel.load(args.model)   # (a local model: see run())
        kwargs = read_kwargs(args, p.options, dimension=model.d)
    else:
        kwargs = read_kwargs(args)
    # the reader's source columns name the file and row of a row refused by assignment
    read = ReadPoints(args.input, source_columns=True, **kwargs)
    if model is None:
        model = load_model(args, read.layout.dimension)
    else:
        model.check_dimension(read.layout.dimension, f'the input {args.input}')
    LOG.info('input: %s, %s, d=%d; model %s: k=%d', input_files(read),
             read.layout.input_format, read.layout.dimension, model.version, model.k)
    schema = assign_schema(read.layout.id_arrow_type, model.k, args.all_distances)
    deploy = assign_deploy.deployment_plan(args, model, read.layout.dimension)

    points = p | 'ReadPoints' >> read
    model_pc = p | 'CentroidModel' >> beam.Create([model])
    if deploy is None:
        assigned = points.batches | 'AssignNearestCentroid' >> AssignNearestCentroid(
            beam.pvalue.AsSingleton(model_pc), all_distances=args.all_distances,
            with_version=True, output_columns=schema.names)
    else:
        other_pc = p | 'CandidateModel' >> beam.Create([deploy.other])
        assigned = points.batches | 'AssignNearestCentroid' >> AssignDeployed(
            beam.pvalue.AsSingleton(model_pc), beam.pvalue.AsSingleton(other_pc),
            deploy.mode, canary_fraction=deploy.fraction, all_distances=args.all_distances,
            output_columns=schema.names)
    rows = assigned.batches
    written = [rows | 'WriteAssignments' >> WriteTable(args.output, args.output_format,
                                                       schema=schema)]

    if deploy is not None and deploy.mode == 'canary':
        sizes = rows | 'ClusterSizes' >> beam.CombineGlobally(VersionCountsFn(
            [model.version, deploy.other.version], [model.k, deploy.other.k]))
        written.append(sizes | 'WriteSummary' >> beam.Map(
            assign_deploy.write_canary_summary, model, deploy, summary_path(args.output)))
    else:
        sizes = rows | 'ClusterSizes' >> beam.CombineGlobally(ClusterSizesFn(model.k))
        written.append(sizes | 'WriteSummary' >> beam.Map(
            _write_summary, beam.pvalue.AsSingleton(model_pc), summary_path(args.output)))
    comparison = None
    if deploy is not None and deploy.mode == 'shadow':
        comparison = (assigned[SHADOW_TAG]
                      | 'ShadowBatches' >> beam.Values()
                      | 'CompareShadow' >> beam.CombineGlobally(
                          ShadowComparisonFn((model.k, deploy.other.k)))
                      | 'ShadowDocument' >> beam.Map(deploy.comparison_document))
        written.append(comparison | 'WriteShadow' >> beam.Map(
            assign_deploy.write_document, shadow_path(args.output)))
        if deploy.gate is not None:
            written.append(comparison | 'WriteDecision' >> beam.Map(
                assign_deploy.write_decision, deploy, decision_path(args.output)))

    errors = (points.errors, assigned.errors) | 'AllErrors' >> beam.Flatten()
    written.append(errors | 'WriteErrors' >> WriteDeadLetters(args.output))
    return {'assigned': rows, 'errors': errors, 'sizes': sizes, 'model': model,
            'read': points, 'written': written, 'deploy': deploy, 'comparison': comparison}


def build_streaming(p, args, model: CentroidModel, source: dict | None = None,
                    id_type: pa.DataType | None = None) -> dict:
    """The streaming graph: source (or ``source``, {'batches', 'errors'} already windowed
    and gated, with ids of ``id_type``: tests give a TestStream), AssignLatest,
    per-window rows and dead letters. Returns {'assigned', 'errors', 'schema'}."""
    if source is None:
        layout = streams.stream_layout(args, read_kwargs(args),
                                         lambda: args.dimension or model.d,
                                         dry_run=is_dry_run(p.options))
        id_type = layout.id_arrow_type
    if args.dimension is not None:
        model.check_dimension(args.dimension, '--dimension')
    pubsub = source is None and bool(args.input_subscription or args.input_topic)
    schema = assign_schema(id_type, model.k, args.all_distances, windowed=True,
                           message_id=pubsub)
    if source is None:
        source = streams.read_stream(p, args, layout, points=True, accumulating=False,
                                       refuse_zero=model.distance == 'cosine',
                                       message_ids=pubsub)
    deploy = assign_deploy.deployment_plan(args, model, args.dimension or model.d)
    if deploy is None:
        assigned = source['batches'] | 'AssignNearestCentroid' >> AssignLatest(
            args.model, args.model_refresh_seconds, all_distances=args.all_distances,
            output_columns=schema.names)
    else:
        assigned = source['batches'] | 'AssignNearestCentroid' >> AssignDeployedLatest(
            args.model, args.shadow_model or args.canary_model, deploy.mode,
            args.model_refresh_seconds, canary_fraction=deploy.fraction,
            all_distances=args.all_distances, output_columns=schema.names)
    streams.write_rows(assigned.batches, args, schema, label='WriteAssignments')
    shadow = None
    if deploy is not None and deploy.mode == 'shadow':
        shadow = assign_deploy.write_streaming_shadow(assigned[SHADOW_TAG], args, deploy)
    errors = streams.all_errors(source['errors'], assigned.errors)
    streams.write_dead_letters(errors, args)
    return {'assigned': assigned.batches, 'errors': errors, 'schema': schema,
            'shadow': shadow}


def _model_info(built) -> dict:
    """What _SUCCESS says of the model (pipelines/_platform/runs.py)."""
    model = built['model']
    return {'model': {'version': model.version, 'path': model.path, 'k': model.k,
                      'd': model.d}}


def _write_summary(sizes, model, path) -> str:
    """Write the one small summary file, whole (same content on a retry: idempotent)."""
    return write_json(path, {'model_version': model.version, 'model_path': model.path,
                             'k': model.k, 'd': model.d, 'points': int(sum(sizes)),
                             'cluster_sizes': sizes})


def read_summary(output: str) -> dict:
    return read_json(summary_path(output))


@pipeline_run
def run(argv=None):
    args, options = parse_args(AssignOptions, argv, prog='beamml assign',
                                      description=__doc__, streaming=True)
    streams.check_streaming_args(args, options)
    assign_deploy.check_flags(args, options, streams.is_streaming(options))
    for flag in ('model', 'shadow_model', 'canary_model', 'gate'):   # the job holds them
        local_for_dry_run(options, flag, getattr(args, flag))
    if streams.is_streaming(options):
        return _run_streaming(args, options)

    def show(built):
        model = built['model']
        try:
            sizes = read_summary(args.output)['cluster_sizes']
            print(f'model {model.version}: k={model.k}, d={model.d}; cluster sizes: '
                  + ' '.join(map(str, sizes)))
        except (OSError, ValueError, KeyError, BeammlError):
            print(f'model {model.version}: k={model.k}, d={model.d}')
        print(f'assignments: {args.output}-?????-of-?????.{args.output_format}')
        if built['deploy'] is not None:
            _report_deployment(args, built['deploy'])
    return runs.run_and_show(args, options, 'assign', build, show,
                             errors_glob=WriteDeadLetters.glob, info=_model_info)


def _report_deployment(args, deploy) -> None:
    """Print the canary counts or the shadow comparison, and the gate's decision; with
    --promote_on_pass, promote (the run has committed)."""
    if deploy.mode == 'canary':
        for m in read_summary(args.output)['models']:
            print(f"{m['role']} {m['version']}: {m['points']} points")
        return
    doc = read_json(shadow_path(args.output))
    agree = doc['agreement']
    print(f"shadow {deploy.other.version} vs {deploy.production_version}: agreement "
          + ('n/a' if agree is None else f'{agree:.4f}') + f" on {doc['points']} points; "
          f"inertia per point {_num(doc['production']['inertia_per_point'])} (production), "
          f"{_num(doc['candidate']['inertia_per_point'])} (shadow); {shadow_path(args.output)}")
    if deploy.gate is None:
        return
    path = decision_path(args.output)
    decision = (assign_deploy.promote(args.output, deploy, path) if args.promote_on_pass
                else read_json(path))
    line = f"gate: {decision['decision']} ({decision['reason']}); {path}"
    if decision.get('promoted'):
        line += (f"; LATEST of {deploy.candidate_dir}: {decision['previous_version']} -> "
                 f"{deploy.other.version} (rollback: {decision['rollback_note'] or 'none'})")
    elif args.promote_on_pass:
        line += f'; LATEST of {deploy.candidate_dir} stays {deploy.previous_version}'
    print(line)


def _num(x) -> str:
    return 'n/a' if x is None else f'{x:.6g}'


def _run_streaming(args, options):
    model = CentroidModel.load(args.model)   # the path must hold a model before it starts
    if args.output and not is_dry_run(options):
        check_output(args.output)
    p = beam.Pipeline(options=streams.streaming_options(options, args))
    build_streaming(p, args, model)
    LOG.info('assign --streaming: model %s (k=%d, d=%d) from %s, refreshed every %g s',
             model.version, model.k, model.d, args.model, args.model_refresh_seconds)
    if no_results(options):
        return run_pipeline(p)
    result = streams.run_and_count(p, args, streams.dead_letter_glob(
        args, args.output and f'{args.output}-errors'))
    if args.output:
        print(f'assignments: {args.output}-<window start>-<window end>-pane-<i>-<timing>.'
              f'{args.output_format}; dead letters: {args.output}-errors-*.jsonl')
    return result


if __name__ == '__main__':
    sys.exit(main_wrapper(run, prog='beamml assign'))
