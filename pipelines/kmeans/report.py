"""The report of a ``beamml kmeans`` training: ``<model_dir>/<version>/report.html``.

One self-contained HTML file (:mod:`beamml.transforms.report`): the training
summary, the inertia per iteration, the cluster sizes, and a 2-D principal-axes
projection of a sample of the training points coloured by cluster, the centres
marked. The sample comes from the final pass over the point cache
(pipelines/kmeans/final.py): up to :data:`SAMPLE_POINTS` evenly spaced rows of
the whole cache, bounded and deterministic; nothing is read for the report
itself. Labels are the final E-step's (the Lloyd kernel against the final
centres, as ``--output``).

A report that cannot be made never fails the training: :func:`write_report`
logs one warning line and returns None.
"""
from __future__ import annotations

import logging

import numpy as np

from beamml.transforms.core.documents import join
from beamml.transforms.kmeans.kernels import lloyd_labels
from beamml.transforms.pca import PCAModel
from beamml.transforms.report import (PALETTE, Report, bars_with_thresholds, lines, scatter,
                                      spans_decades)

__all__ = ['REPORT_FILE', 'SAMPLE_POINTS', 'projection', 'kmeans_report', 'write_report']

LOG = logging.getLogger('beamml')
REPORT_FILE = 'report.html'
#: points sampled for the projection (by the final pass, pipelines/kmeans/final.py)
SAMPLE_POINTS = 5000


def projection(X: np.ndarray, centres: np.ndarray):
    """(X2, centres2, explained fractions, method): the sample's exact PCA
    (:class:`beamml.transforms.pca.PCAModel`); with one feature or one point there is no
    second axis: the centred feature on x, 0 on y."""
    n, d = X.shape
    if n >= 2 and d >= 2:
        model = PCAModel.fit(X, 2)
        explained = np.nan_to_num(np.asarray(model.explained_variance_ratio, dtype=float))
        return (np.asarray(model.transform(X)), np.asarray(model.transform(centres)),
                explained, 'exact PCA (PCAModel)')
    mean = X.mean(axis=0) if n else np.zeros(d)

    def flat(A):
        out = np.zeros((len(A), 2))
        if d:
            out[:, 0] = A[:, 0] - mean[0]
        return out
    return flat(X), flat(centres), np.array([1.0 if n >= 2 else 0.0, 0.0]), 'one axis'


def kmeans_report(res, state, *, version: str, counts: dict, config: dict,
                  input_pattern: str, sample: np.ndarray, sample_source: str) -> Report:
    """The report of a finished training: ``res`` its KMeansResult, ``state`` the kept
    run's final KMeansState, ``sample`` points in the state's coordinates."""
    k = len(res.cluster_sizes)
    report = Report(f'beamml kmeans: model version {version}',
                    f'Input {input_pattern}; k={k}, {res.n_samples:,} points, '
                    f'{res.n_iter} iteration(s), stopped: {res.stop_reason}.')
    report.section('Training summary')
    rows = [('version', version), ('k', k), ('d', res.centers.shape[1]),
            ('n (points trained on)', res.n_samples),
            ('records read / ok / refused', ' / '.join(
                str(counts.get(c, '?')) for c in ('records_read', 'records_ok',
                                                  'records_refused'))),
            ('iterations', res.n_iter), ('inertia', f'{res.inertia:.10g}'),
            ('stop reason', res.stop_reason), ('distance', config.get('distance')),
            ('init', config.get('init')), ('tol (absolute)', f'{res.tol:.6g}'),
            ('random_state', config.get('random_state'))]
    if res.inits:
        rows.append(('n_init', f'{res.n_init} (kept run {res.best_init}, inertias '
                               + ', '.join(f'{r["inertia"]:.6g}' for r in res.inits) + ')'))
    report.table(rows, ['field', 'value'])

    history = list(res.inertia_history)
    report.section('Inertia per iteration', 'The inertia of each Lloyd iteration (labels '
                   'against the centres entering it); a log axis when it spans decades.')
    report.add(lines(range(1, len(history) + 1), {'inertia': history},
                     'Inertia per iteration', 'iteration', 'inertia',
                     log_y=spans_decades(history)))

    report.section('Cluster sizes', 'Points per cluster, labels against the final centres.')
    report.add(bars_with_thresholds([f'cluster {i}' for i in range(k)], res.cluster_sizes,
                                    None, 'Cluster sizes', x_label='points', colors=PALETTE))

    centres = state.centers
    labels = (lloyd_labels(sample, centres, state.centers_sq, return_distances=False)
              if len(sample) else np.empty(0, np.int64))
    X2, C2, explained, method = projection(sample, centres)
    report.section('Projection of a sample', f'Sample: {sample_source}. Projection: '
                   f'{method}. Points coloured by their cluster; diamonds are the centres.')
    report.add(scatter(X2, labels, C2, 'Sample of the training points, 2-D projection',
                       x_label=f'axis 1 ({explained[0]:.1%} of the variance)',
                       y_label=f'axis 2 ({explained[1]:.1%} of the variance)',
                       max_points=SAMPLE_POINTS))
    return report


def write_report(model_dir: str, training, res, state, counts: dict, input_pattern: str,
                 sample: tuple[np.ndarray, str]) -> str | None:
    """Write ``<model_dir>/<version>/report.html`` (``training``: the
    :class:`~beamml.pipelines.kmeans.checkpoint.TrainingRun`; ``sample``: (points in the
    training's coordinates, where they came from), the final pass's); on any error log
    one warning line and return None (the training goes on)."""
    path = join(model_dir, training.version, REPORT_FILE)
    try:
        X, how = sample
        kmeans_report(res, state, version=training.version, counts=counts,
                      config=training.config(), input_pattern=input_pattern, sample=X,
                      sample_source=how).write(path)
        return path
    except Exception as e:   # never fail the training for its report
        first = str(e).splitlines()[0] if str(e) else ''
        LOG.warning('kmeans %s: no report written (%s: %s)', training.version,
                    type(e).__name__, first)
        return None
