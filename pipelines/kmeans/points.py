"""The training points of ``beamml kmeans``: how they are read, and where their labels go
(the final pass over the point cache, pipelines/kmeans/final.py, writes them).
"""
from __future__ import annotations


from beamml.pipelines._platform import flags
from beamml.pipelines._platform.runners import is_dry_run
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.objects import list_under


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
