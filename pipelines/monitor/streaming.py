"""``beamml monitor --streaming``: statistics, drift, alarms and the retraining decision per
event-time window, from Pub/Sub or a watched file pattern.

Per window (``--window_size``; a late pane, within ``--allowed_lateness``, holds the
whole window again and replaces the one before) the batch steps run on the window's
points: one pass of :class:`~beamml.transforms.monitoring.ColumnStatsFn`, then the drift
against the baseline. Records, one per window and pane, with ``window_start``,
``window_end``, ``timing`` and ``pane``:

* ``OUTPUT/statistics-<start>-<end>-pane-<i>-<timing>.jsonl``: the window's profile;
* ``OUTPUT/drift-...jsonl``: the drift document;
* ``OUTPUT/alarms-...jsonl``: one line per alarm (also published to ``--output_topic``);
* ``OUTPUT/decision-...jsonl``: the rules over the consecutive windows ending with this
  one; the windows' drift values are kept across windows in a single-key state
  (:class:`beamml.transforms.monitoring.windows.DecideFn`), so "PSI > 0.2 in 3 consecutive windows" is evaluated in the
  stream (windows without data break a run of consecutive windows);
* ``OUTPUT/report_data-...jsonl``: the window's report data;
* ``OUTPUT/monitor-errors-*.jsonl``: the dead letters.

``--retrain`` is for batch runs only (a stream never stops to train).
"""
from __future__ import annotations

import argparse
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import FixedWindows

from beamml.pipelines._platform import streams
from beamml.pipelines._platform.flags import check_output, read_kwargs
from beamml.pipelines._platform.runners import is_dry_run, no_results, run_pipeline
from beamml.transforms.core.errors import COUNTER_NAMESPACE, BeammlError
from beamml.transforms.monitoring.windows import DecideFn
from beamml.transforms.monitoring import (ColumnStatsFn, MonitorColumns, drift_document,
                                          make_profile, report_data)

LOG = logging.getLogger('beamml')
_KEY = 'monitor'
#: batch-only flags a streaming run refuses (with their defaults)
_BATCH_ONLY = {'make_baseline': False, 'retrain': False, 'history': None, 'task': None,
               'truth_column': 'truth', 'prediction_column': 'prediction'}


def _profile_with_window(stats, names, edges, with_model, far_index,
                         window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    profile = make_profile(names, stats, edges, with_model, 0, far_index)
    yield {**streams.window_fields(window, pane), 'pane': int(pane.index),
           'window_start_us': int(window.start.micros), 'window_end_us': int(window.end.micros),
           'profile': profile}


def _drift(record, baseline, config):
    w = (record['window_start'], record['window_end'])
    drift = drift_document(baseline, record['profile'], config, w)
    Metrics.counter(COUNTER_NAMESPACE, 'alarms').inc(len(drift['alarms']))
    return {**record, 'drift': drift}


def _strip(record, key):
    out = {k: record[k] for k in ('window_start', 'window_end', 'timing', 'pane')}
    return {**out, **record[key]}


def _report(record, baseline):
    drift = record['drift']
    doc = report_data(baseline, record['profile'], drift, None)
    return {k: record[k] for k in ('timing', 'pane')} | doc


def build_streaming(p, args, ctx: dict, source: dict | None = None) -> dict:
    """The streaming graph (``source``: {'batches', 'errors'} windowed and gated, as tests
    give a TestStream). Returns {'drift', 'alarms', 'decisions', 'errors'}."""
    baseline, model, config = ctx['baseline'], ctx['model'], ctx['config']
    if source is None:
        layout = streams.stream_layout(args, read_kwargs(args),
                                         lambda: args.dimension or len(baseline.names),
                                         dry_run=is_dry_run(p.options))
        from beamml.transforms.monitoring import column_names
        names = column_names(layout)
        if names != baseline.names:
            raise BeammlError(f'the stream has the features {", ".join(names)}; the baseline '
                              f'{baseline.path} has {", ".join(baseline.names)} (give '
                              '--feature_columns as at training)')
        source = streams.read_stream(p, args, layout, points=True, accumulating=True,
                                       refuse_zero=model is not None
                                       and model.distance == 'cosine')
    with_model = model is not None and baseline.with_model
    k = baseline.doc['model']['k'] if with_model else None
    edges = baseline.edges if with_model else baseline.edges[:len(baseline.names) + 1]
    model_pc = p | 'CentroidModel' >> beam.Create([model]) if with_model else None
    records = (source['batches']
               | 'MonitorColumns' >> MonitorColumns(model_pc)
               | 'ColumnStatistics' >> beam.CombineGlobally(
                   ColumnStatsFn(len(edges), k, edges)).without_defaults()
               | 'Profile' >> beam.FlatMap(_profile_with_window, baseline.names, edges,
                                           with_model, baseline.doc.get('far_index'))
               | 'Drift' >> beam.Map(_drift, baseline, config))
    alarms = records | 'Alarms' >> beam.FlatMap(
        lambda r: [{**a, 'timing': r['timing'], 'pane': r['pane']} for a in r['drift']['alarms']])
    decisions = (records
                 | 'Rewindow' >> beam.WindowInto(beam.window.GlobalWindows())
                 | 'OneKey' >> beam.Map(lambda r: (_KEY, r))
                 | 'DecideAcrossWindows' >> beam.ParDo(DecideFn(config, args.window_size * 1e6))
                 | 'BackToWindows' >> beam.WindowInto(FixedWindows(args.window_size)))
    out = args.output
    quiet = argparse.Namespace(**{**vars(args), 'output_topic': None})
    join = FileSystems.join
    for label, name, pcoll, a in (
            ('WriteStatistics', 'statistics',
             records | 'StatisticsRecords' >> beam.Map(_strip, 'profile'), quiet),
            ('WriteDrift', 'drift', records | 'DriftRecords' >> beam.Map(_strip, 'drift'), quiet),
            ('WriteReportData', 'report_data',
             records | 'ReportRecords' >> beam.Map(_report, baseline), quiet),
            ('WriteAlarms', 'alarms', alarms, args),
            ('WriteDecisions', 'decision', decisions, quiet)):
        streams.write_records(pcoll, a, prefix=out and join(out, name), label=label)
    errors = streams.all_errors(source['errors'])
    streams.write_dead_letters(errors, args, out and join(out, 'monitor-errors'))
    return {'drift': records, 'alarms': alarms, 'decisions': decisions, 'errors': errors}


def run_streaming(args, options, ctx: dict):
    given = [f for f, default in _BATCH_ONLY.items() if getattr(args, f) != default]
    if given:
        raise BeammlError(f'--{given[0]} is for a batch run; a stream monitors each window '
                          'against an existing baseline (its rules keep their own state)')
    if ctx['baseline'] is None:
        raise BeammlError('monitor --streaming needs a baseline (--model or --baseline)')
    if args.output and not is_dry_run(options):
        check_output(FileSystems.join(args.output, 'drift'))
    p = beam.Pipeline(options=streams.streaming_options(options, args))
    build_streaming(p, args, ctx)
    if no_results(options):
        return run_pipeline(p)
    result = streams.run_and_count(p, args, streams.dead_letter_glob(
        args, args.output and FileSystems.join(args.output, 'monitor-errors')))
    if args.output:
        print(f'monitor: per window under {args.output}: statistics-, drift-, alarms-, '
              'decision-, report_data-<window start>-<window end>-pane-<i>-<timing>.jsonl')
    return result
