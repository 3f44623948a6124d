"""``beamml kmeans --streaming``: Spark MLlib's streaming K-means, a model version per window.

    beamml kmeans --streaming ... --k 8 --model models/live \\
        [--init k-means++|MODEL_DIR|CENTRES_FILE] [--decay_factor A | --half_life H] \\
        [--time_unit batches|points] [--checkpoint_windows N] [--random_state S]

The source and the fixed event-time windows are the caller's (``batches``:
the windowed points RecordBatches); :func:`build_streaming` adds the update
(:class:`~beamml.transforms.kmeans.streaming.StreamingKMeans`, one update per
window, in window order) and writes the model after every
``--checkpoint_windows``-th update as a new version of ``--model``
(``CentroidModel.save``: ``model.json``, then ``LATEST``), so a streaming
``assign`` that re-reads ``LATEST`` picks it up.

Versions are named ``<run>-u<update>``: ``<run>`` the UTC time the pipeline
was built (``YYYYMMDDTHHMMSSffffffZ``), ``<update>`` the update's number (8
digits), so a retried write finds its version already there and only moves
``LATEST``. The writes run on one key too, in a stateful DoFn that remembers
the newest update it pointed ``LATEST`` at: an older update arriving late
still gets its version, but never takes ``LATEST`` back.

``--init``: ``k-means++`` (default) seeds on the first window (centre weights
0, Spark's example's choice; see the transform's docstring); a model
directory (or version directory, or model.json) starts from its centres: a
model this pipeline wrote resumes with its cluster weights and counts
(``config.cluster_weights``, ``n_points_total``, ``n_updates``); any other
model, and a centres file (``.npy`` or a point-cloud file), start with weight 0
for every centre. ``k-means||`` and ``random`` are batch seedings and refused.
"""
from __future__ import annotations

import math

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

import logging

from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform import flags, runners, streams
from beamml.pipelines._platform.values import fraction, positive_int, positive_number
from beamml.pipelines.kmeans.points import read_kwargs
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import exists, join
from beamml.transforms.kmeans.seeding import read_initial_centers
from beamml.transforms.kmeans.streaming import ModelUpdate, StreamingKMeans
from beamml.transforms.kmeans.streaming_kernels import (TIME_UNITS, check_decay,
                                                        decay_from_half_life)
from beamml.transforms.kmeans import INIT_METHODS
from beamml.transforms.model import (LATEST_FILE, CentroidModel, list_versions, new_version,
                                     set_latest)
from beamml.transforms.model.artifact import MODEL_FILE
from beamml.transforms.streaming.windows import iso

__all__ = ['add_streaming_args', 'streaming_decay', 'initial_model', 'build_streaming',
           'model_for_update', 'ALGORITHM']

LOG = logging.getLogger('beamml')
ALGORITHM = 'spark-mllib-streaming-kmeans'
#: the folder of a streaming training's dead letters, under --model
STREAM_ERRORS = '_streaming'
#: iterations per pipeline run, by default
BLOCK_SIZE = 10


def add_streaming_args(parser) -> None:
    """The flags of ``beamml kmeans --streaming`` beyond the batch ones (``--k``,
    ``--init``, ``--random_state``, ``--model``, ``--weight_column`` are kmeans's)."""
    parser.add_argument('--decay_factor', type=fraction, default=None,
                        help='streaming: weight of the past at each update, in [0, 1] '
                             '(default 1.0: every window counts alike, the centres are '
                             'running means; 0: only the last window counts); Spark '
                             "StreamingKMeans' decayFactor")
    parser.add_argument('--half_life', type=positive_number, default=None,
                        help='streaming: instead of --decay_factor, the number of windows '
                             '(or points, with --time_unit points) after which data count '
                             'half: decay = exp(log(0.5) / half_life)')
    parser.add_argument('--time_unit', choices=TIME_UNITS, default='batches',
                        help="streaming: what the decay counts: 'batches' (default: one "
                             "discount per window) or 'points' (decay ** points in the window)")
    parser.add_argument('--checkpoint_windows', type=positive_int, default=1,
                        help='streaming: write a model version (and move LATEST) every N '
                             'updates (default 1: after every window with points)')


