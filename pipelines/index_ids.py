"""Dense id index: number distinct ids 0..n-1 (id2idx) and re-encode the rows with an idx column.

    beamml index_ids --input 'logs/*.csv' --id_column user_id --output out/users \\
        [--order first_seen|sorted] [--output_format parquet|csv|jsonl]

Writes ``PREFIX-id2idx-SSSSS-of-NNNNN.parquet`` (columns ``id, idx``; always
Parquet so that ids keep their type), ``PREFIX-encoded-SSSSS-of-NNNNN.<format>``
(every input column + ``idx``) and ``PREFIX-errors-*.jsonl`` (rows refused: no id, an id
or a value not of its column's type).
"""
from __future__ import annotations

import logging
import sys

import apache_beam as beam
import pyarrow as pa

from beamml.pipelines._platform import runs
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.flags import (add_output_args, add_refused_arg,
                                              add_table_input_args, declare_layout)
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.runners import input_files, is_dry_run, pipeline_run
from beamml.transforms.index import ORDERS, IndexIds, id2idx_schema, input_types, table_batches
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadTable, WriteDeadLetters, WriteTable
from beamml.transforms.core.types import SOURCE_COLUMNS

LOG = logging.getLogger('beamml')
IDX_COLUMN = 'idx'


class IndexIdsOptions:
    """The flags of ``beamml index_ids``.

    Deliberately not a ``PipelineOptions`` subclass: Beam parses every registered
    subclass's flags together for every pipeline in the process, so a required
    ``--id_column`` here (or a flag another pipeline also defines) would break the
    other pipelines run in the same process (the demo, the tests).
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        add_table_input_args(parser, id_required=True,
                                    id_help='the column holding the ids (int or string)')
        parser.add_argument('--order', choices=ORDERS, default='first_seen',
                            help='first_seen (default): idx by first appearance (files in '
                                 'path order, rows in file order); sorted: by ascending id')
        add_refused_arg(parser)
        add_output_args(parser)
        runs.add_run_args(parser)


def encoded_fallback_schema(layout, id_column: str) -> pa.Schema:
    """Schema of an encoded output with no rows at all (column types unknown: text)."""
    return pa.schema([(c, layout.id_arrow_type if c == id_column else pa.string())
                      for c in layout.columns] + [(IDX_COLUMN, pa.int64())])


def build(p, args):
    """Read, number, re-encode, write; returns {'id2idx', 'encoded', 'errors'}."""
    kwargs = dict(input_format=args.input_format, id_column=args.id_column,
                  source_columns=True)
    if is_dry_run(p.options):   # reads no input: the layout the flags declare
        kwargs = declare_layout(args.input, kwargs, points=False)
    read = ReadTable(args.input, **kwargs)
    layout = read.layout
    clash = [c for c in (IDX_COLUMN,) + SOURCE_COLUMNS if c in layout.columns]
    if clash:
        raise BeammlError(f'{read.paths[0] if read.paths else args.input} already has a '
                          f'column {clash[0]!r}, which index_ids adds; rename it')
    LOG.info('input: %s, %s, id column %r (%s), order %s', input_files(read),
             layout.input_format, args.id_column, layout.id_type, args.order)
    rows = p | 'ReadTable' >> read
    out = rows.batches | 'IndexIds' >> IndexIds(
        args.id_column, read.paths or [], order=args.order, id_type=layout.id_arrow_type,
        columns=layout.columns, input_types=input_types(layout),
        text=layout.input_format == 'csv')
    errors = (rows.errors, out['errors']) | 'AllErrors' >> beam.Flatten()
    written = [
        out['id2idx']
        | 'Id2IdxBatches' >> beam.FlatMap(table_batches)
        | 'WriteId2Idx' >> WriteTable(args.output + '-id2idx', 'parquet',
                                      schema=id2idx_schema(layout.id_arrow_type)),
        out['encoded'] | 'WriteEncoded' >> WriteTable(
            args.output + '-encoded', args.output_format,
            schema=encoded_fallback_schema(layout, args.id_column)),
        errors | 'WriteErrors' >> WriteDeadLetters(args.output)]
    return {'id2idx': out['id2idx'], 'encoded': out['encoded'], 'errors': errors,
            'read': rows, 'written': written}


@pipeline_run
def run(argv=None):
    args, options = parse_args(IndexIdsOptions, argv, prog='beamml index_ids',
                                      description=__doc__)

    def show(_):
        print(f'id2idx: {args.output}-id2idx-?????-of-?????.parquet')
        print(f'encoded: {args.output}-encoded-?????-of-?????.{args.output_format}')
    return runs.run_and_show(args, options, 'index_ids', build, show,
                             errors_glob=WriteDeadLetters.glob)


if __name__ == '__main__':
    sys.exit(main_wrapper(run, prog='beamml index_ids'))
