"""Monitor a data set against a baseline: statistics, drift, alarms, the retraining decision.

    beamml monitor --input 'data/*.parquet' --model models/blobs --output out/monitor/ \\
        [--config configs/monitor.yaml] [--retrain]
    beamml monitor --make_baseline --input 'data/*.parquet' [--model models/blobs] \\
        --output out/baseline/

The baseline is ``baseline.json`` of the model's version (``beamml kmeans`` writes
one), or ``--baseline PATH``. One pass of mergeable statistics over the input, then
per feature (and the L2 norm) PSI and JS divergence against the baseline on the
baseline's bins; with a model the cluster shares' L-infinity change, the mean-distance
ratio and the far-point share ratio. Thresholds and retraining rules come from
``--config`` (the monitoring config, configs/monitor.yaml; not a run config as for the
other pipelines). Writes OUTPUT/statistics.json, drift.json, alarms.jsonl,
decision.json, report_data.json, report.html and the dead letters, committed once with _SUCCESS;
prints one summary line; exits 3 when an alarm fired (after the outputs are
committed). ``--retrain``: when decision.json says retrain, trains a candidate model
version with ``beamml kmeans`` (LATEST is not moved).

Streaming (``--streaming --window_size S``): the same per event-time window, from
Pub/Sub or a watched pattern: OUTPUT/drift-<window>-pane-*.jsonl,
OUTPUT/alarms-<window>-...jsonl and OUTPUT/decision-<window>-...jsonl (the rules
over consecutive windows, kept in a single-key state). See docs/pipelines/monitor.md.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beamml.pipelines._platform.exits import Exit
from beamml.pipelines._platform import runs, streams
from beamml.pipelines._platform import cli, flags, main as process, runners
from beamml.pipelines.monitor import streaming as monitor_streaming
from beamml.pipelines.monitor.report import REPORT_FILE, write_monitor_report
from beamml.pipelines.monitor.streaming import _BATCH_ONLY  # noqa: F401 (the templates read it)
from beamml.transforms.core.errors import COUNTER_NAMESPACE, BeammlError
from beamml.transforms.io import ReadPoints, WriteDeadLetters
from beamml.transforms.core.documents import dumps, exists, read_json, write_json, write_text
from beamml.transforms.model import CentroidModel
from beamml.transforms.monitoring import (BASELINE_FILE, MakeBaseline, MonitorStatistics,
                                          column_names, decide, drift_document, load_baseline,
                                          load_monitor_config, report_data, summary_line,
                                          window_summary, write_baseline)

LOG = logging.getLogger('beamml')
EXIT_ALARM = int(Exit.ALARM)
OUTPUT_FILES = ('statistics.json', 'drift.json', 'alarms.jsonl', 'decision.json',
                'report_data.json', 'report.html')




class AlarmError(BeammlError):
    """An alarm fired (exit code :data:`EXIT_ALARM`), raised after the outputs committed."""
    exit_code = EXIT_ALARM


class MonitorOptions:
    """The flags of ``beamml monitor`` (a plain class: see pipelines/assign/__init__.py)."""
    #: required in batch (a stream reads a subscription or a topic instead): the platform
    #: checks them, the batch Flex template marks them required
    REQUIRED_IN_BATCH = ('input', 'output')


    @classmethod
    def _add_argparse_args(cls, parser):
        flags.add_input_args(parser, required=False)
        parser.add_argument('--model', default=None,
                            help='model directory (its LATEST version), version directory or '
                                 'model.json; its version folder holds the baseline')
        parser.add_argument('--baseline', default=None,
                            help='a baseline.json or a folder holding one (default: the '
                                 "model version's baseline.json)")
        parser.add_argument('--monitor_config', default=None,
                            help='the monitoring config (YAML: thresholds, features, rules, '
                                 'retrain, history); --config FILE is the same')
        parser.add_argument('--output', default=None,
                            help='output folder (local or gs://); required in batch')
        parser.add_argument('--make_baseline', action='store_true',
                            help='write OUTPUT/baseline.json from the input (and --model) '
                                 'instead of monitoring')
        parser.add_argument('--retrain', action='store_true',
                            help='when decision.json says retrain: train a candidate model '
                                 'version on the config\'s retrain.input (LATEST not moved)')
        parser.add_argument('--task', choices=('classification',), default=None,
                            help='monitor classification prediction logs (rows truth, '
                                 'prediction) instead of points: label and prediction rates, '
                                 'precision, recall, accuracy, f1 against the baseline\'s')
        parser.add_argument('--truth_column', default='truth',
                            help='with --task: the truth label column (default truth)')
        parser.add_argument('--prediction_column', default='prediction',
                            help='with --task: the predicted label column (default prediction)')
        parser.add_argument('--history', default=None,
                            help='a glob of earlier monitor output folders whose drift.json '
                                 'are the windows before this run (default: the config\'s '
                                 'history)')
        runs.add_run_args(parser)
        streams.add_streaming_args(parser, sliding=False)


def _folder(path: str) -> str:
    return path if path.endswith('/') else path + '/'


def load_inputs(args) -> dict:
    """The model (or None), the baseline and the config, before the graph is built."""
    model = CentroidModel.load(args.model) if args.model else None
    config = load_monitor_config(args.monitor_config)
    baseline = None
    if not args.make_baseline:
        where = args.baseline or (model and os.path.dirname(model.path))
        if not where:
            raise BeammlError('monitor needs --model (its version holds baseline.json) or '
                              '--baseline PATH')
        try:
            baseline = load_baseline(where)
        except BeammlError as e:
            if not str(e).startswith('no baseline at '):
                raise
            raise BeammlError(f'{e} (train with beamml kmeans, which writes one, or make one '
                              'with beamml monitor --make_baseline)') from e
        if model is not None and baseline.with_model:
            bm = baseline.doc['model']
            if bm['k'] != model.k or bm['d'] != model.d:
                raise BeammlError(f'baseline {baseline.path} was made with a model of k={bm["k"]},'
                                  f' d={bm["d"]}; --model has k={model.k}, d={model.d}')
        # the features the config names must be monitored ones (drift.json's names)
        features = ([] if baseline.kind == 'logs' else
                    baseline.names + [baseline.doc['norm_name']])
        config.check_features(features, f'the baseline {baseline.path}')
    return {'model': model, 'config': config, 'baseline': baseline}


def check_names(names: list[str], baseline, source: str) -> None:
    if names != baseline.names:
        raise BeammlError(f'{source} has the features {", ".join(names)}; the baseline '
                          f'{baseline.path} has {", ".join(baseline.names)}')


def read_history(pattern: str | None, output: str) -> list[dict]:
    """The drift documents of earlier committed monitor runs (folders matching
    ``pattern`` with a _SUCCESS, sorting before ``output``), oldest first."""
    if not pattern:
        return []
    try:
        found = FileSystems.match([_folder(pattern) + 'drift.json'])[0].metadata_list
    except Exception:
        return []
    here = _folder(output)
    out = []
    for m in sorted(found, key=lambda m: m.path):
        folder = m.path[:-len('drift.json')]
        if folder >= here or not exists(folder + '_SUCCESS'):
            continue
        doc = read_json(m.path)
        doc['run'] = folder
        out.append(doc)
    return out


def write_results(profile: dict, output: str, baseline, config, history: list[dict],
                  retrain_input: str | None, run_name: str | None = None) -> dict:
    """The one element: drift, alarms, decision and report data, written whole under
    ``output`` (a retry rewrites the same content); ``run_name`` names this window in the
    decision (the final output folder)."""
    drift = drift_document(baseline, profile, config)
    drift['run'] = run_name or _folder(output)
    decision = decide(history + [drift], config, retrain_input)
    alarms = drift['alarms']
    Metrics.counter(COUNTER_NAMESPACE, 'alarms').inc(len(alarms))
    join = FileSystems.join
    write_json(join(output, 'statistics.json'), profile, indent=1)
    write_json(join(output, 'drift.json'), drift, indent=1)
    write_text(join(output, 'alarms.jsonl'), ''.join(dumps(a) + '\n' for a in alarms))
    write_json(join(output, 'decision.json'), decision, indent=1)
    data = report_data(baseline, profile, drift, decision,
                       [window_summary(d) for d in history + [drift]])
    write_json(join(output, 'report_data.json'), data, indent=1)
    write_monitor_report(join(output, REPORT_FILE), data)
    return drift


def _read(p, args, ctx: dict):
    """The input's ReadPoints; in a dry run (no input is read) the layout the flags
    declare, the baseline's features (or the model's d) when they give none."""
    if not runners.is_dry_run(p.options):
        return ReadPoints(args.input, **flags.read_kwargs(args))
    baseline, model = ctx.get('baseline'), ctx.get('model')
    features, is_list = (None, None) if baseline is None else _baseline_columns(baseline)
    d = len(baseline.names) if baseline is not None else (model.d if model else None)
    return ReadPoints(args.input, **flags.read_kwargs(
        args, p.options, dimension=d, feature_columns=features, list_features=is_list))


def _baseline_columns(baseline) -> tuple[list[str], bool]:
    """(feature columns, one list column?) that give the baseline's feature names
    (:func:`column_names`: a list column ``f`` of d values is ``f_0 .. f_{d-1}``)."""
    names = baseline.names
    base = names[0].rsplit('_', 1)[0] if names and '_' in names[0] else None
    if base and names == [f'{base}_{i}' for i in range(len(names))]:
        return [base], True
    return list(names), False


def build(p, args, ctx: dict):
    """Read, profile against the baseline, write the results. Returns the dict
    runs.run_committed needs (``read``, ``errors``, ``written``) and ``drift``."""
    baseline, model = ctx['baseline'], ctx['model']
    if baseline.kind == 'logs':
        raise BeammlError(f'baseline {baseline.path} was made from prediction logs: monitor '
                          'them with --task classification')
    read = _read(p, args, ctx)
    check_names(column_names(read.layout), baseline, f'the input {args.input}')
    if model is not None:
        model.check_dimension(read.layout.dimension, f'the input {args.input}')
    points = p | 'ReadPoints' >> read
    model_pc = None
    if model is not None and baseline.with_model:
        model_pc = p | 'CentroidModel' >> beam.Create([model])
    refused = points.errors | 'CountRefused' >> beam.combiners.Count.Globally()
    profile = points.batches | 'MonitorStatistics' >> MonitorStatistics(
        baseline, model_pc, refused)
    drift = profile | 'DriftAlarmsDecision' >> beam.Map(
        write_results, args.output, baseline, ctx['config'], ctx['history'],
        ctx['retrain_input'], ctx.get('run_name'))
    letters = points.errors | 'WriteDeadLetters' >> WriteDeadLetters(
        FileSystems.join(args.output, 'monitor'))
    return {'read': points, 'errors': points.errors, 'written': [drift, letters],
            'drift': drift}


def _read_logs(p, args):
    """--task: read and parse the prediction logs; (reader outputs, parsed, refused count,
    all dead letters)."""
    from beamml.transforms.core.errors import ERRORS
    from beamml.transforms.io import ReadTable
    from beamml.transforms.metrics import ParsePredictionLogs
    kwargs = dict(input_format=args.input_format, source_columns=True,
                  **({'id_column': args.id_column} if args.id_column else {}))
    dry_run = runners.is_dry_run(p.options)   # (no input is read: the flags name the columns)
    read = ReadTable(args.input, **(flags.declare_layout(args.input, kwargs, points=False)
                                    if dry_run else kwargs))
    columns = {'truth': args.truth_column, 'prediction': args.prediction_column}
    missing = [f'{c!r} (--{n}_column)' for n, c in columns.items()
               if c not in read.layout.columns and not dry_run]
    if missing:
        raise BeammlError(f'{read.paths[0]} has no column {", ".join(missing)}; its columns '
                          f'are {", ".join(read.layout.columns)}')
    logs = p | 'ReadLogs' >> read
    parsed = logs.batches | 'ParseLogs' >> ParsePredictionLogs(
        'classification', columns, (), 'int64', read.layout.input_format)
    errors = (logs[ERRORS], parsed[ERRORS]) | 'AllDeadLetters' >> beam.Flatten()
    refused = errors | 'CountRefused' >> beam.combiners.Count.Globally()
    return logs, parsed, refused, errors


def build_logs(p, args, ctx: dict, *, make_baseline: bool = False):
    """--task classification: the logs profile against a logs baseline (or, with
    ``make_baseline``, the baseline itself)."""
    from beamml.transforms.monitoring.logs import LogsProfile, logs_baseline
    baseline = ctx['baseline']
    if baseline is not None and baseline.kind != 'logs':
        raise BeammlError(f'baseline {baseline.path} is a points baseline; --task '
                          'classification needs one made from prediction logs (beamml monitor '
                          '--make_baseline --task classification)')
    logs, parsed, refused, errors = _read_logs(p, args)
    profile = parsed.rows | 'LogsProfile' >> LogsProfile(refused)
    errors = (errors, profile['errors']) | 'AllErrors' >> beam.Flatten()
    if make_baseline:
        written = profile['profile'] | 'WriteBaseline' >> beam.Map(
            lambda d, path, src: write_baseline(path, logs_baseline(d, src)),
            FileSystems.join(args.output, BASELINE_FILE), args.input)
    else:
        written = profile['profile'] | 'DriftAlarmsDecision' >> beam.Map(
            write_results, args.output, baseline, ctx['config'], ctx['history'],
            ctx['retrain_input'], ctx.get('run_name'))
    letters = errors | 'WriteDeadLetters' >> WriteDeadLetters(
        FileSystems.join(args.output, 'monitor'))
    return {'read': logs, 'errors': errors, 'written': [written, letters]}


def build_baseline(p, args, ctx: dict):
    """--make_baseline: read, two passes, OUTPUT/baseline.json."""
    read = _read(p, args, ctx)
    model = ctx['model']
    if model is not None:
        model.check_dimension(read.layout.dimension, f'the input {args.input}')
    points = p | 'ReadPoints' >> read
    model_pc = p | 'CentroidModel' >> beam.Create([model]) if model is not None else None
    refused = points.errors | 'CountRefused' >> beam.combiners.Count.Globally()
    doc = points.batches | 'MakeBaseline' >> MakeBaseline(
        column_names(read.layout), model_pc, model=model, refused=refused, source=args.input)
    written = doc | 'WriteBaseline' >> beam.Map(
        lambda d, path: write_baseline(path, d), FileSystems.join(args.output, BASELINE_FILE))
    letters = points.errors | 'WriteDeadLetters' >> WriteDeadLetters(
        FileSystems.join(args.output, 'monitor'))
    return {'read': points, 'errors': points.errors, 'written': [written, letters]}


def _split_config(argv):
    """``--config FILE`` is the monitoring config here (``--monitor_config``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, path = cli._pop_config(argv)
    if path and not any(a == '--monitor_config' or a.startswith('--monitor_config=')
                        for a in rest):
        rest += ['--monitor_config', path]
    return rest


def retrain_input(args, config) -> str | None:
    pattern = config.retrain.get('input')
    if pattern and runs.PLACEHOLDER.search(pattern):
        if args.date is None:
            raise BeammlError(f'{config.source}: retrain.input {pattern} has a {{date}} '
                              'placeholder: give --date')
        pattern = runs.PLACEHOLDER.sub(
            lambda m: args.date.strftime(m.group(1) or '%Y-%m-%d'), pattern)
    return pattern


def retrain(args, ctx: dict, decision: dict):
    """Train a candidate version with ``beamml kmeans`` on the retrain window, from the
    current centres, with the current k; LATEST is not moved. Returns the model."""
    from beamml.pipelines import kmeans
    model, config = ctx['model'], ctx['config']
    if not ctx['retrain_input']:
        raise BeammlError(f'--retrain: {config.source} has no retrain.input (the data window '
                          'to train on)')
    version_dir = os.path.dirname(model.path)
    model_dir = config.retrain.get('model_dir') or os.path.dirname(version_dir.rstrip('/'))
    fd, init = tempfile.mkstemp(suffix='.npy', prefix='monitor-init-')
    os.close(fd)
    np.save(init, model.centers)
    argv = ['--input', ctx['retrain_input'], '--k', str(model.k), '--init', init,
            '--model', model_dir, '--no_latest', '--distance', model.distance]
    for key in ('max_iter', 'tol'):
        if key in config.retrain:
            argv += [f'--{key}', str(config.retrain[key])]
    for flag in ('input_format', 'id_column', 'feature_columns'):
        if getattr(args, flag):
            argv += [f'--{flag}', str(getattr(args, flag))]
    LOG.info('monitor: rules %s fired: training a candidate: beamml kmeans %s',
             ', '.join(decision['fired']), ' '.join(argv))
    try:
        return kmeans.run(argv)
    finally:
        os.remove(init)


@runners.pipeline_run
def run(argv=None):
    args, options = cli.parse_args(MonitorOptions, _split_config(argv), prog='beamml monitor',
                                      config_help='the monitoring config (YAML: thresholds, '
                                                  'rules, retrain, history), e.g. '
                                                  'configs/monitor.yaml; not a run config',
                                      description=__doc__, streaming=True)
    streams.check_streaming_args(args, options)
    if args.retrain and (args.make_baseline or not args.model):
        raise BeammlError('--retrain needs --model (the model to retrain) and no '
                          '--make_baseline')
    if args.retrain and runners.is_launch_only(options) and not runners.is_dry_run(options):
        raise BeammlError(f'--retrain trains after the monitoring job, from this process: it '
                          f'must wait for the job ({runners.LAUNCH_ONLY_VARIABLE} is set)')
    for flag in ('model', 'baseline', 'monitor_config'):   # the job is built from them
        runners.local_for_dry_run(options, flag, getattr(args, flag))
    ctx = load_inputs(args)
    if streams.is_streaming(options):
        if args.task:
            raise BeammlError('--task (prediction logs) is monitored in batch; --streaming '
                              'monitors points')
        return monitor_streaming.run_streaming(args, options, ctx)
    errors_glob = lambda out: WriteDeadLetters.glob(FileSystems.join(out, 'monitor'))  # noqa: E731
    if args.task and args.retrain:
        raise BeammlError('--retrain trains a K-means model from points; it does not go with '
                          '--task (prediction logs)')
    if args.make_baseline:
        build_fn = (functools.partial(build_logs, ctx=ctx, make_baseline=True) if args.task
                    else functools.partial(build_baseline, ctx=ctx))
        return runs.run_and_show(
            args, options, 'monitor', build_fn,
            lambda _: print(f'baseline: {FileSystems.join(args.output, BASELINE_FILE)}'),
            folder=True, errors_glob=errors_glob)
    ctx['retrain_input'] = retrain_input(args, ctx['config'])
    ctx['history'] = ([] if runners.is_dry_run(options)   # a dry run touches no storage
                      else read_history(args.history or ctx['config'].history, args.output))
    ctx['run_name'] = _folder(args.output)

    def show(_):
        alarms = read_json(FileSystems.join(args.output, 'drift.json'))['alarms']
        decision = read_json(FileSystems.join(args.output, 'decision.json'))
        print(summary_line(alarms))
        print(f'retrain: {str(decision["retrain"]).lower()}'
              + (f' (rules {", ".join(decision["fired"])})' if decision['fired'] else ''))
        print(f'results: {_folder(args.output)}{{{",".join(OUTPUT_FILES)}}}')
        if decision['retrain'] and args.retrain:
            candidate = retrain(args, ctx, decision)
            print(f'candidate model: {os.path.dirname(candidate.path)} (version '
                  f'{candidate.version}; LATEST not moved)')
        if alarms:
            raise AlarmError(f'{len(alarms)} alarm(s) fired (exit code {EXIT_ALARM}); see '
                             f'{FileSystems.join(args.output, "alarms.jsonl")}')
    return runs.run_and_show(args, options, 'monitor', functools.partial(
        build_logs if args.task else build, ctx=ctx), show, folder=True,
        errors_glob=errors_glob)


if __name__ == '__main__':
    sys.exit(process.main_wrapper(run, prog='beamml monitor'))
