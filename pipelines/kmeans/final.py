"""The final pass of ``beamml kmeans``: one pass over the point cache with the final centres.

After the last block, one pipeline reads each raw cache file once (the points as
read, their ids with ``--output``, their weights) and makes, from that one read,
everything that needs the final centres:

* the final E-step (cluster sizes and inertia against the final centres, in the
  training's coordinates and dtype, bit for bit what ``KMeansFinal`` computes on
  the centred cache); with ``--n_init`` > 1 the last block made it already (it
  picks the run of lowest inertia, so it must come first) and this pass uses
  the kept run;
* the version's ``baseline.json``: the statistics ``MakeBaseline`` computes on the
  raw points (features, L2 norm, distance to the nearest centre, clusters). The
  histogram edges of the features and of the norm come from their min and max,
  computed in the first pass (``ranges.json`` of the run); the distance's range is
  known only at the end of this pass, so its values (8 bytes a point) are binned
  after it, by a step that reads them, not the cache;
* the ``--output`` labels (id, cluster, distance, model_version);
* the report's sample: evenly spaced rows of the whole cache, in the training's
  coordinates.

The raw points, not the centred copy the iterations read, are what this pass
reads: the baseline is about the data as read (a float32 cache, or centred and
then shifted back, would not give the same minima, maxima and bins), and the
centred points are recomputed from them exactly as ``KMeansCentrePoints`` made
them.

Every pipeline of a training goes through :func:`run_counted`, which logs the
records it read from the input and the rows it read from the cache (Beam
counters), and :func:`log_cost` sums them for the run.
"""
from __future__ import annotations

import collections
import io
import logging
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beamml.pipelines._platform import runners
from beamml.pipelines._platform.main import record_counts
from beamml.transforms.core.documents import read_bytes, read_json, write_bytes, write_json
from beamml.transforms.io import WriteTable
from beamml.pipelines._platform import main as process
from beamml.pipelines.kmeans import report as kmeans_report
from beamml.pipelines.kmeans.report import SAMPLE_POINTS
from beamml.transforms.io import WriteDeadLetters
from beamml.transforms.kmeans import CentroidCombineFn, KMeansResult, KMeansRuns, state_from_dict
from beamml.transforms.kmeans.cache import (CACHE_COUNTERS, CACHE_ROWS_READ, read_cached_ids,
                                            read_cached_points, read_cached_weights)
from beamml.transforms.kmeans.centring import labels_batch, unit_points
from beamml.transforms.kmeans.combiners import SumArraysCombineFn
from beamml.transforms.kmeans.lloyd import final_result, final_step
from beamml.transforms.kmeans.runtime import thread_pool
from beamml.transforms.model import CentroidModel
from beamml.transforms.monitoring import BASELINE_FILE, write_baseline
from beamml.transforms.monitoring.baseline import FINE_BINS, fine_edges, make_baseline
from beamml.transforms.monitoring.stats import ColumnStatsFn, bin_counts
from beamml.transforms.norms import row_norms

__all__ = ['SAMPLE_POINTS', 'sample_rows', 'final_pass', 'checkpoint_state', 'finish',
           'run_counted', 'log_cost']

LOG = logging.getLogger('beamml')
_OUTPUTS = ('sums', 'stats', 'distances', 'labels', 'sample')


def _rows_in(path: str) -> int:
    """The rows of a cache file, from its name (``<prefix>-<hash>-<n>[-...].npy``)."""
    return int(path.replace('\\', '/').rsplit('/', 1)[-1].split('-')[2].split('.')[0])


