"""What every beamml pipeline shares: flags, run configs, runner choice, the end-of-run summary.

A pipeline module declares its flags in a plain class (not a ``PipelineOptions``
subclass) and calls :func:`parse_args`, which

* loads ``--config FILE`` (YAML, keys are flag names; unknown keys are an error
  naming the key) and lets flags on the command line override it,
* refuses flags that neither the pipeline nor Beam knows,
* picks the local runner without trying to download anything (``DirectRunner``
  or no ``--runner`` means Beam's in-process ``FnApiRunner`` for batch work),
* checks Dataflow options as Dataflow would, before anything touches the network,
  and makes ``gs://`` anonymous at once against the storage emulator.

Its ``run`` is decorated with :func:`pipeline_run` (Beam's temporary folders go
to one of the run's own, removed afterwards); a Dataflow dry run
(:func:`is_dry_run`) prints the translated job and touches no storage.

After the run, :func:`report` prints the one-line record summary from the
``beamml`` counters and enforces ``--max_refused_fraction``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beamml.transforms.io import (COUNTER_NAMESPACE, INPUT_FORMATS, OUTPUT_FORMATS, BeammlError,
                                  shard_prefix)
from beamml.transforms.io.errors import first_line

__all__ = [
    'BeammlError', 'add_input_args', 'add_output_args', 'add_refused_arg',
    'add_table_input_args', 'parse_args',
    'read_kwargs', 'report', 'run_pipeline', 'run_and_report', 'record_counts',
]

LOG = logging.getLogger('beamml')
LOCAL_RUNNERS = {None, 'DirectRunner', 'direct', 'Direct'}


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


def fraction(value: str) -> float:
    """A number in [0, 1] (argparse type); NaN, negatives and > 1 are refused."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
    if not 0.0 <= x <= 1.0:   # False for NaN too
        raise argparse.ArgumentTypeError(f'{value!r} is not a fraction between 0 and 1')
    return x


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


# --------------------------------------------------------------------------- config

