"""The flags every command shares (input, output, refused rows) and the layout they declare.

A command declares its own flags in a plain class (not a ``PipelineOptions`` subclass)
and adds these with :func:`add_input_args`, :func:`add_output_args` and
:func:`add_refused_arg`; :func:`read_kwargs` turns them into the readers' arguments.
:func:`check_output` refuses an output whose bucket or folder cannot be written,
before anything runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.io import INPUT_FORMATS, OUTPUT_FORMATS, shard_prefix
from beamml.pipelines._platform.runners import is_dry_run
from beamml.pipelines._platform.values import fraction  # noqa: F401 (flags.fraction)


def add_input_args(parser, *, required: bool = True) -> None:
    """Flags of every pipeline that reads a point cloud or a table."""
    parser.add_argument('--input', required=required,
                        help='file, glob or gs:// pattern to read')
    parser.add_argument('--input_format', choices=INPUT_FORMATS, default=None,
                        help='input format; default: from the file extension')
    parser.add_argument('--id_column', default=None,
                        help="column holding the row ids; default: the column 'id' "
                             'if there is one, else ids are <file name>:<row>')
    parser.add_argument('--feature_columns', default=None,
                        help='comma-separated feature columns (or one list column); '
                             "default: a list column 'features' if there is one, else "
                             'every numeric column but the id')
    parser.add_argument('--dimension', type=int, default=None,
                        help='expected number of features; default: taken from the data')
    parser.add_argument('--allow_nan', action='store_true',
                        help='accept NaN and inf feature values instead of refusing the row')
    add_refused_arg(parser)


def add_table_input_args(parser, *, id_required: bool, id_help: str,
                         input_required: bool = True) -> None:
    """Flags of a pipeline that reads tables (prediction logs, events), not points."""
    parser.add_argument('--input', required=input_required,
                        help='file, glob or gs:// pattern to read; files are read in path order')
    parser.add_argument('--input_format', choices=[f for f in INPUT_FORMATS if f != 'npy'],
                        default=None, help='input format; default: from the file extension')
    parser.add_argument('--id_column', required=id_required, default=None, help=id_help)


#: the title of the argument group of the streaming flags (--help, the templates)
STREAMING_GROUP = 'streaming (with --streaming)'
#: the release in which the deprecated flag names go
DEPRECATED_UNTIL = '0.3'


class DeprecatedFlag(argparse.Action):
    """An old flag name kept for one release: it sets the new flag (same type and
    choices) and prints one line on stderr saying what to write instead. Hidden from
    ``--help``, the Flex templates and the CLI reference; a run config's old key works
    the same way."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f'{parser.prog}: warning: {option_string} is deprecated (it goes in beamml '
              f'{DEPRECATED_UNTIL}): use {self.new}', file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(parser, old: str, new: str) -> None:
    """Keep ``old`` working as ``new`` (already declared on ``parser``) for one release."""
    action = next(a for a in parser._actions if new in a.option_strings)
    if action.nargs == 0:
        raise ValueError(f'{new}: a deprecated name of a switch is not supported')
    parser.add_argument(old, dest=action.dest, new=new, action=DeprecatedFlag,
                        type=action.type, choices=action.choices,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def given_deprecated(parser, argv) -> None:
    """A required flag given by its deprecated name is given: argparse checks required
    flags by name, so the new one is not required for this parse."""
    for old in parser._actions:
        if isinstance(old, DeprecatedFlag) and any(
                a == s or a.startswith(s + '=') for s in old.option_strings for a in argv):
            for a in parser._actions:
                if a.dest == old.dest and a is not old:
                    a.required = False


def add_refused_arg(parser) -> None:
    parser.add_argument('--max_refused_fraction', type=fraction, default=0.01,
                        help='exit non-zero when more than this fraction of the records '
                             'read is refused (default 0.01)')


def output_prefix(value: str) -> str:
    """An ``--output`` prefix; one ending in ``/`` names a folder, whose shards are
    ``part-*`` (:func:`beamml.transforms.io.shard_prefix`, the rule the sinks follow)."""
    return shard_prefix(value)


def add_output_args(parser, *, required: bool = True) -> None:
    parser.add_argument('--output', required=required, type=output_prefix,
                        help='output prefix (local path or gs://); shards are '
                             'PREFIX-SSSSS-of-NNNNN.<format>; a prefix ending in / is a '
                             'folder: FOLDER/part-SSSSS-of-NNNNN.<format>')
    parser.add_argument('--output_format', choices=OUTPUT_FORMATS, default='parquet',
                        help='output format (default parquet)')


def read_kwargs(args, options: PipelineOptions | None = None, **declared) -> dict[str, Any]:
    """The ReadPoints keyword arguments carried by the input flags; in a dry run
    (``options`` say so) with the layout they declare instead (:func:`declare_layout`,
    whose keyword arguments ``declared`` are), since a dry run reads no input."""
    kwargs = dict(
        input_format=args.input_format,
        id_column=args.id_column,
        feature_columns=(args.feature_columns.split(',') if args.feature_columns else None),
        dimension=args.dimension,
        allow_nan=args.allow_nan,
    )
    if options is not None and is_dry_run(options):
        return declare_layout(args.input, kwargs, **declared)
    return kwargs


_LAYOUT_KEYS = ('input_format', 'id_column', 'feature_columns', 'dimension', 'weight_column')


def declare_layout(pattern: str, kwargs: dict[str, Any], *, points: bool = True,
                   dimension: int | None = None, feature_columns=None,
                   list_features: bool | None = None) -> dict[str, Any]:
    """ReadPoints / ReadTable keyword arguments ``kwargs`` with their layout parameters
    turned into ``layout=``: the layout the flags declare
    (:func:`~beamml.transforms.io.declared.declared_layout`), for a dry run, which reads
    no input. ``dimension`` and ``feature_columns`` are defaults for flags not given (a
    model's d, a baseline's features); what is still missing is one line naming the flags
    to give."""
    from beamml.transforms.io.declared import declared_layout
    out = {k: v for k, v in kwargs.items() if k not in _LAYOUT_KEYS}
    given = {k: kwargs.get(k) for k in _LAYOUT_KEYS}
    if given['dimension'] is None:
        given['dimension'] = dimension
    if not given['feature_columns'] and feature_columns:
        given['feature_columns'] = feature_columns
    else:
        list_features = None
    out['layout'] = declared_layout(
        pattern, points=points, list_features=list_features,
        why=f'a dry run reads no input, so the layout of {pattern} must come from the flags',
        **given)
    return out


def check_output(prefix: str, flag: str = '--output', given: str | None = None) -> None:
    """Make sure the run can write under ``prefix`` before anything runs.

    Locally the folder it writes into is created; an existing file in its way,
    or a folder that cannot be created or written, is a one-line error. For
    ``gs://`` the bucket must exist (found now, not when the results are
    written at the end of the run). ``given`` is the flag's value as the user
    wrote it (``prefix`` may be a file under it). A dry run must not call this.
    """
    shown = f'{flag} {given or prefix}'
    if prefix.startswith('gs://'):
        _check_bucket(prefix, shown)
        return
    if '://' in prefix:
        return
    d = os.path.dirname(os.path.abspath(shard_prefix(prefix)))
    up = d
    while up and not os.path.exists(up):
        up = os.path.dirname(up)
    if up and not os.path.isdir(up):
        raise BeammlError(f'{shown}: {up} is a file, not a folder')
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise BeammlError(f'{shown}: cannot create the folder {d}: {e.strerror or e}') from e
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix='.beamml-write-check-'):
            pass
    except OSError as e:
        raise BeammlError(f'{shown}: cannot write in {d}: {e.strerror or e}') from e


def _check_bucket(path: str, shown: str) -> None:
    bucket = path[len('gs://'):].split('/', 1)[0]
    if not bucket:
        raise BeammlError(f'{shown} names no bucket')
    from apache_beam.io.gcp.gcsio import GcsIO
    try:
        found = GcsIO().get_bucket(bucket)
    except Exception as e:   # no access, no network: say so in one line
        first = first_line(e)
        raise BeammlError(f'{shown}: cannot look up the bucket gs://{bucket}: {first}') from e
    if found is None:
        raise BeammlError(f'{shown}: the bucket gs://{bucket} does not exist')