def streaming_decay(args) -> float:
    """The decay factor the flags give; a one-line BeammlError for bad or clashing ones
    (``--checkpoint_windows`` is checked here too)."""
    decay = getattr(args, 'decay_factor', None)
    half_life = getattr(args, 'half_life', None)
    time_unit = getattr(args, 'time_unit', 'batches')
    checkpoint = getattr(args, 'checkpoint_windows', 1)
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise BeammlError(f'--checkpoint_windows must be an integer >= 1, got {checkpoint!r}')
    if time_unit not in TIME_UNITS:
        raise BeammlError(f'--time_unit must be one of {", ".join(TIME_UNITS)}, '
                          f'got {time_unit!r}')
    if decay is not None and half_life is not None:
        raise BeammlError('give --decay_factor or --half_life, not both')
    if half_life is not None:
        if not half_life > 0 or math.isinf(half_life):
            raise BeammlError(f'--half_life must be a positive number, got {half_life!r}')
        return decay_from_half_life(half_life)
    if decay is not None and not 0.0 <= decay <= 1.0:
        raise BeammlError(f'--decay_factor must be in [0, 1], got {decay!r}')
    return check_decay(1.0 if decay is None else decay, time_unit)


def _is_model(path: str) -> bool:
    return (path.endswith('.json') or exists(join(path, LATEST_FILE))
            or exists(join(path, MODEL_FILE)))


def initial_model(args, dimension: int | None = None) -> dict:
    """StreamingKMeans' start from ``--init`` and ``--k``: ``{'init', 'initial_weights',
    'points_before', 'updates_before', 'n_clusters', 'resumed'}``."""
    if getattr(args, 'allow_nan', False):
        raise BeammlError('K-means cannot train on NaN or infinite features; drop --allow_nan '
                          '(such rows then go to the dead letters)')
    if getattr(args, 'distance', 'euclidean') != 'euclidean':
        raise BeammlError('streaming K-means is Euclidean (Spark MLlib\'s StreamingKMeans); '
                          f'--distance {args.distance} is not supported with --streaming')
    init = getattr(args, 'init', 'k-means++') or 'k-means++'
    k = getattr(args, 'k', None)
    start = {'init': 'k-means++', 'initial_weights': 0.0, 'points_before': 0,
             'updates_before': 0, 'n_clusters': k, 'resumed': None}
    if init == 'k-means++':
        if k is None:
            raise BeammlError('--k is required (or give --init a model directory or a file of '
                              'initial centres)')
        if k < 1:
            raise BeammlError(f'--k must be >= 1, got {k}')
        return start
    if init in ('k-means||', 'random'):
        raise BeammlError(f"--init {init} is a batch seeding; streaming K-means seeds with "
                          "'k-means++' on the first window, or starts from a model directory "
                          'or a file of centres')
    if _is_model(init):
        model = CentroidModel.load(init)
        if model.distance != 'euclidean':
            raise BeammlError(f'--init {init}: a {model.distance} model; streaming K-means '
                              'is Euclidean')
        centers = model.centers
        if k is not None and k != model.k:
            raise BeammlError(f'--init {init} holds {model.k} centres but --k is {k}')
        if dimension is not None and dimension != model.d:
            raise BeammlError(f'--init {init} has {model.d} features but the data have '
                              f'{dimension}')
        cfg = model.config
        if cfg.get('algorithm') == ALGORITHM and len(cfg.get('cluster_weights') or ()) == model.k:
            start.update(initial_weights=[float(v) for v in cfg['cluster_weights']],
                         points_before=int(cfg.get('n_points_total') or 0),
                         updates_before=int(cfg.get('n_updates') or 0), resumed=model.version)
    else:
        centers = read_initial_centers(init, n_clusters=k, n_features=dimension)
    start.update(init=centers, n_clusters=centers.shape[0])
    return start