def sample_rows(sizes, n: int = SAMPLE_POINTS) -> tuple[list[np.ndarray], int]:
    """(per file, the local indices of its rows in the sample; the sample's size): up to
    ``n`` evenly spaced rows of the files' rows taken in order (``sizes``: rows per file)."""
    sizes = np.asarray(list(sizes), dtype=np.int64)
    total = int(sizes.sum())
    rows = np.unique(np.linspace(0, total, min(n, total), endpoint=False).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return ([rows[(rows >= lo) & (rows < hi)] - lo for lo, hi in zip(offsets[:-1], offsets[1:])],
            len(rows))


class _FinalPassFn(beam.DoFn):
    """(index, raw cache path) -> the final pass's outputs (module docstring).

    Main output ``'sums'``: the bundle's ClusterSums accumulator of the final E-step
    (with ``sums``); ``'stats'``: the bundle's baseline accumulators (features and
    norm, binned on ``edges``; distance and clusters); ``'distances'``: each batch's
    distances to the nearest centre; ``'labels'``: each batch's labels (with
    ``version``); ``'sample'``: (index, the batch's sampled rows).

    On both cores: the work on a file (:meth:`_part`: the E-step, the nearest
    centres, the statistics, the labels) runs on the E-step's thread pool, up to
    :data:`_IN_FLIGHT` files at once, while this thread reads the next file and
    adds the finished parts into the bundle's accumulators, in the order of the
    files (so the result is bit for bit that of one thread). Each part is large
    numpy work (a whole file), during which numpy releases the GIL. A file is read
    here, not in the pool, so its rows are counted (Beam's counters are per thread).
    """

    def __init__(self, state, model: CentroidModel, *, dtype: str, sums: bool,
                 version: str | None, edges: np.ndarray, rows: list):
        self.state, self.model, self.dtype = state, model, np.dtype(dtype)
        self.sums, self.version, self.edges, self.rows = sums, version, edges, rows
        self.k = state.centers.shape[0]

    def setup(self):
        self.sums_fn, self.features_fn, self.distance_fn = (
            CentroidCombineFn(self.k), ColumnStatsFn(len(self.edges), None, self.edges),
            ColumnStatsFn(1, self.k))

    def start_bundle(self):
        self.sums_acc = self.features_acc = self.distance_acc = None
        self.pending = collections.deque()

    def _part(self, index: int, path: str, X, weights) -> tuple:
        """Everything the final pass computes on one file (no accumulator touched)."""
        X = np.asarray(X, dtype=np.float64)
        # the training's coordinates, exactly as KMeansCentrePoints made them
        Xc = unit_points(X) if self.state.distance == 'cosine' else X
        Xc = (Xc - self.state.mean).astype(self.dtype, copy=False)
        sums = None
        if self.sums:
            sums = final_step((Xc, None) if weights is None else (Xc, None, weights),
                              self.state)
        # the baseline's columns (monitoring's monitor_columns): features, L2 norm, distance
        labels, distances = self.model.nearest(X)
        distances = np.asarray(distances, dtype=np.float64)
        V = np.hstack([X, row_norms(X, 'l2')[:, None]])
        features = self.features_fn.part((V, None))
        distance = self.distance_fn.part((distances[:, None], np.asarray(labels, np.int64)))
        outs = [('distances', distances)]
        if self.version is not None:
            outs.append(('labels', labels_batch(read_cached_ids(path), X, self.state,
                                                self.version)))
        rows = self.rows[index]
        if len(rows):
            outs.append(('sample', (index, np.asarray(Xc[rows], np.float64))))
        return sums, features, distance, outs

    def _add(self, part) -> list:
        """Add a finished part into the accumulators (in file order); its outputs."""
        sums, features, distance, outs = part
        if sums is not None:
            self.sums_acc = self.sums_fn.add_input(
                self.sums_acc or self.sums_fn.create_accumulator(), sums)
        self.features_acc = self.features_fn.add_part(
            self.features_acc or self.features_fn.create_accumulator(), features)
        self.distance_acc = self.distance_fn.add_part(
            self.distance_acc or self.distance_fn.create_accumulator(), distance)
        return outs

    def process(self, element):
        index, path = element
        X, _ = read_cached_points(path)   # the raw points, memory-mapped when local
        args = (index, path, X, read_cached_weights(path))
        pool = thread_pool()
        if pool is None:
            self.pending.append(_Done(self._part(*args)))
        else:
            self.pending.append(pool.submit(self._part, *args))
        while len(self.pending) >= _IN_FLIGHT:
            for tag, value in self._add(self.pending.popleft().result()):
                yield beam.pvalue.TaggedOutput(tag, value)

    def finish_bundle(self):
        def out(tag, value):
            return beam.pvalue.TaggedOutput(tag, WindowedValue(
                value, GlobalWindow().max_timestamp(), [GlobalWindow()]))
        while self.pending:
            for tag, value in self._add(self.pending.popleft().result()):
                yield out(tag, value)
        if self.sums_acc is not None:   # the main output
            yield WindowedValue(self.sums_acc, GlobalWindow().max_timestamp(), [GlobalWindow()])
        if self.features_acc is not None:
            yield out('stats', (self.features_acc, self.distance_acc))
        self.sums_acc = self.features_acc = self.distance_acc = None


class _Done:
    """A part computed on this thread (no pool: one core), as a finished future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


#: files of the final pass worked on at once (the pool's two threads, and one more
#: so that a thread is never idle while this one adds a finished part)
_IN_FLIGHT = 3


def _merged_stats(_, parts, edges: np.ndarray, k: int):
    """(the baseline statistics of every column but the distance's bins, all the edges)."""
    features_fn, distance_fn = ColumnStatsFn(len(edges), None, edges), ColumnStatsFn(1, k)
    f = features_fn.extract_output(features_fn.merge_accumulators([p[0] for p in parts]))
    d = distance_fn.extract_output(distance_fn.merge_accumulators([p[1] for p in parts]))
    moments = {name: np.concatenate([f['moments'][name], d['moments'][name]])
               for name in f['moments']}
    distance_edges = fine_edges(d['moments']['min'], d['moments']['max'], FINE_BINS)
    return ({'rows': f['rows'], 'moments': moments, 'counts': f['counts'],
             'clusters': d['clusters']}, np.vstack([edges, distance_edges]))


def _bin_distances(distances, stats_edges):
    return bin_counts(distances[:, None], stats_edges[1][-1:])


def _write_baseline(stats_edges, distance_counts, *, names, model, refused, source, path):
    stats, edges = stats_edges
    if distance_counts is None:
        distance_counts = np.zeros((1, edges.shape[1] + 1), np.int64)
    stats = {**stats, 'counts': np.vstack([stats['counts'], distance_counts])}
    return write_baseline(path, make_baseline(names, stats, edges, model=model,
                                              refused=refused, source=source))


def _write_result(_, parts, *, state, k, path):
    return write_json(path, final_result(state, parts, combine_fn=CentroidCombineFn(k)).to_dict())


def _write_sample(_, parts, *, path):
    parts = sorted(parts, key=lambda p: p[0])
    X = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, 0))
    buf = io.BytesIO()
    np.save(buf, X)
    return write_bytes(path, buf.getvalue())


