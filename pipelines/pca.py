"""Exact PCA in one pass: mean, components and explained variance; optionally the projections.

    beamml pca --input 'data/*.parquet' --n_components 2 --output out/pca/ [--write_projection]
        [--output_format parquet|csv|jsonl]

Writes OUTPUT/pca.json (``mean``, ``components`` (n_components x d),
``explained_variance``, ``explained_variance_ratio``, ``n_samples``: scikit-learn's
conventions, see :class:`beamml.transforms.pca.PCAModel`), with ``--write_projection`` the
projected points OUTPUT/projection/part-SSSSS-of-NNNNN.<format> (``id``,
``projection``), and the dead letters OUTPUT/pca-errors-*.jsonl. OUTPUT is a folder,
committed once with OUTPUT/_SUCCESS (see docs/operations.md: scheduled runs).
"""
from __future__ import annotations

import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform import runs
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.flags import add_input_args, read_kwargs
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import input_files, pipeline_run
from beamml.pipelines._platform.values import positive_int
from beamml.transforms.io import OUTPUT_FORMATS, ReadPoints, WriteDeadLetters, WriteTable
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.pca import MODEL_FILE, ComputePCA, PCAModel, ProjectPCA, projection_schema

LOG = logging.getLogger('beamml')
PROJECTION = 'projection'


class PCAOptions:
    """The flags of ``beamml pca`` (not a PipelineOptions subclass; see pipelines.norms)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_input_args(parser)
        parser.add_argument('--n_components', type=positive_int, required=True,
                            help='number of principal components, 1 .. min(rows, features)')
        parser.add_argument('--output', required=True,
                            help='output folder (local or gs://): pca.json, with '
                                 '--write_projection projection/part-*.<format>, and '
                                 'pca-errors-*.jsonl')
        # not --project: that is Beam's Google Cloud project, which a Dataflow run needs
        parser.add_argument('--write_projection', action='store_true',
                            help='also write every point projected on the components '
                                 '(id, projection), with the fitted model as a side input')
        parser.add_argument('--output_format', choices=OUTPUT_FORMATS, default='parquet',
                            help='format of the projections (default parquet)')
        runs.add_run_args(parser)


def model_path(output: str) -> str:
    return FileSystems.join(output.rstrip('/'), MODEL_FILE)


def errors_prefix(output: str) -> str:
    return FileSystems.join(output.rstrip('/'), 'pca')


def projection_glob(args) -> str:
    return (f'{FileSystems.join(args.output.rstrip("/"), PROJECTION)}/part-?????-of-?????.'
            f'{args.output_format}')


def _write_model(model: PCAModel, path: str) -> dict:
    model.save(path)   # the single element: a retry rewrites the same content
    return model.to_dict()


def build(p, args):
    """Read, combine, decompose, write the model (and the projections) and the dead
    letters; returns {'model', 'projection', 'errors', 'read', 'written'}."""
    read = ReadPoints(args.input, **read_kwargs(args, p.options))
    d = read.layout.dimension
    if args.n_components > d:
        raise BeammlError(f'--n_components {args.n_components} is more than the {d} '
                          f'feature(s) of {read.paths[0] if read.paths else args.input}: at '
                          'most min(rows, features)')
    LOG.info('input: %s, %s, d=%d, features %s; %d component(s)', input_files(read),
             read.layout.input_format, d, ','.join(read.layout.feature_columns),
             args.n_components)
    points = p | 'ReadPoints' >> read
    out = args.output.rstrip('/')
    model = points.batches | 'ComputePCA' >> ComputePCA(args.n_components, allow_empty=True)
    written = [model | 'WriteModel' >> beam.Map(_write_model, model_path(out))]
    projection = None
    if args.write_projection:
        projection = points.batches | 'ProjectPCA' >> ProjectPCA(model)
        written.append(projection | 'WriteProjection' >> WriteTable(
            FileSystems.join(out, PROJECTION) + '/', args.output_format,
            schema=projection_schema(read.layout.id_arrow_type, args.n_components)))
    written.append(points.errors | 'WriteDeadLetters' >> WriteDeadLetters(errors_prefix(out)))
    return {'model': model, 'projection': projection, 'errors': points.errors,
            'read': points, 'written': written}


def finish(output: str, counts: dict) -> None:
    """The commit's check: no model means no row was accepted."""
    if not FileSystems.exists(model_path(output)):
        raise BeammlError(f'PCA needs at least one row, and none was accepted: '
                          f'{counts["records_read"]} record(s) read, '
                          f'{counts["records_refused"]} refused; nothing was committed')


def summary(doc: dict) -> str:
    ratios = [float('nan') if isinstance(r, str) else r
              for r in doc['explained_variance_ratio']]
    return (f'explained_variance_ratio: {" ".join(f"{r:.6g}" for r in ratios)} '
            f'(sum {sum(ratios):.6g}); n_samples={doc["n_samples"]} '
            f'n_components={len(ratios)} n_features={len(doc["mean"])}')


@pipeline_run
def run(argv=None):
    args, options = parse_args(PCAOptions, argv, prog='beamml pca',
                                      description=__doc__)

    def show(_):
        path = model_path(args.output)
        print(summary(PCAModel.load(path).to_dict()))
        print(f'model: {path}')
        if args.write_projection:
            print(f'projection: {projection_glob(args)}')
    return runs.run_and_show(
        args, options, 'pca', build, show, folder=True, report=False,
        errors_glob=lambda out: WriteDeadLetters.glob(errors_prefix(out)), finish=finish)


if __name__ == '__main__':
    sys.exit(main_wrapper(run, prog='beamml pca'))
