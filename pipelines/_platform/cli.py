"""Parsing a command line: flags, ``--config FILE`` run configs, and Beam's own options.

:func:`parse_args`

* loads ``--config FILE`` (YAML, keys are flag names; unknown keys are an error
  naming the key) and lets flags on the command line override it,
* refuses flags that neither the pipeline nor Beam knows,
* picks the local runner without trying to download anything (``DirectRunner``
  or no ``--runner`` means Beam's in-process ``FnApiRunner`` for batch work),
* checks Dataflow options as Dataflow would, before anything touches the network,
  and makes ``gs://`` anonymous at once against the storage emulator.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beamml.transforms.core.errors import BeammlError
from beamml.pipelines._platform.flags import (STREAMING_GROUP, DeprecatedFlag, given_deprecated,
                                              output_prefix)
from beamml.pipelines._platform.runners import (LOCAL_RUNNERS, check_dataflow_options, is_dataflow,
                                                local_for_dry_run, use_anonymous_storage)


class BeamOptions(PipelineOptions):
    """Beam's PipelineOptions whose views are made once per options class.

    Beam asks the pipeline's options for a view (``options.view_as(TypeOptions)``...)
    at every step it applies and type-checks, ~700 times for a 2-step pipeline, and each
    view builds an argparse parser of its class's flags and parses them again: ~1.5 ms,
    a quarter of a small run's time. A view holds nothing of its own (its values live in
    the options' shared ``_all_options``, which ``view_as`` fills at the first view of
    each class), so this class keeps the first view of each class and returns it again.
    Declares no flag of its own; the cache is not pickled."""

    def view_as(self, cls):
        views = self.__dict__.setdefault('_beamml_views', {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self):
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k != '_beamml_views'}




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
    """{config key: action}: a flag's key is its dest; a deprecated flag's, its old name."""
    found = {a.dest: a for a in parser._actions
             if a.dest != 'help' and not isinstance(a, DeprecatedFlag)}
    found.update({a.option_strings[0].lstrip('-'): a for a in parser._actions
                  if isinstance(a, DeprecatedFlag)})
    return found


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
        import beamml   # a checkout's setup.py is beside the beamml folder
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(beamml.__file__))),
                            'setup.py')
        own = f" (beamml's own: {here})" if os.path.isfile(here) else ''
        raise BeammlError(f'{shown}: no file at {os.path.abspath(setup)}{how}; give the path '
                          f"of beamml's setup.py{own}, the package Dataflow workers install")
    if os.path.basename(setup) not in ('setup.py', 'pyproject.toml'):
        raise BeammlError(f'{shown}: Dataflow installs the workers\' package from a file '
                          'named setup.py (or pyproject.toml)')


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (a BeammlError: exit 2) that points to
    ``--help``, as every other refusal of a run is."""

    def error(self, message):
        raise BeammlError(f'{message} (see {self.prog} --help)')


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
    parser = _Parser(
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
    given_deprecated(parser, argv)
    args, rest = parser.parse_known_args(argv)
    args.config = config_path
    from beamml.pipelines._platform.runs import fill_dates
    fill_dates(args)   # {date} in the path flags, before anything else
    for a in prefixes:   # FLAG_given: the value as given (a folder ends with /)
        value = getattr(args, a.dest)
        setattr(args, a.dest + '_given', value)
        if value is not None:
            setattr(args, a.dest, output_prefix(value))
    _, unknown = beam_parser.parse_known_args(rest)
    if unknown:
        parser.error(f'unknown flag(s): {" ".join(unknown)}')
    # Beam gets its own flags only. The pipeline's flags class is deliberately not a
    # PipelineOptions subclass: Beam parses every registered subclass together, so
    # two pipelines defining --input (or a required flag) would break each other.
    options = BeamOptions(rest)
    std = options.view_as(StandardOptions)
    if std.streaming and not streaming:
        raise BeammlError(f'{prog} runs in batch only: --streaming is not supported')
    streaming_flags = [a.dest for g in parser._action_groups
                       if g.title == STREAMING_GROUP for a in g._group_actions
                       if getattr(args, a.dest, None) not in (None, a.default)]
    if not std.streaming and not streaming_flags:   # (with them: "needs --streaming")
        # the flags a batch run needs that a stream does not
        for flag in getattr(options_cls, 'REQUIRED_IN_BATCH', ()):
            if getattr(args, flag) in (None, ''):
                raise BeammlError(f'--{flag} is required')
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
