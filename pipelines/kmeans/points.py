"""The training points of ``beamml kmeans``: how they are read, and the passes over them
that need the final centres (the version's baseline, the ``--output`` labels).
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform import flags
from beamml.pipelines._platform.runners import is_dry_run, run_pipeline
from beamml.transforms.core.documents import read_json
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.objects import list_under
from beamml.transforms.io import ReadPoints, WriteTable
from beamml.transforms.kmeans import KMeansState
from beamml.transforms.kmeans.centring import training_labels
from beamml.transforms.model import CentroidModel
from beamml.transforms.monitoring import BASELINE_FILE, MakeBaseline, column_names, write_baseline


def read_kwargs(args, options=None, **declared) -> dict:
    """ReadPoints' keyword arguments: the input flags and ``--weight_column``; for
    ``--distance cosine`` zero vectors are refused as dead letters (with their file,
    row and line). In a dry run (``options``) the layout the flags declare
    (:func:`flags.declare_layout`, ``declared`` its defaults)."""
    kwargs = flags.read_kwargs(args)
    if getattr(args, 'weight_column', None):
        kwargs['weight_column'] = args.weight_column
    if getattr(args, 'distance', 'euclidean') == 'cosine':
        kwargs['refuse_zero'] = True
    if options is not None and is_dry_run(options):
        return flags.declare_layout(args.input, kwargs, **declared)
    return kwargs


def baseline_for_model(model: CentroidModel, input_pattern: str, read_kwargs: dict,
                       options, path: str) -> dict:
    """Write ``path`` (a model version's baseline.json) from one more pass over the
    training input with the final model: what ``beamml kmeans`` calls."""
    p = beam.Pipeline(options=options)
    read = ReadPoints(input_pattern, **read_kwargs)
    points = p | 'ReadPoints' >> read
    model_pc = p | 'CentroidModel' >> beam.Create([model])
    refused = points.errors | 'CountRefused' >> beam.combiners.Count.Globally()
    (points.batches
     | 'MakeBaseline' >> MakeBaseline(column_names(read.layout), model_pc, model=model,
                                      refused=refused, source=input_pattern)
     | 'WriteBaseline' >> beam.Map(lambda d: write_baseline(path, d)))
    run_pipeline(p)
    return read_json(path)


def write_baseline_pass(args, options, model: CentroidModel, version: str) -> None:
    """The version's baseline.json (beamml monitor compares later data with it): one more
    pass over the input with the final centres, before model.json makes the version."""
    baseline_for_model(model, args.input, read_kwargs(args), options,
                       FileSystems.join(args.model, version, BASELINE_FILE))


def refuse_existing_labels(args) -> None:
    """``--output`` must hold nothing yet: the labels are written in place, not as a
    committed run, so they would replace files no beamml run recorded as its own."""
    owned = args.output_given if args.output_given.endswith('/') else args.output + '-'
    found = list_under(owned)
    if found:
        more = f' (and {len(found) - 1} more)' if len(found) > 1 else ''
        raise BeammlError(f'--output {args.output_given}: {found[0]}{more} exists; kmeans '
                          'writes its labels only where nothing is (it never replaces a file): '
                          'choose another --output, or remove them')


def write_labels(args, options, state: KMeansState, model: CentroidModel) -> None:
    """``--output``: the training points' labels and distances against the final centres."""
    p = beam.Pipeline(options=options)
    read = ReadPoints(args.input, **read_kwargs(args))
    schema = pa.schema([('id', read.layout.id_arrow_type), ('cluster', pa.int64()),
                        ('distance', pa.float64()), ('model_version', pa.string())])
    points = p | 'ReadPoints' >> read   # the refused rows are the training's dead letters
    (points.batches
     | 'Labels' >> beam.Map(training_labels, state, model.version)
     | 'WriteLabels' >> WriteTable(args.output, args.output_format, schema=schema))
    run_pipeline(p)
    print(f'labels: {args.output}-?????-of-?????.{args.output_format}')