def model_for_update(update: ModelUpdate, *, version: str, config: dict,
                     input_pattern: str | None = None) -> CentroidModel:
    """The CentroidModel of one update, its streaming facts in ``config``."""
    seconds = (update.window_end - update.window_start).micros / 1e6
    cfg = dict(config)
    cfg.update({
        'window_start': iso(update.window_start),
        'window_end': iso(update.window_end),
        'window_seconds': seconds,
        'n_points': int(update.n_points),
        'n_points_total': int(update.n_points_total),
        'n_updates': int(update.n_updates),
        'cluster_weights': [float(v) for v in update.weights],
        'window_counts': [int(v) for v in update.counts],
        'window_inertia': float(update.inertia),
        'empty_windows': int(update.empty_windows),
        'split': None if update.split is None else list(update.split),
        'seeded': bool(update.seeded),
    })
    return CentroidModel(update.centers, version=version, input_pattern=input_pattern,
                         n_iter=int(update.n_updates), config=cfg)


class _WriteVersionFn(beam.DoFn):
    """Every ``every``-th update as a model version; LATEST only ever moves forward."""

    NEWEST = ReadModifyWriteStateSpec('newest_update', PickleCoder())

    def __init__(self, model_dir: str, run_id: str, every: int, config: dict,
                 input_pattern: str | None):
        self.model_dir, self.run_id, self.every = model_dir, run_id, every
        self.config, self.input_pattern = config, input_pattern

    def process(self, element, newest=beam.DoFn.StateParam(NEWEST)):
        update = element[1]
        if update.n_updates % self.every:
            return
        version = f'{self.run_id}-u{update.n_updates:08d}'
        last = newest.read()
        forward = last is None or update.n_updates > last
        if exists(join(self.model_dir, version, MODEL_FILE)):   # a retried write
            vdir = (set_latest(self.model_dir, version) if forward   # loads it first
                    else join(self.model_dir, version))
        else:
            model = model_for_update(update, version=version, config=self.config,
                                     input_pattern=self.input_pattern)
            vdir = model.save(self.model_dir, make_latest=forward)
        if forward:
            newest.write(update.n_updates)
        yield vdir


def _one_key(update):
    return 0, update


def build_streaming(p, args, batches, *, dimension: int | None = None,
                    allowed_lateness: float | None = None) -> dict:
    """Streaming K-means on ``batches`` (windowed points RecordBatches), writing versions.

    ``args``: model_dir, k, init, decay_factor, half_life, time_unit,
    checkpoint_windows, random_state (and, when present, input / weight_column
    / allowed_lateness, recorded). ``dimension``: the source Layout's, to check
    ``--init`` against before anything runs. Returns ``{'kmeans'`` (the
    transform), ``'updates'`` (ModelUpdate per window), ``'errors'`` (dead
    letters of points too late for their window), ``'versions'`` (the version
    directories written), ``'run_id'}``. ``p`` is unused (the graph hangs off
    ``batches``); it is there for the same signature as the batch ``build``.
    """
    del p
    decay = streaming_decay(args)
    start = initial_model(args, dimension)
    if allowed_lateness is None:
        allowed_lateness = getattr(args, 'allowed_lateness', None) or 0.0
    kmeans = StreamingKMeans(
        start['n_clusters'], init=start['init'], initial_weights=start['initial_weights'],
        decay_factor=decay, time_unit=args.time_unit,
        random_state=getattr(args, 'random_state', None), allowed_lateness=allowed_lateness,
        points_before=start['points_before'], updates_before=start['updates_before'])
    run_id = new_version()
    config = {
        'algorithm': ALGORITHM, 'k': kmeans.n_clusters,
        'init': getattr(args, 'init', 'k-means++'), 'resumed_from': start['resumed'],
        'random_state': kmeans.random_state, 'decay_factor': kmeans.decay_factor,
        'half_life': getattr(args, 'half_life', None), 'time_unit': kmeans.time_unit,
        'checkpoint_windows': args.checkpoint_windows, 'allowed_lateness': allowed_lateness,
        'weight_column': getattr(args, 'weight_column', None), 'run_id': run_id,
        'distance': 'euclidean',
    }
    result = batches | 'StreamingKMeans' >> kmeans
    versions = (result.updates
                | 'KeyUpdates' >> beam.Map(_one_key)
                | 'WriteModelVersions' >> beam.ParDo(_WriteVersionFn(
                    args.model, run_id, args.checkpoint_windows, config,
                    getattr(args, 'input', None))))
    return {'kmeans': kmeans, 'updates': result.updates, 'errors': result.errors,
            'versions': versions, 'run_id': run_id}


