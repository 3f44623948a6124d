"""Monitoring: statistics of point batches, the baseline beside a model, drift, alarms and
the retraining decision.

Modules, from the bottom up:

- ``stats``: the column batch (features, L2 norm, distance to the nearest centre), numpy
  kernels for moments, fixed-edge histograms and quantiles, and ``ColumnStatsFn``.
- ``baseline``: profiles, the baseline document (fine edges, drift bins, far threshold).
- ``config``: the monitoring config (thresholds, per-feature overrides, rules, retrain).
- ``drift``: PSI, JS divergence, the drift document, alarms, the decision, report data.
- ``logs``: classification prediction logs: label and prediction rates, the metrics.
- ``transforms``: the Beam composites MonitorStatistics and MakeBaseline.
"""
from beamml.transforms.monitoring.baseline import (BASELINE_FILE, DRIFT_BINS, FINE_BINS, Baseline,
                                                   column_names, load_baseline, make_baseline,
                                                   make_profile, write_baseline)
from beamml.transforms.monitoring.config import (DEFAULT_RULES, DEFAULT_THRESHOLDS, METRICS,
                                                 MonitorConfig, load_monitor_config)
from beamml.transforms.monitoring.drift import (alarms_of, decide, drift_document, js_divergence,
                                                psi, report_data, summary_line, window_summary)
from beamml.transforms.monitoring.stats import (QUANTILES, ColumnStatsFn, bin_counts,
                                                histogram_quantiles, monitor_columns)
from beamml.transforms.monitoring.transforms import MakeBaseline, MonitorColumns, MonitorStatistics

__all__ = [
    'BASELINE_FILE', 'DRIFT_BINS', 'FINE_BINS', 'QUANTILES', 'METRICS', 'DEFAULT_RULES',
    'DEFAULT_THRESHOLDS', 'Baseline', 'ColumnStatsFn', 'MakeBaseline', 'MonitorColumns',
    'MonitorConfig', 'MonitorStatistics', 'alarms_of', 'bin_counts', 'column_names', 'decide',
    'drift_document', 'histogram_quantiles', 'js_divergence', 'load_baseline',
    'load_monitor_config', 'make_baseline', 'make_profile', 'monitor_columns', 'psi',
    'report_data', 'summary_line', 'window_summary', 'write_baseline',
]
