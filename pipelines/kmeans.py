"""K-means training (Lloyd, scikit-learn's stopping rule); writes a new model version.

    beamml kmeans --input 'data/*.parquet' --k 16 --model_dir models/blobs \\
        [--max_iter 300] [--tol 1e-4] [--init k-means++|k-means||random|PATH] \\
        [--random_state S] [--empty_cluster keep|farthest]

The run writes ``<model_dir>/<version>/model.json`` (then ``LATEST``), the
training summary ``<model_dir>/<version>/training.json`` (initial centres,
centre shifts per iteration) and the dead letters of the input,
``<model_dir>/<version>/training-errors-*.jsonl``.

A run that fails leaves no version folder: its dead letters and summary are
moved to ``<model_dir>/_failed/<version>/`` (never taken for a version: a
version holds a ``model.json``), and the error names them.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from beamml.pipelines import common
from beamml.transforms.io import BeammlError, ReadPoints, WriteDeadLetters
from beamml.transforms.io.documents import read_json, write_json
from beamml.transforms.kmeans import (EMPTY_CLUSTER, INIT_METHODS, KMeans, KMeansResult,
                                      read_initial_centers, recursion_limit_for)
from beamml.transforms.model import LATEST_FILE, CentroidModel, new_version

LOG = logging.getLogger('beamml')
RESULT_FILE = 'training.json'
#: where a failed run's dead letters and summary go, under the model directory
FAILED_DIR = '_failed'
#: runners whose workers share this machine's disk (a local --cache_dir works)
LOCAL_RUNNERS = ('FnApiRunner', 'DirectRunner', 'BundleBasedDirectRunner',
                 'SwitchingDirectRunner')


class KMeansOptions:
    """The flags of ``beamml kmeans`` (not a PipelineOptions subclass; see pipelines.norms)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        common.add_input_args(parser)
        parser.add_argument('--k', type=int, default=None,
                            help='number of clusters (required unless --init is a file, '
                                 'whose rows then give k)')
        parser.add_argument('--max_iter', type=int, default=300,
                            help='maximum number of Lloyd iterations (default 300); each is '
                                 'a stage of the graph, so keep it to what you need')
        parser.add_argument('--tol', type=float, default=1e-4,
                            help='stop when the summed squared centre shift is <= tol x the '
                                 'mean per-feature variance (default 1e-4; 0: only on '
                                 'unchanged labels or max_iter)')
        parser.add_argument('--init', default='k-means++',
                            help="seeding: 'k-means++' (default, on a uniform sample), "
                                 "'k-means||' (distributed), 'random', or a file of initial "
                                 'centres (.npy (k, d) or any point-cloud format)')
        parser.add_argument('--random_state', type=int, default=None,
                            help='seed of every random choice (default: drawn, and recorded '
                                 'in the model config)')
        parser.add_argument('--empty_cluster', choices=EMPTY_CLUSTER, default='keep',
                            help="an empty cluster keeps its centre ('keep', default) or "
                                 "takes the point farthest from its centre ('farthest', as "
                                 'scikit-learn)')
        parser.add_argument('--init_sample_size', type=int, default=10_000,
                            help='points sampled for k-means++ / random seeding '
                                 '(default 10000)')
        parser.add_argument('--init_steps', type=int, default=5,
                            help='rounds of k-means|| (default 5)')
        parser.add_argument('--oversampling_factor', type=float, default=2.0,
                            help='k-means|| draws about this x k points per round (default 2)')
        parser.add_argument('--cache_dir', default=None,
                            help='where the centred points are kept between iterations '
                                 '(local or gs://; deleted at the end); default: a '
                                 'temporary local directory on the local runner, none '
                                 '(the runner materialises them) on other runners')
        parser.add_argument('--model_dir', required=True,
                            help='model directory (local or gs://); a new version is written '
                                 'there and LATEST points to it')


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
    if args.k < 1:
        raise BeammlError(f'--k must be >= 1, got {args.k}')
    return init


def write_result(result: KMeansResult, path: str) -> str:
    """Write the training result as JSON (one small file, written whole; a retry rewrites it)."""
    return write_json(path, result.to_dict())


def build(p, args, *, version: str | None = None, cache_dir: str | None = None):
    """Read, train, write the result; returns {'result', 'errors', 'kmeans', 'read'}.

    ``args.model_dir`` and ``version`` say where the training summary and the
    dead letters go (``<model_dir>/<version>/``); without a version they are
    not written (tests drive the graph directly).
    """
    read = ReadPoints(args.input, **common.read_kwargs(args))
    LOG.info('input: %d file(s), %s, d=%d, features %s', len(read.paths),
             read.layout.input_format, read.layout.dimension,
             ','.join(read.layout.feature_columns))
    init = validate(args, read.layout.dimension)
    kmeans = KMeans(args.k, max_iter=args.max_iter, tol=args.tol, init=init,
                    random_state=args.random_state, empty_cluster=args.empty_cluster,
                    init_sample_size=args.init_sample_size, init_steps=args.init_steps,
                    oversampling_factor=args.oversampling_factor,
                    cache_dir=cache_dir)
    points = p | 'ReadPoints' >> read
    result = points.batches | 'KMeans' >> kmeans
    if version is not None:
        vdir = FileSystems.join(args.model_dir, version)
        result | 'WriteResult' >> beam.Map(write_result, FileSystems.join(vdir, RESULT_FILE))
        points.errors | 'WriteErrors' >> WriteDeadLetters(FileSystems.join(vdir, 'training'))
    return {'result': result, 'errors': points.errors, 'kmeans': kmeans, 'read': read}


