"""K-means training (Lloyd, scikit-learn's stopping rule); writes a new model version.

    beamml kmeans --input 'data/*.parquet' --k 16 --model models/blobs \\
        [--max_iter 300] [--tol 1e-4] [--init k-means++|k-means||random|PATH] \\
        [--random_state S] [--empty_cluster keep|farthest] [--distance euclidean|cosine]
        [--weight_column W] [--n_init N|auto]

The run writes ``<model>/<version>/model.json`` (then ``LATEST``), the
training summary ``<model>/<version>/training.json`` (initial centres,
centre shifts per iteration), the dead letters of the input,
``<model>/<version>/training-errors-*.jsonl``, the monitoring baseline
``baseline.json``, and an HTML report, ``<model>/<version>/report.html``
(pipelines/kmeans/report.py).

The cost model (docs/pipelines/kmeans.md): one read of the input, into the point
cache (raw and centred); one pass over the raw cache to centre it; the seeding's
passes (k-means||); one pass over the centred cache per iteration; and one final
pass over the raw cache (pipelines/kmeans/final.py) that makes the final sizes and
inertia, the baseline, the --output labels and the report's sample together.

A run that fails leaves no version folder: its dead letters and summary are
moved to ``<model>/_failed/<version>/`` (never taken for a version: a
version holds a ``model.json``), and the error names them. Iterations run in
blocks of --block_size, one pipeline run each, checkpointed under
``<model>/_runs/<version>/``; --resume continues a killed run.

"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from beamml.pipelines._platform import cli, flags, main as process, runners, runs, streams
from beamml.pipelines.kmeans import points as kmeans_points
from beamml.pipelines.kmeans.final import checkpoint_state, finish, run_counted
from beamml.pipelines.kmeans import streaming as kmeans_streaming
from beamml.pipelines.kmeans.checkpoint import (FAILED_DIR, RESULT_FILE, TrainingRun,
                                                input_fingerprints)
from beamml.pipelines.kmeans.streaming import (  # noqa: F401 (the templates read _BATCH_ONLY)
    _BATCH_ONLY, BLOCK_SIZE, STREAM_ERRORS)
from beamml.pipelines._platform.faults import fault_point
from beamml.pipelines._platform.flags import add_deprecated
from beamml.pipelines._platform.overlap import check_input_overlap, output_namespace
from beamml.pipelines._platform.values import positive_int
from beamml.transforms.distances import DISTANCES
from beamml.transforms.core.documents import write_json
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import OUTPUT_FORMATS, ReadPoints, WriteDeadLetters
from beamml.transforms.kmeans import (EMPTY_CLUSTER, INIT_METHODS, KMeans, KMeansResult, KMeansRuns,
                                      read_initial_centers, recursion_limit_for,
                                      state_from_dict)
from beamml.transforms.kmeans.cache import has_ids
from beamml.transforms.kmeans.centring import cache_again
from beamml.transforms.kmeans.iterations import cached_points
from beamml.transforms.model import LATEST_FILE, new_version
from beamml.transforms.monitoring import column_names

__all__ = ['KMeansOptions', 'build', 'run', 'RESULT_FILE', 'FAILED_DIR', 'BLOCK_SIZE']

#: ``beamml kmeans --help``'s description (the module docstring is for developers)
DESCRIPTION = """K-means training (Lloyd, scikit-learn's stopping rule); writes a new model version.

Writes <model>/<version>/model.json (then LATEST), training.json (initial centres,
centre shifts per iteration), the input's dead letters (training-errors-*.jsonl) and
report.html. A failed run leaves no version: its dead letters and summary go to
<model>/_failed/<version>/. Iterations run in blocks of --block_size, checkpointed
under <model>/_runs/<version>/; --resume continues a killed run."""

LOG = logging.getLogger('beamml')
#: where a streaming training's dead letters go, under the model directory
#: runners whose workers share this machine's disk (a local --cache_dir works)
LOCAL_RUNNERS = ('FnApiRunner', 'DirectRunner', 'BundleBasedDirectRunner',
                 'SwitchingDirectRunner')


class KMeansOptions:
    """The flags of ``beamml kmeans`` (not a PipelineOptions subclass; see pipelines.norms)."""
    #: required in batch (a stream reads a subscription or a topic instead): the platform
    #: checks them, the batch Flex template marks them required
    REQUIRED_IN_BATCH = ('input',)


    @classmethod
    def _add_argparse_args(cls, parser):
        flags.add_input_args(parser, required=False)
        parser.add_argument('--k', type=positive_int, default=None,
                            help='number of clusters (required unless --init is a file, '
                                 'whose rows then give k)')
        parser.add_argument('--max_iter', type=int, default=300,
                            help='maximum number of Lloyd iterations (default 300); they run '
                                 'in blocks of --block_size, and no block starts after the '
                                 'training stopped')
        parser.add_argument('--block_size', type=int, default=BLOCK_SIZE,
                            help=f'iterations per pipeline run (default {BLOCK_SIZE}); the '
                                 'state is checkpointed after each block (on Dataflow each '
                                 'block is a job: see docs/pipelines/kmeans.md for choosing it)')
        parser.add_argument('--resume', nargs='?', const='latest', default=None,
                            metavar='VERSION',
                            help='continue the unfinished training VERSION (default: the '
                                 'newest one under MODEL_DIR/_runs) from its last checkpoint, '
                                 'with the same flags; the result is what the uninterrupted '
                                 'run gives')
        parser.add_argument('--tol', type=float, default=1e-4,
                            help='stop when the summed squared centre shift is <= tol x the '
                                 'mean per-feature variance (default 1e-4; 0: only on '
                                 'unchanged labels or max_iter)')
        parser.add_argument('--init', default='k-means++',
                            help="seeding: 'k-means++' (default, on a uniform sample), "
                                 "'k-means||' (distributed), 'random', or a file of initial "
                                 'centres (.npy (k, d) or any point-cloud format)')
        parser.add_argument('--n_init', type=n_init_flag, default='auto',
                            help="seedings trained side by side in the same passes (one "
                                 'product per batch against all their centres), the lowest '
                                 "final inertia kept; 'auto' (default, scikit-learn's): 10 "
                                 'for --init random, else 1; every run is recorded in the '
                                 'model (init_inertias) and in training.json')
        parser.add_argument('--random_state', type=int, default=None,
                            help='seed of every random choice (default: drawn, and recorded '
                                 'in the model config)')
        parser.add_argument('--empty_cluster', choices=EMPTY_CLUSTER, default='keep',
                            help="an empty cluster keeps its centre ('keep', default) or "
                                 "takes the point farthest from its centre ('farthest', as "
                                 'scikit-learn)')
        parser.add_argument('--distance', choices=DISTANCES, default='euclidean',
                            help="'euclidean' (default, scikit-learn's K-means) or 'cosine' "
                                 "(Spark MLlib's: 1 - cos; points and centres normalised, a "
                                 'centre is the normalised mean of its points; a zero vector '
                                 'is a dead letter); recorded in the model, which assign uses')
        parser.add_argument('--init_sample_size', type=int, default=10_000,
                            help='points sampled for k-means++ / random seeding '
                                 '(default 10000)')
        parser.add_argument('--init_steps', type=int, default=5,
                            help='rounds of k-means|| (default 5)')
        parser.add_argument('--oversampling_factor', type=float, default=2.0,
                            help='k-means|| draws about this x k points per round (default 2)')
        parser.add_argument('--weight_column', default=None,
                            help='column of per-row sample weights (scikit-learn\'s '
                                 'sample_weight, Spark\'s weightCol): weighted seeding and '
                                 'Lloyd; a row whose weight is missing, not a number, NaN, '
                                 'infinite or negative is a dead letter (0 is a weight); '
                                 'never a feature')
        parser.add_argument('--dtype', choices=('float64', 'float32'), default='float64',
                            help='what the points are cached and the E-step computed in '
                                 '(default float64; float32 halves the bytes read per '
                                 'iteration: centres within ~1e-9 relative, see docs/benchmarks.md)')
        parser.add_argument('--cache_dir', default=None,
                            help='where the centred points are kept between iterations and '
                                 'blocks, in a folder per version (local or gs://; deleted at '
                                 'the end); default: MODEL_DIR/_runs/VERSION/cache on the '
                                 'local runner (a local temporary folder when MODEL_DIR is '
                                 'on gs://), TEMP_LOCATION/beamml-kmeans/VERSION on Dataflow')
        parser.add_argument('--output', type=flags.output_prefix, default=None,
                            help='also write the training points\' labels (scikit-learn\'s '
                                 'labels_): PREFIX-SSSSS-of-NNNNN.<format> with id, cluster, '
                                 'distance, model_version, from the final pass over the '
                                 'point cache (which then keeps the ids)')
        parser.add_argument('--output_format', choices=OUTPUT_FORMATS, default='parquet',
                            help='format of --output (default parquet)')
        parser.add_argument('--model', required=True, metavar='DIR',
                            help='model directory (local or gs://); a new version is written '
                                 'there and LATEST points to it (was --model_dir)')
        add_deprecated(parser, '--model_dir', '--model')
        parser.add_argument('--no_latest', action='store_true',
                            help='write the new version without moving LATEST to it (a '
                                 'candidate, as beamml monitor --retrain trains)')
        runs.add_date_arg(parser)
        kmeans_streaming.add_streaming_args(parser)
        streams.add_streaming_args(parser, sliding=False)


def n_init_flag(value: str):
    """``--n_init``: 'auto' or an integer >= 1."""
    if value == 'auto':
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {value!r}")
    return n


n_init_flag.regex = r'^(auto|[1-9][0-9]*)$'   # what the Flex template's metadata says


def validate(args, dimension: int):
    """Flag checks that need no data; returns the KMeans init (a method name or an array).

    ``--k`` is checked here, in its flag's words: KMeans calls it ``n_clusters``. The
    other flags are KMeans's parameters by the same names, which its errors name.
    """
    if args.allow_nan:
        raise BeammlError('K-means cannot train on NaN or infinite features; drop --allow_nan '
                          '(such rows then go to the dead letters)')
    init = args.init
    if init not in INIT_METHODS:
        init = read_initial_centers(init, n_clusters=args.k, n_features=dimension)
        if args.k is None:
            args.k = init.shape[0]
    elif args.k is None:
        raise BeammlError('--k is required (or give --init a file of initial centres)')
    return init


def _dry_run_dimension(args) -> int | None:
    """A dry run reads no input: the width of --init's centres (a local file) is the
    default of --dimension."""
    if args.init in INIT_METHODS or args.dimension is not None:
        return None
    return read_initial_centers(args.init, n_clusters=args.k).shape[1]


def write_result(result: KMeansResult, path: str) -> str:
    """Write the training result as JSON (one small file, written whole; a retry rewrites it)."""
    return write_json(path, result.to_dict())


def make_kmeans(args, init, cache_dir: str | None) -> KMeans:
    return KMeans(args.k, max_iter=args.max_iter, tol=args.tol, init=init,
                  random_state=args.random_state, empty_cluster=args.empty_cluster,
                  init_sample_size=args.init_sample_size, init_steps=args.init_steps,
                  oversampling_factor=args.oversampling_factor, n_init=args.n_init,
                  cache_dir=cache_dir, dtype=args.dtype, distance=args.distance)


def _write_block(state, results, path: str) -> str:
    """A block's checkpoint: the state after it, and the result when it stopped."""
    results = list(results)
    return write_json(path, {'state': state.to_dict(),
                             'result': results[0].to_dict() if results else None})


def _write_block_outputs(block, run: TrainingRun, index: int) -> None:
    state = block['state']
    if 'result' in block:
        result = block['result']
    else:   # no final E-step in the block: the final pass makes it
        result = state | 'NoResult' >> beam.FlatMap(lambda _: ())
    state | 'WriteCheckpoint' >> beam.Map(_write_block, beam.pvalue.AsList(result),
                                          run.block_path(index))


def _block(kmeans: KMeans, iterations: int):
    """A block of ``beamml kmeans``: without the final E-step (the final pass makes it),
    but with it for --n_init > 1, where it chooses the run the final pass labels with."""
    return kmeans.block(iterations, final=kmeans.n_init > 1)


def build(p, args, *, run: TrainingRun | None = None, cache_dir: str | None = None):
    """The first pipeline of a training: read, check, cache, seed, the first block.

    Returns {'kmeans', 'read', 'errors', 'state'[, 'result' with --n_init > 1]}. With
    ``run`` (a :class:`~beamml.pipelines.kmeans.checkpoint.TrainingRun`) it writes the
    dead letters, the cache manifest, the raw columns' ranges and the block's checkpoint
    into the run's folder; without, nothing is written (tests drive the graph directly).
    """
    dry_run = runners.is_dry_run(p.options)
    read = ReadPoints(args.input, **kmeans_points.read_kwargs(
        args, p.options, **({'dimension': _dry_run_dimension(args)} if dry_run else {})))
    LOG.info('input: %s, %s, d=%d, features %s', runners.input_files(read),
             read.layout.input_format, read.layout.dimension,
             ','.join(read.layout.feature_columns))
    init = validate(args, read.layout.dimension)
    kmeans = make_kmeans(args, init, cache_dir)
    points = p | 'ReadPoints' >> read
    prepared = points.batches | 'KMeansPrepare' >> kmeans.prepare(
        keep_ids=bool(args.output), ranges=run is not None)
    block = prepared | 'KMeans' >> _block(kmeans, min(args.block_size, args.max_iter))
    if run is not None:
        points.errors | 'WriteErrors' >> WriteDeadLetters(run.errors_prefix)
        _write_block_outputs(block, run, 1)
        (p | 'RangesOnce' >> beam.Create([None])
         | 'WriteRanges' >> beam.Map(lambda _, parts: run.write_ranges(
             parts, column_names(read.layout)), beam.pvalue.AsList(prepared['ranges'])))
        (prepared['centred'], prepared['raw']) | 'CachePaths' >> beam.Flatten() \
            | 'ListCache' >> beam.combiners.ToList() \
            | 'WriteManifest' >> beam.Map(run.write_manifest)
    return {'kmeans': kmeans, 'read': read, 'errors': points.errors, **block}


def model_config(args, kmeans: KMeans) -> dict:
    return {
        'k': kmeans.n_clusters, 'max_iter': kmeans.max_iter, 'tol': kmeans.tol,
        'init': args.init, 'random_state': kmeans.random_state,
        'empty_cluster': kmeans.empty_cluster, 'init_sample_size': kmeans.init_sample_size,
        'init_steps': kmeans.init_steps, 'oversampling_factor': kmeans.oversampling_factor,
        'input_format': args.input_format, 'id_column': args.id_column,
        'feature_columns': args.feature_columns, 'dtype': kmeans.dtype,
        'distance': kmeans.distance,
        'weight_column': getattr(args, 'weight_column', None), 'n_init': kmeans.n_init,
    }


def default_cache_dir(args, options, run: TrainingRun) -> str:
    """``--cache_dir``, else: on Dataflow ``<temp_location>/beamml-kmeans/<version>``; on
    the local runner the run's folder when the model directory is local, else a
    local temporary folder named by the version (so ``--resume`` finds it)."""
    if args.cache_dir:
        return FileSystems.join(args.cache_dir, run.version)
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        temp = options.view_as(GoogleCloudOptions).temp_location
        return FileSystems.join(temp, 'beamml-kmeans', run.version)
    if '://' not in args.model:
        return FileSystems.join(run.folder, 'cache')
    return os.path.join(runners.outer_tempdir(), f'beamml-kmeans-cache-{run.version}')


@runners.pipeline_run
def run(argv=None):
    args, options = cli.parse_args(KMeansOptions, argv, prog='beamml kmeans',
                                      description=DESCRIPTION, streaming=True)
    streams.check_streaming_args(args, options, needs_output=False)
    check_input_overlap([('--input', args.input)], [
        output_namespace(flag, value.rstrip('/') + '/') for flag, value in (
            ('--model', args.model), ('--cache_dir', args.cache_dir)) if value] + (
        [output_namespace('--output', args.output_given)] if args.output else []))
    if streams.is_streaming(options):
        return kmeans_streaming.run_streaming(args, options)
    if args.block_size < 1:
        raise BeammlError(f'--block_size must be >= 1, got {args.block_size}')
    dry_run = runners.is_dry_run(options)
    if args.init not in INIT_METHODS:   # the job is built from the centres
        runners.local_for_dry_run(options, 'init', args.init)
    if runners.is_launch_only(options) and not dry_run:
        raise BeammlError(
            f'kmeans trains in blocks of iterations, one Dataflow job each, driven from this '
            f'process: it must wait for them ({runners.LAUNCH_ONLY_VARIABLE} is set); run it '
            'where it can wait (a VM, a Cloud Run job, an Airflow worker), or --streaming')
    if args.resume:
        if dry_run:
            raise BeammlError('--resume continues a training: it cannot be a dry run')
        training = TrainingRun.find(args.model, args.resume)
        if args.output:   # the final pass writes them: never over files already there
            kmeans_points.refuse_existing_labels(args)
    else:
        training = TrainingRun(args.model, new_version())
    cache_dir = default_cache_dir(args, options, training)
    with recursion_limit_for(min(args.block_size, args.max_iter)):  # recursion per iteration
        if args.resume:
            checkpoint, kmeans = _resume(args, options, training)
        else:
            p = beam.Pipeline(options=options)
            built = build(p, args, run=training, cache_dir=cache_dir)
            kmeans = built['kmeans']
            if dry_run:   # translated offline: the first block's job (with its writes, as a
                return runners.run_pipeline(p)   # real run's); nothing was trained or written
            flags.check_output(FileSystems.join(args.model, LATEST_FILE),
                                '--model', args.model)
            if args.output:
                flags.check_output(args.output)
                kmeans_points.refuse_existing_labels(args)
            training.start(vars(args), model_config(args, kmeans), cache_dir,
                           input_fingerprints(built['read'].paths))
            checkpoint = _first_block(p, args, training)
        while not state_from_dict(checkpoint['state']).stopped:
            checkpoint = _next_block(args, options, training, kmeans, checkpoint)
    _ensure_cache(args, options, training, checkpoint_state(checkpoint))
    return finish(args, options, training, checkpoint)


def _block_log(training: TrainingRun, index: int, checkpoint: dict, seconds: float) -> None:
    state = state_from_dict(checkpoint['state'])
    inertia = state.inertia_history[-1] if state.inertia_history else float('nan')
    shift = state.center_shift_history[-1] if state.center_shift_history else float('nan')
    runs = ''
    if isinstance(state, KMeansRuns):   # the lowest inertia and largest shift of the runs
        runs = f' ({state.n_going} of {len(state.runs)} runs going)'
    LOG.info('kmeans %s: block %d done in %.1f s: %d iteration(s) in all%s, inertia %.6g, '
             'centre shift %.3g%s', training.version, index, seconds, state.n_iter, runs,
             inertia, shift, f', stopped ({state.stop_reason})' if state.stopped else '')


def _first_block(p, args, training: TrainingRun) -> dict:
    started = time.monotonic()
    try:
        result = run_counted(p, training, 'block 1 (read, cache, seeding)')
    except BeammlError as e:   # a worker refused the training (no point, k too big)
        raise _training_failed(e, args, p.options, training) from e
    try:
        counts = process.report(result, errors_glob=training.errors_glob,
                               max_refused_fraction=args.max_refused_fraction,
                               out=io.StringIO())   # printed at the end, with the final path
    except BeammlError as e:   # too many refused rows: keep them, but not as a version
        failed = training.fail()
        raise BeammlError(str(e).replace(training.errors_glob, failed.errors_glob) +
                          '; no model version was written') from e
    training.write_counts(counts)
    checkpoint = training.read_block(1)
    if counts:
        LOG.info('kmeans %s: %s', training.version, process.records_line(counts))
    _block_log(training, 1, checkpoint, time.monotonic() - started)
    fault_point('kmeans.after_first_block')
    return checkpoint


def _next_block(args, options, training: TrainingRun, kmeans: KMeans, checkpoint: dict) -> dict:
    index = checkpoint['index'] + 1
    state = state_from_dict(checkpoint['state'])
    remaining = args.max_iter - state.n_iter
    started = time.monotonic()
    _ensure_cache(args, options, training, state)
    p = beam.Pipeline(options=options)
    points = cached_points(p, training.manifest())
    states = p | 'CheckpointState' >> beam.Create([state])
    block = {'points': points, 'state': states} | 'KMeans' >> _block(
        kmeans, min(args.block_size, remaining))
    _write_block_outputs(block, training, index)
    run_counted(p, training, f'block {index}')
    checkpoint = training.read_block(index)
    _block_log(training, index, checkpoint, time.monotonic() - started)
    return checkpoint


def _resume(args, options, training: TrainingRun) -> tuple[dict, KMeans]:
    """The last checkpoint of the run ``--resume`` names, and its KMeans (same flags)."""
    saved = training.flags()
    changed = training.changed_flags(vars(args))
    if changed:
        raise BeammlError(f'--resume {training.version}: the run was started with other '
                          f'flags ({"; ".join(changed)}); give the same ones')
    read = ReadPoints(args.input, **kmeans_points.read_kwargs(args))   # checks the input is there
    changed = training.changed_inputs(input_fingerprints(read.paths))
    if changed:
        raise BeammlError(f'--resume {training.version}: the input changed since the run '
                          f'started ({"; ".join(changed[:3])}'
                          f'{"; ..." if len(changed) > 3 else ""}); start a new training')
    init = validate(args, read.layout.dimension)
    kmeans = make_kmeans(args, init, training.cache_dir)
    checkpoint = training.last_block()
    if checkpoint is None:   # nothing to resume from: its folder goes
        training.remove()
        raise BeammlError(f'--resume {training.version}: its first block never finished, so '
                          'there is nothing to resume (its folder was removed); start a new '
                          'training')
    state = state_from_dict(checkpoint['state'])
    runs = len(state.runs) if isinstance(state, KMeansRuns) else 1
    if runs != kmeans.n_init:   # a run saved before --n_init, with --init random
        raise BeammlError(f'--resume {training.version}: the run trains {runs} seeding(s), '
                          f'--n_init gives {kmeans.n_init}; give --n_init {runs}')
    LOG.info('kmeans %s: resuming after block %d (%d iteration(s) done), started with '
             '--random_state %s', training.version, checkpoint['index'], state.n_iter,
             saved.get('random_state'))
    return checkpoint, kmeans


def _ensure_cache(args, options, training: TrainingRun, state) -> None:
    """The point cache (centred and raw) and the ranges are there, or are made again."""
    try:
        manifest = training.manifest() + training.raw_manifest()
    except Exception:   # no manifest, or one of an earlier beamml (no raw files)
        manifest = None
    if (manifest is None or not training.cache_complete(manifest)
            or training.ranges() is None
            or (args.output and not all(map(has_ids, training.raw_manifest())))):
        # (--output given to a resumed run that started without it: the ids are needed)
        _rebuild_cache(args, options, training, state)


def _rebuild_cache(args, options, training: TrainingRun, state) -> None:
    """Write the cache again from the input (it was lost with the process that made it):
    the same batches, the same mean, so the same files; and the ranges. One more read of
    the input, which a resumed run whose cache is gone pays (the docs say so)."""
    LOG.info('kmeans %s: the point cache is gone; rebuilding it from the input (one more '
             'read of the input)', training.version)
    p = beam.Pipeline(options=options)
    read = ReadPoints(args.input, **kmeans_points.read_kwargs(args))
    points = p | 'ReadPoints' >> read
    cached = points.batches | 'KMeansCacheAgain' >> cache_again(
        training.cache_dir, state.mean, args.dtype, state.distance, keep_ids=bool(args.output))
    (cached.paths
     | 'ListCache' >> beam.combiners.ToList()
     | 'WriteManifest' >> beam.Map(training.write_manifest))
    (p | 'RangesOnce' >> beam.Create([None])
     | 'WriteRanges' >> beam.Map(lambda _, parts: training.write_ranges(
         parts, column_names(read.layout)), beam.pvalue.AsList(cached.ranges)))
    run_counted(p, training, 'cache rebuild')


def _training_failed(error: BeammlError, args, options, training: TrainingRun) -> BeammlError:
    """The error of a training the workers refused, with the input's dead letters.

    A failed job never finishes its writes, so the dead letters are written again
    by a pipeline that only reads the input, into ``<model>/_failed/<version>``.
    """
    failed = training.fail()
    p = beam.Pipeline(options=options)
    points = p | 'ReadPoints' >> ReadPoints(args.input, **kmeans_points.read_kwargs(args))
    points.errors | 'WriteErrors' >> WriteDeadLetters(failed.errors_prefix)
    counts = process.record_counts(runners.run_pipeline(p))
    message = f'{error}; no model version was written'
    if counts and counts['records_refused']:
        message += (f'; {counts["records_refused"]} of {counts["records_read"]} records '
                    f'were refused, see {failed.errors_glob}')
    else:
        failed.remove()
    return BeammlError(message, parameters=error.parameters)


if __name__ == '__main__':
    sys.exit(process.main_wrapper(run, prog='beamml kmeans'))