def _beam_parser() -> argparse.ArgumentParser:
    """A parser holding every option Beam itself defines (runner, project, ...)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)

    def walk(cls):
        for sub in cls.__subclasses__():
            if sub.__module__.startswith('apache_beam.'):
                try:
                    sub._add_argparse_args(parser)
                except argparse.ArgumentError:
                    pass  # an option defined by two of Beam's classes
            walk(sub)

    walk(PipelineOptions)
    return parser


def _dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != 'help'}


def load_config(path: str) -> dict[str, Any]:
    import yaml
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(path) as f:
            cfg = yaml.safe_load(f.read().decode('utf-8'))
    except (OSError, IOError) as e:
        raise BeammlError(f'cannot read config {path}: {e}') from e
    except yaml.YAMLError as e:
        raise BeammlError(f'config {path} is not valid YAML: {e}') from e
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise BeammlError(f'config {path} must be a mapping of flag names to values')
    return cfg


def _config_to_argv(cfg: dict[str, Any], actions: dict[str, argparse.Action],
                    path: str) -> list[str]:
    argv: list[str] = []
    for key, value in cfg.items():
        if key == 'setup_file' and isinstance(value, str):
            value = config_relative(value, path)
        action = actions.get(key)
        if action is None:
            raise BeammlError(
                f'config {path}: unknown key {key!r}; keys are flag names, '
                'e.g. runner, project, region, temp_location, setup_file, input, output')
        flag = action.option_strings[0] if action.option_strings else f'--{key}'
        if value is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise BeammlError(f'config {path}: {key} must be true or false')
            if value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            if isinstance(action, argparse._AppendAction):
                argv.extend(f'{flag}={v}' for v in value)
            else:
                argv.append(f'{flag}={",".join(str(v) for v in value)}')
        elif isinstance(value, bool):
            argv.append(f'{flag}={str(value).lower()}')
        else:
            argv.append(f'{flag}={value}')
    return argv


def config_relative(value: str, config_path: str) -> str:
    """A relative path given in a local config file, as a path relative to the file's
    folder (what ``setup_file: ../setup.py`` in ``configs/`` means wherever the command
    runs); any other value unchanged."""
    if not value or os.path.isabs(value) or '://' in value or '://' in config_path:
        return value
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), value))


def check_setup_file(options: PipelineOptions, from_config: str | None) -> None:
    """``--setup_file`` names a file called setup.py (or pyproject.toml), or one line
    saying which path was looked up and how (Beam's stager raises a RuntimeError
    traceback). Only for runners that stage it (not the local ones). ``from_config``: the
    config file the value came from (a relative value there is relative to its folder)."""
    from apache_beam.options.pipeline_options import SetupOptions
    setup = options.view_as(SetupOptions).setup_file
    if setup is None or options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
        return
    shown = f'--setup_file {setup}' + (f' (from {from_config})' if from_config else '')
    if not os.path.isfile(setup):
        how = ('' if os.path.isabs(setup) else
               f', relative to the current folder {os.getcwd()}' if not from_config else
               ', a remote config\'s relative path is relative to the current folder')
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'setup.py')
        own = f" (beamml's own: {here})" if os.path.isfile(here) else ''
        raise BeammlError(f'{shown}: no file at {os.path.abspath(setup)}{how}; give the path '
                          f"of beamml's setup.py{own}, the package Dataflow workers install")
    if os.path.basename(setup) not in ('setup.py', 'pyproject.toml'):
        raise BeammlError(f'{shown}: Dataflow installs the workers\' package from a file '
                          'named setup.py (or pyproject.toml)')


def parse_args(options_cls, argv: Sequence[str] | None, *, prog: str,
               description: str | None = None, streaming: bool = False,
               config_help: str | None = None) -> tuple[argparse.Namespace, PipelineOptions]:
    """Parse a pipeline's command line (and ``--config``) into (its flags, Beam options).

    ``options_cls`` is a plain class with a ``_add_argparse_args(parser)``
    classmethod declaring the pipeline's flags (not a PipelineOptions subclass).
    The returned PipelineOptions hold Beam's flags only. ``streaming``: the
    pipeline runs with ``--streaming`` too (else that flag is refused). ``config_help``:
    the help of ``--config`` for a pipeline that takes it to mean its own file (monitor).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Any Beam pipeline option is accepted too (--runner, --project, --region, '
               '--temp_location, --setup_file, --direct_num_workers, ...). '
               '--config FILE loads them from YAML; flags given here override it.')
    parser.add_argument('--config', default=None,
                        help=config_help or 'YAML run config (keys are flag names), e.g. '
                                            'configs/local.yaml')
    parser.add_argument('--anonymous_storage', action='store_true',
                        help='read and write gs:// without credentials (a public bucket); '
                             'implied when STORAGE_EMULATOR_HOST is set')
    options_cls._add_argparse_args(parser)
    beam_parser = _beam_parser()

    argv, config_path = _pop_config(argv)
    setup_from = None   # the config file --setup_file comes from, if it does
    if config_path:
        local_for_dry_run(PipelineOptions(argv), 'config', config_path)
        actions = {**_dests(beam_parser), **_dests(parser)}
        actions.pop('config', None)
        cfg = load_config(config_path)
        if cfg.get('setup_file') and not any(
                a == '--setup_file' or a.startswith('--setup_file=') for a in argv):
            setup_from = config_path
        argv = _config_to_argv(cfg, actions, config_path) + argv

    prefixes = [a for a in parser._actions if a.type is output_prefix]
    for a in prefixes:   # converted below, once {date} is filled in
        a.type = None
    args, rest = parser.parse_known_args(argv)
    args.config = config_path
    from beamml.pipelines.runs import fill_dates
    fill_dates(args)   # {date} in the path flags, before anything else
    for a in prefixes:   # FLAG_given: the value as given (a folder ends with /)
        value = getattr(args, a.dest)
        setattr(args, a.dest + '_given', value)
        if value is not None:
            setattr(args, a.dest, output_prefix(value))
    _, unknown = beam_parser.parse_known_args(rest)
    if unknown:
        parser.error(f'unknown flag(s): {" ".join(unknown)} (see {prog} --help)')
    # Beam gets its own flags only. The pipeline's flags class is deliberately not a
    # PipelineOptions subclass: Beam parses every registered subclass together, so
    # two pipelines defining --input (or a required flag) would break each other.
    options = PipelineOptions(rest)
    std = options.view_as(StandardOptions)
    if std.streaming and not streaming:
        raise BeammlError(f'{prog} runs in batch only: --streaming is not supported')
    if args.anonymous_storage or os.environ.get('STORAGE_EMULATOR_HOST'):
        use_anonymous_storage()
    if is_dataflow(options):
        check_dataflow_options(options)
    check_setup_file(options, setup_from)
    if std.runner in LOCAL_RUNNERS:
        # The plain DirectRunner first tries to download the Prism runner; the
        # in-process FnApiRunner is what it falls back to for batch work anyway,
        # and the BundleBasedDirectRunner is the local one that runs unbounded sources.
        std.runner = 'BundleBasedDirectRunner' if std.streaming else 'FnApiRunner'
    return args, options


