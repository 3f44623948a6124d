"""The report of a ``beamml kmeans`` training: ``<model_dir>/<version>/report.html``.

One self-contained HTML file (:mod:`beamml.transforms.report`): the training
summary, the inertia per iteration, the cluster sizes, and a 2-D principal-axes
projection of a sample of the training points coloured by cluster, the centres
marked. The sample is read in the launcher, bounded and deterministic: from the
point cache when it is on this machine (evenly spaced rows of up to
:data:`MAX_CACHE_FILES` of its files, memory-mapped, so only those rows are
read), else the first :data:`SAMPLE_POINTS` rows of the input. Labels are the
final E-step's (the Lloyd kernel against the final centres, as ``--output``).

A report that cannot be made never fails the training: :func:`write_report`
logs one warning line and returns None.
"""
from __future__ import annotations

import logging

import numpy as np

from beamml.transforms.distances import unit_rows
from beamml.transforms.io import ReadPoints, read_file_batches, to_points
from beamml.transforms.core.documents import is_remote, join
from beamml.transforms.kmeans.cache import read_cached_points
from beamml.transforms.kmeans.kernels import lloyd_labels
from beamml.transforms.pca import PCAModel
from beamml.transforms.report import (PALETTE, Report, bars_with_thresholds, lines, scatter,
                                      spans_decades)

__all__ = ['REPORT_FILE', 'SAMPLE_POINTS', 'training_sample', 'projection', 'kmeans_report',
           'write_report']

LOG = logging.getLogger('beamml')
REPORT_FILE = 'report.html'
#: points sampled for the projection
SAMPLE_POINTS = 5000
#: cache files the sample is taken from (evenly spread over the sorted manifest)
MAX_CACHE_FILES = 64


def _cache_sample(paths: list[str], n: int) -> tuple[np.ndarray, str] | None:
    """Evenly spaced rows of up to MAX_CACHE_FILES local cache files (None: none usable)."""
    paths = sorted(paths)
    if not paths or any(is_remote(p) for p in paths):
        return None
    pick = sorted(set(np.linspace(0, len(paths) - 1, min(len(paths), MAX_CACHE_FILES))
                      .round().astype(int).tolist()))
    arrays = [read_cached_points(paths[i])[0] for i in pick]   # memory-mapped
    sizes = np.array([len(a) for a in arrays])
    total = int(sizes.sum())
    if total == 0:
        return None
    rows = np.unique(np.linspace(0, total, min(n, total), endpoint=False).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = [np.asarray(a[rows[(rows >= lo) & (rows < hi)] - lo], dtype=np.float64)
             for a, lo, hi in zip(arrays, offsets[:-1], offsets[1:])]
    how = (f'{len(rows):,} evenly spaced points of {total:,} in {len(pick)} of the '
           f'{len(paths)} batch(es) of the point cache')
    return np.concatenate(parts), how


def _input_head(read: ReadPoints, n: int, refuse_zero: bool) -> tuple[np.ndarray, str]:
    """The first ``n`` accepted rows of the input, in file order."""
    got, count = [], 0
    for path in read.paths:
        for item in read_file_batches(path, read.layout):
            if isinstance(item, dict):
                continue
            batch, _ = to_points(item, read.layout, path, refuse_zero=refuse_zero)
            if batch is None or not batch.num_rows:
                continue
            X = batch.column('features').flatten().to_numpy(zero_copy_only=False)
            X = X.reshape(batch.num_rows, read.layout.dimension)[:n - count]
            got.append(X)
            count += len(X)
            if count >= n:
                break
        if count >= n:
            break
    X = np.concatenate(got) if got else np.empty((0, read.layout.dimension))
    return X, f'the first {len(X):,} rows of the input'


def training_sample(state, manifest: list[str] | None, read_input, n: int = SAMPLE_POINTS
                    ) -> tuple[np.ndarray, str]:
    """(sample in the training's coordinates, where it came from): centred points
    (cosine: unit points), as the point cache holds them.

    ``manifest``: the point cache's files (None: unknown); ``read_input``: a
    callable giving the input's :class:`ReadPoints`, used when the cache is not
    on this machine or is gone.
    """
    found = None
    if manifest:
        try:
            found = _cache_sample(manifest, n)
        except OSError:   # the cache is gone (a resumed run on another machine)
            found = None
    if found is not None:
        return found
    X, how = _input_head(read_input(), n, refuse_zero=state.distance == 'cosine')
    if state.distance == 'cosine':
        X = unit_rows(X)[0]
    else:
        X = X - state.mean
    return X, how


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
                 read_input) -> str | None:
    """Write ``<model_dir>/<version>/report.html`` (``training``: the
    :class:`~beamml.pipelines.kmeans.checkpoint.TrainingRun`, before its folder and
    cache are removed; ``read_input``: a callable giving the input's ReadPoints); on
    any error log one warning line and return None (the training goes on)."""
    path = join(model_dir, training.version, REPORT_FILE)
    try:
        try:
            manifest = training.manifest()
        except Exception:   # no manifest (a resumed run whose folder lost it)
            manifest = None
        sample, how = training_sample(state, manifest, read_input)
        kmeans_report(res, state, version=training.version, counts=counts,
                      config=training.config(), input_pattern=input_pattern, sample=sample,
                      sample_source=how).write(path)
        return path
    except Exception as e:   # never fail the training for its report
        first = str(e).splitlines()[0] if str(e) else ''
        LOG.warning('kmeans %s: no report written (%s: %s)', training.version,
                    type(e).__name__, first)
        return None
