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
  (:class:`DecideFn`), so "PSI > 0.2 in 3 consecutive windows" is evaluated in the
  stream (windows without data break a run of consecutive windows);
* ``OUTPUT/report_data-...jsonl``: the window's report data;
* ``OUTPUT/monitor-errors-*.jsonl``: the dead letters.

``--retrain`` is for batch runs only (a stream never stops to train).
"""
from __future__ import annotations

import argparse
import logging

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beamml.pipelines import common, streaming
from beamml.transforms.io import COUNTER_NAMESPACE, BeammlError
from beamml.transforms.monitoring import (ColumnStatsFn, MonitorColumns, decide,
                                          drift_document, make_profile, report_data)

LOG = logging.getLogger('beamml')
_KEY = 'monitor'


def _profile_with_window(stats, names, edges, with_model, far_index,
                         window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    profile = make_profile(names, stats, edges, with_model, 0, far_index)
    yield {**streaming.window_fields(window, pane), 'pane': int(pane.index),
           'window_start_us': int(window.start.micros), 'window_end_us': int(window.end.micros),
           'profile': profile}


def _drift(record, baseline, config):
    w = (record['window_start'], record['window_end'])
    drift = drift_document(baseline, record['profile'], config, w)
    Metrics.counter(COUNTER_NAMESPACE, 'alarms').inc(len(drift['alarms']))
    return {**record, 'drift': drift}


def _compact(drift: dict) -> dict:
    """What the rules read of a window's drift (its values), for the state."""
    return {'window_start': drift['window_start'], 'window_end': drift['window_end'],
            'features': {n: {m: {'value': e['value']} for m, e in ms.items()}
                         for n, ms in drift['features'].items()},
            'model': {m: {'value': e['value']} for m, e in (drift.get('model') or {}).items()}}


class DecideFn(beam.DoFn):
    """One key: the drift values of the latest windows (by window start), and per window
    the decision over the consecutive windows that end with it. Emits each decision
    stamped in its own window (re-windowed by the caller)."""

    WINDOWS = ReadModifyWriteStateSpec('windows', PickleCoder())

    def __init__(self, config, window_us: int):
        self.config, self.window_us = config, int(window_us)
        self.keep = max([r['consecutive'] for r in config.rules] or [1])

    def process(self, element, windows=beam.DoFn.StateParam(WINDOWS)):
        _, record = element
        seen = windows.read() or {}
        start = record['window_start_us']
        seen[start] = _compact(record['drift'])
        run = []
        s = start
        while s in seen and len(run) < self.keep:   # the consecutive windows ending here
            run.insert(0, seen[s])
            s -= self.window_us
        newest = max(seen)
        windows.write({k: v for k, v in seen.items()
                       if k > newest - (self.keep + 1) * self.window_us})
        decision = decide(run, self.config)
        out = {k: record[k] for k in ('window_start', 'window_end', 'timing', 'pane')}
        yield TimestampedValue({**out, **decision}, Timestamp(micros=record['window_end_us'] - 1))


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
        layout = streaming.stream_layout(args, common.read_kwargs(args),
                                         lambda: args.dimension or len(baseline.names),
                                         dry_run=common.is_dry_run(p.options))
        from beamml.transforms.monitoring import column_names
        names = column_names(layout)
        if names != baseline.names:
            raise BeammlError(f'the stream has the features {", ".join(names)}; the baseline '
                              f'{baseline.path} has {", ".join(baseline.names)} (give '
                              '--feature_columns as at training)')
        source = streaming.read_stream(p, args, layout, points=True, accumulating=True,
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
        streaming.write_records(pcoll, a, prefix=out and join(out, name), label=label)
    errors = streaming.all_errors(source['errors'])
    streaming.write_dead_letters(errors, args, out and join(out, 'monitor-errors'))
    return {'drift': records, 'alarms': alarms, 'decisions': decisions, 'errors': errors}


def run_streaming(args, options, ctx: dict):
    from beamml.pipelines.monitor import _BATCH_ONLY
    given = [f for f, default in _BATCH_ONLY.items() if getattr(args, f) != default]
    if given:
        raise BeammlError(f'--{given[0]} is for a batch run; a stream monitors each window '
                          'against an existing baseline (its rules keep their own state)')
    if ctx['baseline'] is None:
        raise BeammlError('monitor --streaming needs a baseline (--model or --baseline)')
    if args.output and not common.is_dry_run(options):
        common.check_output(FileSystems.join(args.output, 'drift'))
    p = beam.Pipeline(options=streaming.streaming_options(options, args))
    build_streaming(p, args, ctx)
    if common.no_results(options):
        return common.run_pipeline(p)
    result = streaming.run_and_count(p, args)
    if args.output:
        print(f'monitor: per window under {args.output}: statistics-, drift-, alarms-, '
              'decision-, report_data-<window start>-<window end>-pane-<i>-<timing>.jsonl')
    return result