def final_pass(args, options, training, state, *, names: list[str], ranges: dict,
               refused: int, sums: bool) -> dict:
    """Run the final pass (module docstring) over the run's raw cache; returns
    {'result': the KMeansResult (with ``sums``, else None), 'sample': (X, how)}.

    ``state``: the final KMeansState (the kept run); ``names``: the baseline's feature
    names; ``ranges``: the first pass's {'min', 'max'} of the features and the norm;
    ``refused``: the input's dead letters (the baseline records them)."""
    paths = training.raw_manifest()
    rows, n_sample = sample_rows(_rows_in(p) for p in paths)
    model = CentroidModel(state.centers + state.mean, version=training.version,
                          distance=state.distance)
    edges = fine_edges(np.array(ranges['min'], dtype=np.float64),
                       np.array(ranges['max'], dtype=np.float64), FINE_BINS)
    k = state.centers.shape[0]
    result_path = FileSystems.join(training.folder, 'final.json')
    sample_path = FileSystems.join(training.folder, 'sample.npy')
    p = beam.Pipeline(options=options)
    outs = (p | 'CacheFiles' >> beam.Create(list(enumerate(paths)))
            | 'FinalPass' >> beam.ParDo(_FinalPassFn(
                state, model, dtype=args.dtype, sums=sums,
                version=training.version if args.output else None, edges=edges, rows=rows))
            .with_outputs(*_OUTPUTS[1:], main='sums'))
    once = p | 'Once' >> beam.Create([None])
    if sums:
        once | 'WriteResult' >> beam.Map(_write_result, beam.pvalue.AsList(outs.sums),
                                         state=state, k=k, path=result_path)
    stats = once | 'BaselineStats' >> beam.Map(_merged_stats, beam.pvalue.AsList(outs.stats),
                                               edges=edges, k=k)
    distance_counts = (outs.distances
                       | 'BinDistances' >> beam.Map(_bin_distances, beam.pvalue.AsSingleton(stats))
                       | 'SumDistanceBins' >> beam.CombineGlobally(SumArraysCombineFn()))
    stats | 'WriteBaseline' >> beam.Map(
        _write_baseline, beam.pvalue.AsSingleton(distance_counts), names=names, model=model,
        refused=refused, source=args.input,
        path=FileSystems.join(args.model, training.version, BASELINE_FILE))
    once | 'WriteSample' >> beam.Map(_write_sample, beam.pvalue.AsList(outs.sample),
                                     path=sample_path)
    if args.output:
        schema = pa.schema([('id', _id_type(paths)), ('cluster', pa.int64()),
                            ('distance', pa.float64()), ('model_version', pa.string())])
        outs.labels | 'WriteLabels' >> WriteTable(args.output, args.output_format, schema=schema)
    run_counted(p, training, 'final pass')
    result = KMeansResult.from_dict(read_json(result_path)) if sums else None
    X = np.load(io.BytesIO(read_bytes(sample_path)))
    total = sum(_rows_in(p) for p in paths)
    return {'result': result,
            'sample': (X, f'{n_sample:,} evenly spaced points of {total:,} in the point cache')}