DATAFLOW_RUNNERS = {'DataflowRunner', 'dataflow', 'Dataflow'}


def is_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner in DATAFLOW_RUNNERS or (isinstance(runner, str)
                                          and runner.endswith('.DataflowRunner'))


def is_dry_run(options: PipelineOptions) -> bool:
    """A Dataflow job that is translated offline and never submitted (``--dry_run True``)."""
    from apache_beam.options.pipeline_options import TestOptions
    return is_dataflow(options) and bool(options.view_as(TestOptions).dry_run)


def local_for_dry_run(options: PipelineOptions, flag: str, path: str | None) -> None:
    """A dry run touches no storage: a file the graph is built from (a model, a baseline,
    a gate, a monitoring config, initial centres) must then be local; one on Cloud Storage
    (any ``scheme://``) is one line asking for a local copy, before anything is read."""
    if path and '://' in str(path) and is_dry_run(options):
        raise BeammlError(f'--{flag} {path}: a dry run reads nothing from Cloud Storage, and '
                          f'the job is built from this file: give a local copy of it '
                          f'(--{flag} PATH) to translate the job')


def input_files(read) -> str:
    """What the progress line says of a reader's input: its files, or that it was not read."""
    return (f'{len(read.paths)} file(s)' if read.paths is not None else
            'not read (a dry run: the layout from the flags)')


LAUNCH_ONLY_VARIABLE = 'BEAMML_LAUNCH_ONLY'


def is_launch_only(options: PipelineOptions) -> bool:
    """A Dataflow job submitted without waiting for it to finish: what a Flex Template
    launcher does (``BEAMML_LAUNCH_ONLY=1`` in its environment), since Dataflow gives the
    launcher minutes, not the job's hours. Work that belongs after the job is then in
    the graph (the commit of a dated run, :mod:`beamml.pipelines.runs`)."""
    return is_dataflow(options) and os.environ.get(LAUNCH_ONLY_VARIABLE, '') not in ('', '0')


def no_results(options: PipelineOptions) -> bool:
    """The run ends without results to read back here: a dry run (translated offline,
    nothing written) or a launch that does not wait (:func:`is_launch_only`)."""
    return is_dry_run(options) or is_launch_only(options)


