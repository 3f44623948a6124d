"""Vector norms: rows id, l0, l1, l2, linf for every point.

    beamml norms --input 'data/*.parquet' --output out/norms [--output_format csv]
"""
from __future__ import annotations

import logging

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common
from transforms.io import ReadPoints, WriteDeadLetters, WriteTable
from transforms.norms import NORMS, ComputeNorms

LOG = logging.getLogger('beamml')


class NormsOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        common.add_input_args(parser)
        common.add_output_args(parser)


def norms_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([('id', id_type)] + [(n, pa.float64()) for n in NORMS])


def build(p, args):
    """Read, compute norms, write results and dead letters; returns {'norms', 'errors'}."""
    read = ReadPoints(args.input, **common.read_kwargs(args))
    LOG.info('input: %d file(s), %s, d=%d, features %s', len(read.paths),
             read.layout.input_format, read.layout.dimension, ','.join(read.layout.feature_columns))
    points = p | 'ReadPoints' >> read
    schema = norms_schema(read.layout.id_arrow_type)
    norms = (points.batches
             | 'ComputeNorms' >> ComputeNorms()
             | 'SelectColumns' >> beam.Map(lambda b: b.select(schema.names)))
    norms | 'WriteNorms' >> WriteTable(args.output, args.output_format, schema=schema)
    points.errors | 'WriteErrors' >> WriteDeadLetters(args.output)
    return {'norms': norms, 'errors': points.errors}


def run(argv=None):
    args, options = common.parse_args(NormsOptions, argv, prog='beamml norms',
                                      description=__doc__)
    common.ensure_dir_for(args.output)
    p = beam.Pipeline(options=options)
    build(p, args)
    result = common.run_pipeline(p)
    common.report(result, errors_glob=WriteDeadLetters.glob(args.output),
                  max_refused_fraction=args.max_refused_fraction)
    print(f'norms: {args.output}-?????-of-?????.{args.output_format}')
    return result


if __name__ == '__main__':
    import sys
    sys.exit(common.main_wrapper(run, prog='beamml norms'))