def _id_type(paths):
    """The ids' Arrow type (from the first cache file; int64 when there is none)."""
    for path in paths:
        ids = read_cached_ids(path)
        if ids is not None:
            return ids.type
    return pa.int64()


def checkpoint_state(checkpoint: dict, kept: bool = False):
    """The state of a checkpoint; with ``kept``, the run the training keeps (with
    --n_init > 1 the checkpoint's result names it)."""
    state = state_from_dict(checkpoint['state'])
    if kept and isinstance(state, KMeansRuns):
        state = state.runs[KMeansResult.from_dict(checkpoint['result']).best_init]
    return state


def finish(args, options, training, checkpoint: dict):
    """The final pass (:func:`final_pass`), then the version: training.json,
    report, model.json and LATEST."""
    block_result = checkpoint['result']   # --n_init > 1: the last block chose the run
    final = checkpoint_state(checkpoint, kept=True)
    counts = training.counts()
    refused = counts['records_refused'] if isinstance(counts['records_refused'], int) else 0
    ranges = training.ranges()
    out = final_pass(args, options, training, final, names=ranges['names'], ranges=ranges,
                     refused=refused, sums=block_result is None)
    res = out['result'] or KMeansResult.from_dict(block_result)
    print(process.records_line(
        counts, WriteDeadLetters.glob(training.version_prefix('training'))))
    training.complete(res.to_dict())   # the version's files, before its model.json
    report = kmeans_report.write_report(args.model, training, res, final, counts,
                                        args.input, out['sample'])
    model = CentroidModel(
        res.centers, version=training.version, input_pattern=args.input, n_iter=res.n_iter,
        inertia=res.inertia, inertia_history=res.inertia_history,
        stop_reason=res.stop_reason, cluster_sizes=res.cluster_sizes,
        config=training.config(), distance=args.distance,
        init_inertias=[run['inertia'] for run in res.inits] if res.inits else None)
    saved = model.save(args.model, make_latest=not args.no_latest)
    log_cost(training, res.n_samples)
    training.remove()
    if res.n_distinct is not None:
        print(f'warning: the input has only {res.n_distinct} distinct point(s) for k={model.k}: '
              'some centres are duplicates or empty (as scikit-learn, which warns too)',
              file=sys.stderr)
    print(f'kmeans: k={model.k} d={model.d} n_iter={res.n_iter} stop_reason={res.stop_reason} '
          f'inertia={res.inertia:.10g} n_samples={res.n_samples}')
    if res.inits:
        print(f'n_init={res.n_init}: kept run {res.best_init} of inertias ' +
              ' '.join(f'{run["inertia"]:.10g}' for run in res.inits))
    print(f'model: {saved} (version {training.version}; '
          f'{"LATEST not moved" if args.no_latest else "LATEST updated"})')
    if report:
        print(f'report: {report}')
    if args.output:
        print(f'labels: {args.output}-?????-of-?????.{args.output_format}')
    return model


# ----------------------------------------------------------------------------- the cost

def _cost_counts(result) -> tuple[int, int]:
    """(input records read, cache rows read) by a finished pipeline."""
    counts = record_counts(result) or {}
    rows = 0
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(CACHE_COUNTERS)
                                       .with_name(CACHE_ROWS_READ))['counters']
    except Exception:   # a runner that does not report metrics
        found = []
    for c in found:
        rows += int((c.committed if c.committed is not None else c.attempted) or 0)
    return int(counts.get('records_read', 0)), rows


def run_counted(p, training, what: str):
    """Run ``p`` (one pipeline of the training) and log what it read: the input records
    and the rows of the point cache (its passes over the data); returns the result."""
    result = runners.run_pipeline(p)
    records, rows = _cost_counts(result)
    tally = training.cost.setdefault('pipelines', [])
    tally.append({'what': what, 'input_records': records, 'cache_rows': rows})
    LOG.info('kmeans %s: %s read %d input record(s) and %d row(s) of the point cache',
             training.version, what, records, rows)
    return result


def log_cost(training, n_samples: int) -> None:
    """One line: the input reads and passes over the point cache of this process's
    pipelines (``cache_rows`` / ``n_samples`` passes)."""
    tally = training.cost.get('pipelines', [])
    records = sum(t['input_records'] for t in tally)
    rows = sum(t['cache_rows'] for t in tally)
    LOG.info('kmeans %s: cost: %d pipeline(s), %d input record(s) read, %d cache row(s) read '
             '(%.4g pass(es) over %d points)', training.version, len(tally), records, rows,
             rows / n_samples if n_samples else 0.0, n_samples)