def model_config(args, kmeans: KMeans) -> dict:
    return {
        'k': kmeans.n_clusters, 'max_iter': kmeans.max_iter, 'tol': kmeans.tol,
        'init': args.init, 'random_state': kmeans.random_state,
        'empty_cluster': kmeans.empty_cluster, 'init_sample_size': kmeans.init_sample_size,
        'init_steps': kmeans.init_steps, 'oversampling_factor': kmeans.oversampling_factor,
        'input_format': args.input_format, 'id_column': args.id_column,
        'feature_columns': args.feature_columns,
    }


@common.pipeline_run
def run(argv=None):
    args, options = common.parse_args(KMeansOptions, argv, prog='beamml kmeans',
                                      description=__doc__)
    version = new_version()
    vdir = FileSystems.join(args.model_dir, version)
    dry_run = common.is_dry_run(options)
    cache_dir, temp_cache = args.cache_dir, None
    if cache_dir is None and options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
        cache_dir = temp_cache = tempfile.mkdtemp(prefix='beamml-kmeans-')
    try:
        with recursion_limit_for(args.max_iter):  # the local runner recurses per iteration
            p = beam.Pipeline(options=options)
            built = build(p, args, version=version, cache_dir=cache_dir)  # validates the flags
            kmeans = built['kmeans']
            if not dry_run:
                common.check_output(FileSystems.join(args.model_dir, LATEST_FILE),
                                    '--model_dir', args.model_dir)
            try:
                result = common.run_pipeline(p)
            except BeammlError as e:   # a worker refused the training (no point, k too big)
                raise _training_failed(e, args, options, version) from e
    finally:
        if temp_cache:
            shutil.rmtree(temp_cache, ignore_errors=True)
    if dry_run:   # translated offline: no model was trained
        return result
    errors_glob = WriteDeadLetters.glob(FileSystems.join(vdir, 'training'))
    try:
        common.report(result, errors_glob=errors_glob,
                      max_refused_fraction=args.max_refused_fraction)
    except BeammlError as e:   # too many refused rows: keep them, but not as a version
        failed = _move_to_failed(args.model_dir, version)
        raise BeammlError(str(e).replace(
            errors_glob, WriteDeadLetters.glob(FileSystems.join(failed, 'training'))) +
            '; no model version was written') from e
    res = KMeansResult.from_dict(read_json(FileSystems.join(vdir, RESULT_FILE)))
    model = CentroidModel(
        res.centers, version=version, input_pattern=args.input, n_iter=res.n_iter,
        inertia=res.inertia, inertia_history=res.inertia_history,
        stop_reason=res.stop_reason, cluster_sizes=res.cluster_sizes,
        config=model_config(args, kmeans))
    saved = model.save(args.model_dir)
    print(f'kmeans: k={model.k} d={model.d} n_iter={res.n_iter} stop_reason={res.stop_reason} '
          f'inertia={res.inertia:.10g} n_samples={res.n_samples}')
    print(f'model: {saved} (version {version}; LATEST updated)')
    return model


def _move_to_failed(model_dir: str, version: str) -> str:
    """Move what a failed run wrote under its version to ``<model_dir>/_failed/<version>``
    (Beam's temporary files of an unfinished write are removed); returns that folder."""
    vdir = FileSystems.join(model_dir, version)
    failed = FileSystems.join(model_dir, FAILED_DIR, version)
    found = [m.path for r in FileSystems.match([FileSystems.join(vdir, '**')])
             for m in r.metadata_list]
    keep = [f for f in found if '/beam-temp-' not in f.replace('\\', '/')]
    if keep:
        common.check_output(FileSystems.join(failed, RESULT_FILE), '--model_dir', model_dir)
        FileSystems.rename(keep, [FileSystems.join(failed, f[len(vdir):].lstrip('/'))
                                  for f in keep])
    junk = [f for f in found if f not in keep]
    if junk:
        FileSystems.delete(junk)
    if '://' not in vdir:
        shutil.rmtree(vdir, ignore_errors=True)
    return failed


def _training_failed(error: BeammlError, args, options, version: str) -> BeammlError:
    """The error of a training the workers refused, with the input's dead letters.

    A failed job never finishes its writes, so the dead letters are written again
    by a pipeline that only reads the input, into ``<model_dir>/_failed/<version>``.
    """
    _move_to_failed(args.model_dir, version)
    failed = FileSystems.join(args.model_dir, FAILED_DIR, version)
    prefix = FileSystems.join(failed, 'training')
    p = beam.Pipeline(options=options)
    points = p | 'ReadPoints' >> ReadPoints(args.input, **common.read_kwargs(args))
    points.errors | 'WriteErrors' >> WriteDeadLetters(prefix)
    counts = common.record_counts(common.run_pipeline(p))
    message = f'{error}; no model version was written'
    if counts and counts['records_refused']:
        message += (f'; {counts["records_refused"]} of {counts["records_read"]} records '
                    f'were refused, see {WriteDeadLetters.glob(prefix)}')
    elif '://' not in failed:
        shutil.rmtree(failed, ignore_errors=True)
    else:
        found = [m.path for r in FileSystems.match([FileSystems.join(failed, '**')])
                 for m in r.metadata_list]
        if found:
            FileSystems.delete(found)
    return BeammlError(message, parameters=error.parameters)


if __name__ == '__main__':
    sys.exit(common.main_wrapper(run, prog='beamml kmeans'))