def check_dataflow_options(options: PipelineOptions) -> None:
    """What Dataflow would refuse, as one line, before anything touches the network.

    Beam's own option checks (project id, region, job name, gs:// paths and bucket
    names), plus ``--temp_location``, without which Beam tries to create a default
    staging bucket in the project (a minute of retries with no network).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    gcp = options.view_as(GoogleCloudOptions)
    for flag, path in (('temp_location', gcp.temp_location),
                       ('staging_location', gcp.staging_location)):
        if path is None:
            continue
        m = re.fullmatch(r'gs://([^/]*)(/.*)?', path)
        if not m:
            raise BeammlError(f'--{flag} {path}: Dataflow needs a gs://BUCKET/PATH location')
        if not re.fullmatch(r'[a-z0-9][-_a-z0-9.]{1,61}[a-z0-9]', m.group(1)):
            raise BeammlError(f'--{flag} {path}: {m.group(1)!r} is not a valid bucket name '
                              '(3-63 lowercase letters, digits, "-", "_" and ".")')
    if not gcp.temp_location and not gcp.staging_location:
        raise BeammlError('a Dataflow run needs --temp_location gs://BUCKET/PATH (Beam would '
                          'otherwise try to create a default bucket in the project)')
    errors = PipelineOptionsValidator(options, DataflowRunner()).validate()
    if errors:
        first = ' '.join(str(errors[0]).split())
        more = f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''
        raise BeammlError(f'Dataflow would refuse these options: {first}{more}')


def describe_job(job) -> list[str]:
    """The lines ``beamml validate`` prints for a translated Dataflow job."""
    from apache_beam.portability.api import beam_runner_api_pb2
    kind = {1: 'batch', 2: 'streaming'}.get(int(job.proto.type), str(job.proto.type))
    proto = job.proto_pipeline
    roots = [proto.components.transforms[t] for t in proto.root_transform_ids]
    steps = []   # the pipeline's top-level steps (a root's children, or the root itself)
    for t in roots:
        steps.extend([proto.components.transforms[s].unique_name for s in t.subtransforms]
                     or [t.unique_name])
    images = sorted({beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
                     for e in proto.components.environments.values()
                     if e.urn == 'beam:env:docker:v1'})
    return ([f'job: {job.proto.name or "(unnamed)"} type={kind} '
             f'steps={len(proto.components.transforms)}'] +
            [f'sdk_image: {i}' for i in images] +
            ['steps:'] + [f'  {s}' for s in steps])


def use_anonymous_storage() -> None:
    """Make this process's Beam Cloud Storage client anonymous, at once.

    Without credentials, Beam retries Google's default credentials with back-off
    for about 25 s (and ~60 warning lines) before it goes anonymous; against the
    Cloud Storage emulator or a public bucket there is nothing to wait for. This
    sets Beam's credential cache (``apache_beam.internal.gcp.auth``) to "looked up,
    none found" and stops google-auth from probing the GCE metadata server.
    """
    os.environ.setdefault('NO_GCE_CHECK', 'true')
    from apache_beam.internal.gcp import auth
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None


def _pop_config(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """argv without ``--config FILE``, and FILE (the last one given)."""
    out, found, skip = [], None, False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == '--config':
            if i + 1 >= len(argv):
                raise BeammlError('--config needs a file')
            found, skip = argv[i + 1], True
        elif a.startswith('--config='):
            found = a.split('=', 1)[1]
        else:
            out.append(a)
    return out, found


# --------------------------------------------------------------------------- running

def record_counts(result) -> dict[str, int] | None:
    """The beamml record counters of a finished run, summed over steps."""
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    except Exception:  # a runner that does not report metrics
        return None
    counts: dict[str, int] = {}
    for c in metrics['counters']:
        value = c.committed if c.committed is not None else c.attempted
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
    for name in ('records_read', 'records_ok', 'records_refused'):
        counts.setdefault(name, 0)
    return counts


def report(result, *, errors_glob: str, max_refused_fraction: float | None,
           out=None) -> dict[str, int] | None:
    """Print the one-line record summary; exit non-zero above --max_refused_fraction."""
    out = out or sys.stdout
    counts = record_counts(result)
    if counts is None:
        print('records: counts not reported by this runner', file=out)
        return None
    read, ok, refused = counts['records_read'], counts['records_ok'], counts['records_refused']
    print(f'records_read={read} records_ok={ok} records_refused={refused} '
          f'errors={errors_glob}', file=out)
    if read != ok + refused:
        raise BeammlError(f'record accounting is off: read {read} != ok {ok} + refused '
                          f'{refused}; this is a bug in beamml, please report it')
    if max_refused_fraction is not None and read and refused / read > max_refused_fraction:
        raise BeammlError(
            f'{refused} of {read} records ({refused / read:.2%}) were refused, above '
            f'--max_refused_fraction={max_refused_fraction}; see {errors_glob}')
    return counts


def run_and_report(p: beam.Pipeline, *, errors_glob: str,
                   max_refused_fraction: float | None):
    """Run the pipeline, print the record summary, enforce --max_refused_fraction
    (a dry run has no records: it prints the translated job instead)."""
    result = run_pipeline(p)
    if not no_results(p.options):
        report(result, errors_glob=errors_glob, max_refused_fraction=max_refused_fraction)
    return result


def run_pipeline(p: beam.Pipeline):
    """Run and wait; turn a failure that carries a beamml message into that message.

    A Dataflow dry run translates the job offline and prints it (:func:`describe_job`);
    a launch-only run (:func:`is_launch_only`) submits the job, prints its id and returns
    at once. In both cases the caller must not touch the outputs (:func:`no_results`)."""
    try:
        result = p.run()
        if is_launch_only(p.options) and not is_dry_run(p.options):
            job_id = getattr(result, 'job_id', lambda: None)()
            print(f'submitted Dataflow job {job_id}; not waiting for it ({LAUNCH_ONLY_VARIABLE})')
            return result
        result.wait_until_finish()
    except BeammlError as e:  # a worker's error, re-raised with the step appended
        message = re.sub(r'\s\[while running .*$', '', str(e), flags=re.S)
        if message == str(e):
            raise
        raise BeammlError(message.strip(), parameters=e.parameters) from e
    except Exception as e:  # Beam wraps errors raised in workers
        m = re.search(r'BeammlError: (.+?)(?:\s\[while running|$)', str(e), re.S)
        if m:
            raise BeammlError(m.group(1).strip().splitlines()[0]) from e
        raise
    if is_dry_run(p.options):
        print('\n'.join(describe_job(result.job)))
    return result


_RUN_PREFIX = 'beamml-run-'


@contextlib.contextmanager
def private_tempdir():
    """Point :mod:`tempfile` at a folder of this run's own, and remove it afterwards.

    Beam leaves temporary folders behind: every ``beam.Pipeline`` makes a
    ``beam-pipeline-temp*`` folder that only a completed ``run()`` removes (so a run
    refused while its graph is built leaves one), and a Dataflow submission or dry
    run stages the sdist of ``--setup_file`` in a ``tmp*`` folder it keeps. Inside
    this scope they all land in one folder, removed when the scope ends, however
    it ends. Nested scopes share the outer folder.
    """
    if isinstance(tempfile.tempdir, str) and os.path.basename(
            tempfile.tempdir).startswith(_RUN_PREFIX):
        yield tempfile.tempdir
        return
    saved = tempfile.tempdir
    folder = tempfile.mkdtemp(prefix=_RUN_PREFIX)
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def outer_tempdir() -> str:
    """The temporary folder outside :func:`private_tempdir` (which ends with the run):
    for files that must outlive a killed run, such as a K-means point cache."""
    d = tempfile.gettempdir()
    return os.path.dirname(d) if os.path.basename(d).startswith(_RUN_PREFIX) else d


def pipeline_run(run):
    """Decorator for a pipeline's ``run(argv)``: it runs in :func:`private_tempdir`."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with private_tempdir():
            return run(*args, **kwargs)
    return wrapper


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (not the stream of
    the first run: a caller that swaps stderr, such as a test, gets the lines)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING,
                            format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    # Beam logs an exception raised in a DoFn with its traceback before re-raising it;
    # the CLI prints a beamml error as one line, and any other error still surfaces
    # with its traceback when it reaches main_wrapper.
    logging.getLogger('apache_beam.runners.common').setLevel(logging.CRITICAL)
    LOG.setLevel(logging.INFO)
    if not LOG.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter('%(asctime)s beamml: %(message)s', '%H:%M:%S'))
        LOG.addHandler(h)
        LOG.propagate = False


