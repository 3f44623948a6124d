"""Vector norms: rows id, l0, l1, l2, linf for every point; optionally ordered by one norm.

    beamml norms --input 'data/*.parquet' --output out/norms [--output_format csv]
    beamml norms --input 'data/*.parquet' --output out/by_l2 --order l2 [--ascending]
        [--num_shards N]

With ``--order NORM`` the output also holds ``features`` and is ordered by that
norm (descending unless ``--ascending``, ties by id ascending) across files:
file ``PREFIX-00000-of-NNNNN`` holds the largest norms, each file is sorted, and
reading the files in name order gives the whole data set in order. The data set
is never gathered on one worker (range partitioning on a sample of the norms).

``l0`` is the count of entries that are not 0, an integer: NaN and inf count as
non-zero, so it is defined for every row; a row with a NaN has NaN ``l1``, ``l2``
and ``linf`` (and sorts last by them).
"""
from __future__ import annotations

import logging
import sys

import apache_beam as beam
import pyarrow as pa

from beamml.pipelines._platform import runs
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.flags import (add_deprecated, add_input_args, add_output_args,
                                              read_kwargs)
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import input_files, pipeline_run
from beamml.pipelines._platform.values import positive_int
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadPoints, WriteDeadLetters, WriteTable
from beamml.transforms.norms import NORMS, ComputeNorms, WriteSortedShards
from beamml.transforms.sorting import ROWS_PER_SHARD, SortByNorm

LOG = logging.getLogger('beamml')


class NormsOptions:
    """The flags of ``beamml norms``.

    Not a ``PipelineOptions`` subclass: Beam parses every registered subclass's
    flags for every pipeline built in the process, so the required ``--input`` and
    ``--output`` would break other pipelines run in the same process (tests, demo).
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        add_input_args(parser)
        add_output_args(parser)
        runs.add_run_args(parser)
        parser.add_argument('--order', choices=NORMS, default=None,
                            help='order the output by this norm (descending; ties by id) '
                                 'and add the features column (was --sort)')
        add_deprecated(parser, '--sort', '--order')
        parser.add_argument('--ascending', action='store_true',
                            help='with --order: smallest norm first')
        parser.add_argument('--num_shards', type=positive_int, default=None,
                            help='number of output files; default with --order: one per '
                                 f'{ROWS_PER_SHARD:,} rows (1 for smaller data), '
                                 'without --order: chosen by the runner')


def norms_schema(id_type: pa.DataType, dimension: int | None = None) -> pa.Schema:
    """Output columns: id, l0 (int64), l1, l2, linf (float64), and features when
    ``dimension`` is given."""
    fields = [('id', id_type)] + [(n, pa.int64() if n == 'l0' else pa.float64())
                                  for n in NORMS]
    if dimension is not None:
        fields.append(('features', pa.list_(pa.float64(), dimension)))
    return pa.schema(fields)


def validate(args) -> None:
    """Flag checks a user can act on, before anything is read."""
    if args.ascending and not args.order:
        raise BeammlError('--ascending orders the output and needs --order '
                          f'({"|".join(NORMS)})')


def output_glob(args) -> str:
    return f'{args.output}-?????-of-?????.{args.output_format}'


def build(p, args):
    """Read, compute norms (and sort), write results and dead letters.

    Returns {'norms': RecordBatches, or SortedShards with --order, 'errors': dead letters}.
    """
    validate(args)
    read = ReadPoints(args.input, **read_kwargs(args, p.options))
    LOG.info('input: %s, %s, d=%d, features %s', input_files(read),
             read.layout.input_format, read.layout.dimension, ','.join(read.layout.feature_columns))
    points = p | 'ReadPoints' >> read
    schema = norms_schema(read.layout.id_arrow_type,
                          read.layout.dimension if args.order else None)
    names = schema.names
    norms = (points.batches
             | 'ComputeNorms' >> ComputeNorms()
             | 'SelectColumns' >> beam.Map(lambda b, cols: b.select(cols), names))
    if args.order:
        norms = norms | 'SortByNorm' >> SortByNorm(args.order, descending=not args.ascending,
                                                   num_shards=args.num_shards)
        written = norms | 'WriteSortedNorms' >> WriteSortedShards(
            args.output, args.output_format, schema=schema)
    else:
        written = norms | 'WriteNorms' >> WriteTable(
            args.output, args.output_format, num_shards=args.num_shards or 0, schema=schema)
    errors_written = points.errors | 'WriteErrors' >> WriteDeadLetters(args.output)
    return {'norms': norms, 'errors': points.errors, 'read': points,
            'written': [written, errors_written]}


@pipeline_run
def run(argv=None):
    args, options = parse_args(NormsOptions, argv, prog='beamml norms',
                                      description=__doc__)
    validate(args)

    def show(_):
        order = (f' (ordered by {args.order} {"ascending" if args.ascending else "descending"})'
                 if args.order else '')
        print(f'norms{order}: {output_glob(args)}')
    return runs.run_and_show(args, options, 'norms', build, show,
                             errors_glob=WriteDeadLetters.glob)


if __name__ == '__main__':
    sys.exit(main_wrapper(run, prog='beamml norms'))