#: batch-only flags a streaming training refuses (with their defaults)
_BATCH_ONLY = {'resume': None, 'output': None, 'cache_dir': None, 'n_init': 'auto',
               'block_size': BLOCK_SIZE, 'max_iter': 300, 'tol': 1e-4, 'dtype': 'float64',
               'empty_cluster': 'keep', 'distance': 'euclidean', 'no_latest': False}


def run_streaming(args, options):
    """``--streaming``: Spark's StreamingKMeans per window, a model version every
    ``--checkpoint_windows`` windows (see pipelines/py)."""
    given = [f for f, default in _BATCH_ONLY.items() if getattr(args, f) != default]
    if given:
        raise BeammlError(f'--{given[0]} is a batch training flag; a streaming training '
                          'updates the centres per window (--decay_factor / --half_life)')
    if args.init not in INIT_METHODS:   # the job is built from the model or the centres
        runners.local_for_dry_run(options, 'init', args.init)
    layout = stream_layout(args, runners.is_dry_run(options))
    dry_run = runners.is_dry_run(options)
    if not dry_run:
        flags.check_output(FileSystems.join(args.model, LATEST_FILE), '--model',
                            args.model)
    p = beam.Pipeline(options=streams.streaming_options(options, args))
    source = streams.read_stream(p, args, layout, points=True, accumulating=True,
                                   **({'weight_column': args.weight_column}
                                      if args.weight_column else {}))
    out = build_streaming(p, args, source['batches'],
                                           dimension=layout.dimension,
                                           allowed_lateness=args.allowed_lateness)
    errors = streams.all_errors(source['errors'], out['errors'])
    streams.write_dead_letters(errors, args, FileSystems.join(
        args.model, STREAM_ERRORS, out['run_id']))
    if runners.no_results(options):
        return runners.run_pipeline(p)
    LOG.info('kmeans --streaming: k=%s, windows of %g s, a version every %d window(s) in %s',
             args.k or 'from --init', args.window_size, args.checkpoint_windows,
             args.model)
    errors_prefix = FileSystems.join(args.model, STREAM_ERRORS, out['run_id'])
    result = streams.run_and_count(p, args, streams.dead_letter_glob(args, errors_prefix))
    versions = list_versions(args.model)
    print(f'kmeans --streaming: {len(versions)} version(s) in {args.model}'
          + (f'; LATEST {versions[-1]}' if versions else ''))
    print(f'dead letters: {errors_prefix}-*-pane-*.jsonl')   # <run>-<window start>-<window end>-pane-<i>-<timing>.jsonl
    return result


def stream_layout(args, dry_run: bool = False):
    """The points of a stream (:func:`streams.stream_layout`); without --dimension the
    dimension is that of --init's centres."""
    def dimension():
        if args.dimension is None and args.init not in INIT_METHODS:
            return initial_model(args)['init'].shape[1]
        return args.dimension
    return streams.stream_layout(args, read_kwargs(args), dimension,
                                   ', or --init with centres', dry_run=dry_run)