#: what the one line says when the run was stopped by a signal (exit 128 + the signal)
_STOPPED = {'SIGINT': 'interrupted', 'SIGTERM': 'terminated'}


@contextlib.contextmanager
def _signals_stop_the_run(received: list):
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (SIGTERM would
    otherwise kill the process with no clean-up), noting the signal in ``received``, so
    that the run unwinds as for Ctrl-C: a dated run removes its temporary prefix and
    releases its lock, the private temporary folder is removed. The handlers in place
    before are put back afterwards (tests call the CLI in their own process)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        received.append(signal.Signals(signum))
        raise KeyboardInterrupt

    saved = {}
    for name in _STOPPED:
        sig = getattr(signal, name)
        saved[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def no_space_left(e: BaseException) -> str | None:
    """The one line for a full disk (ENOSPC) anywhere in ``e``'s chain, or in the text of
    an error a runner re-raised from a worker; None for any other error."""
    import errno
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            where = f' writing {x.filename}' if x.filename else ''
            return f'no space left on device{where}'
        todo += [x.__cause__, x.__context__]
    if re.search(r'\[Errno 28\]|No space left on device', str(e)):
        return 'no space left on device (' + ' '.join(first_line(e).split())[:300] + ')'
    return None


def main_wrapper(run, argv: Iterable[str] | None = None, prog: str = 'beamml') -> int:
    """Call ``run(argv)``; print a BeammlError as one line and return 2 (or its own exit
    code). A run stopped by SIGINT (Ctrl-C) or SIGTERM says ``interrupted`` or
    ``terminated`` in one line and returns 130 or 143, as shells expect, after the run's
    clean-up; a full disk is one line and 2. Any other error is a bug: its traceback."""
    configure_logging()
    received: list = []
    try:
        with _signals_stop_the_run(received):
            run(None if argv is None else list(argv))
    except BaseException as e:   # (a signal may surface as whatever Beam wrapped it in)
        if received or isinstance(e, KeyboardInterrupt):
            sig = received[0] if received else None
            print(f'{prog}: {_STOPPED.get(getattr(sig, "name", None), "interrupted")}',
                  file=sys.stderr)
            return 128 + int(sig or 2)
        if isinstance(e, BeammlError):
            print(f'{prog}: error: {e.for_cli()}', file=sys.stderr)
            return getattr(e, 'exit_code', 2)   # 3 monitor's alarms, 4 no input, 5 locked
        full = no_space_left(e) if isinstance(e, Exception) else None
        if full:
            print(f'{prog}: error: {full}', file=sys.stderr)
            return 2
        raise
    return 0


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
