"""Dataflow Flex Template metadata for every pipeline, generated from its flags, and the
launch entry the template's container runs.

    python -m beamml.pipelines._platform.templates --write configs/templates   # make templates
    python -m beamml.pipelines._platform.templates --check configs/templates   # exit 1 if stale

Which templates. One batch template per pipeline, ``<pipeline>.json``, and for the
pipelines that also run with ``--streaming`` (their parser has the streaming flags of
:func:`beamml.pipelines._platform.streams.add_streaming_args`) one streaming template,
``<pipeline>_streaming.json`` (``"streaming": true``): the two take different flags
and Dataflow's console shows streaming options only for a streaming template. Batch
``kmeans`` has no template: it drives one Dataflow job per block of iterations from
its own process, so it must wait for them, and it refuses the launch-only mode a Flex
launcher needs (``BEAMML_LAUNCH_ONLY``); ``kmeans_streaming.json`` exists.

Which flags are parameters. A template's parameters are the pipeline's own flags, read
from its flags class (``_add_argparse_args``), never from a list kept here:

* ``--config`` is not one: a template's parameters are validated by Dataflow against
  this metadata, and a YAML file would bring flags (and Beam options such as the
  runner or project, which the launcher sets) past that check.
* ``--anonymous_storage`` is not one: on Dataflow the launcher and the workers act as
  the job's service account; anonymous Cloud Storage is for public buckets and the
  emulator, from a laptop.
* A batch template leaves out the streaming flags (the parser's
  ``streaming (with --streaming)`` group; a batch run refuses most of them). A
  streaming template leaves out the flags of a committed batch run (``runs.RUN_FLAGS``:
  ``--overwrite``, ``--wait_for_input``, ...) and those the pipeline module's
  ``_BATCH_ONLY`` names (the batch flags its streaming run refuses): a stream refuses them.
* Beam's own options (``--max_num_workers``, ``--machine_type``, ...) are not declared:
  they go in the launch request's ``environment``.

``isOptional`` follows argparse's ``required``, and in a batch template the flags class's
``REQUIRED_IN_BATCH`` too (``assign``'s, ``evaluate``'s and ``monitor``'s ``--input`` and
``--output``): argparse takes them as optional because the same parser serves the
streaming run, which reads a subscription or a topic instead; the platform refuses a
batch run without one (``--input is required``) before anything runs. Deprecated flag
names (hidden from ``--help``) are not parameters.

Values. The Flex launcher runs ``python FLEX_TEMPLATE_PYTHON_PY_FILE --name=value ...``.
A flag that takes no value (argparse ``store_true``: ``--overwrite``, ``--allow_nan``,
``--all_distances``; also Beam's ``--streaming``) is a parameter taking ``true`` or
``false``; argparse refuses ``--overwrite=true``, so :func:`flex_argv` turns
``--flag=true`` into ``--flag`` and drops ``--flag=false`` before the pipeline parses.
``regexes`` (full matches) say what a value looks like where the flag's type says it:
choices ``^(a|b)$``, ``true|false``, and the ``regex`` of the flag's type object
(:mod:`beamml.pipelines._platform.values`: integers >= 1, numbers in [0, 1], seconds
>= 0, ...; ``runs.run_date``: YYYY-MM-DD, today, yesterday; ``--n_init``: ``auto`` or
an integer >= 1), or plain integers and numbers for ``int`` and ``float``. Paths are not
forced to ``gs://`` (the pipelines take any path Beam's FileSystems read) and
``paramType`` is left out for the same reason (the console's Cloud Storage pickers).
A flag whose type is none of these gets no regex; the pipeline checks it at launch.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
from typing import Any, Iterable

from beamml.pipelines._platform.flags import STREAMING_GROUP

__all__ = ['Template', 'templates', 'metadata', 'render', 'flex_argv', 'launch', 'main']

#: the environment variable naming the template a container launches (set at build time)
TEMPLATE_VARIABLE = 'BEAMML_TEMPLATE'
#: pipelines whose batch run cannot be launched without waiting (see the docstring)
NO_BATCH_TEMPLATE = {'kmeans': 'batch kmeans drives one Dataflow job per block of '
                                'iterations from its launcher process and must wait for them'}
#: the flags parse_args adds to every pipeline, which are not template parameters
NOT_PARAMETERS = ('config', 'anonymous_storage')

_INT = r'^-?[0-9]+$'
_NUMBER = r'^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
_BOOL = r'^(true|false)$'


@dataclasses.dataclass(frozen=True)
class Template:
    """One Flex Template: ``name`` (the metadata file's stem), the pipeline module, and
    whether it is the streaming run."""
    name: str
    pipeline: str
    streaming: bool

    @property
    def module(self):
        return importlib.import_module(f'beamml.pipelines.{self.pipeline}')


def options_class(module):
    """The pipeline's flags class: the one class of the module with ``_add_argparse_args``."""
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if c.__module__ == module.__name__ and hasattr(c, '_add_argparse_args')]
    if len(found) != 1:
        raise RuntimeError(f'{module.__name__}: expected one flags class, found {len(found)}')
    return found[0]


def flags_parser(module) -> argparse.ArgumentParser:
    """A parser holding the pipeline's own flags (what ``parse_args`` adds after
    ``--config`` and ``--anonymous_storage``)."""
    parser = argparse.ArgumentParser(prog=f'beamml {module.__name__.rsplit(".", 1)[-1]}',
                                     allow_abbrev=False)
    options_class(module)._add_argparse_args(parser)
    return parser


def _streaming_dests(parser) -> set[str]:
    return {a.dest for g in parser._action_groups if g.title == STREAMING_GROUP
            for a in g._group_actions}


def pipeline_names() -> list[str]:
    """The pipelines that have a flags class (``beamml <name>``; not demo or validate)."""
    from beamml.pipelines.__main__ import pipelines
    names = []
    for name in pipelines():
        module = importlib.import_module(f'beamml.pipelines.{name}')
        if any(hasattr(c, '_add_argparse_args') and c.__module__ == module.__name__
               for _, c in inspect.getmembers(module, inspect.isclass)):
            names.append(name)
    return names


def templates() -> dict[str, Template]:
    """{template name: Template} for every pipeline, batch and (where it streams) streaming."""
    found = {}
    for name in pipeline_names():
        parser = flags_parser(importlib.import_module(f'beamml.pipelines.{name}'))
        if name not in NO_BATCH_TEMPLATE:
            found[name] = Template(name, name, False)
        if _streaming_dests(parser):
            found[f'{name}_streaming'] = Template(f'{name}_streaming', name, True)
    return found


def parameter_actions(template: Template) -> list[argparse.Action]:
    """The parser's actions that are the template's parameters (the docstring's rule)."""
    parser = flags_parser(template.module)
    streaming_only = _streaming_dests(parser)
    from beamml.pipelines._platform.runs import RUN_FLAGS
    batch_only = set(getattr(template.module, '_BATCH_ONLY', {})) | set(RUN_FLAGS)
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or not a.option_strings:
            continue
        if a.dest in NOT_PARAMETERS or a.help == argparse.SUPPRESS:
            continue
        if (a.dest in batch_only) if template.streaming else (a.dest in streaming_only):
            continue
        out.append(a)
    return out


def takes_no_value(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def regexes(action: argparse.Action) -> list[str] | None:
    """What a value of this flag looks like, where its type or choices say it."""
    if takes_no_value(action):
        return [_BOOL]
    if action.choices is not None:
        return ['^(' + '|'.join(re.escape(str(c)) for c in action.choices) + ')$']
    regex = getattr(action.type, 'regex', None) or {int: _INT, float: _NUMBER}.get(action.type)
    return [regex] if regex else None


def _label(name: str) -> str:
    return name.replace('_', ' ').capitalize()


def _help(parser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ''
    text = ' '.join(text.split())
    if not text:
        if action.choices is not None:
            text = 'one of ' + ', '.join(map(str, action.choices))
        else:
            text = f'--{action.dest}'
        if action.default is not None and not takes_no_value(action):
            text += f' (default {action.default})'
    if takes_no_value(action):
        text += ' (true or false; default false)'
    return text[0].upper() + text[1:]


def metadata(template: Template) -> dict[str, Any]:
    """The Flex Template metadata file of one template (``--metadata-file``)."""
    module = template.module
    parser = flags_parser(module)
    doc = (module.__doc__ or '').strip().splitlines()
    description = doc[0] if doc else template.pipeline
    params = []
    for a in parameter_actions(template):
        p = {'name': a.option_strings[0].lstrip('-'), 'label': _label(a.dest),
             'helpText': _help(parser, a),
             'isOptional': not (a.required or (not template.streaming and a.dest in getattr(
                 options_class(template.module), 'REQUIRED_IN_BATCH', ())))}
        r = regexes(a)
        if r:
            p['regexes'] = r
        params.append(p)
    doc = {'name': f'beamml-{template.name.replace("_", "-")}',
           'description': (f'beamml {template.pipeline}'
                           + (' --streaming' if template.streaming else '') + f': {description}'),
           'streaming': template.streaming}
    if template.streaming:
        # per-window outputs and the K-means state would count a duplicate twice
        doc['supportsExactlyOnce'] = True
        doc['supportsAtLeastOnce'] = False
    doc['parameters'] = params
    return doc


def render(template: Template) -> str:
    return json.dumps(metadata(template), indent=2, ensure_ascii=False) + '\n'


# --------------------------------------------------------------------------- launching

def _switches(pipeline: str) -> set[str]:
    """Option strings of every flag that takes no value: the pipeline's and Beam's."""
    from beamml.pipelines._platform.cli import _beam_parser
    module = importlib.import_module(f'beamml.pipelines.{pipeline}')
    found = set()
    for parser in (flags_parser(module), _beam_parser()):
        for a in parser._actions:
            if takes_no_value(a):
                found.update(a.option_strings)
    found.add('--anonymous_storage')
    return found


def flex_argv(pipeline: str, argv: Iterable[str], *, streaming: bool = False) -> list[str]:
    """The command line the Flex launcher gives, as the pipeline's parser takes it:
    ``--flag=true`` -> ``--flag`` and ``--flag=false`` dropped for flags without a value;
    ``--runner DataflowRunner`` unless a runner is given; ``--streaming`` for a streaming
    template."""
    switches = _switches(pipeline)
    out = []
    for a in argv:
        flag, eq, value = a.partition('=')
        if eq and flag in switches and value.lower() in ('true', 'false'):
            if value.lower() == 'true' and flag not in out:
                out.append(flag)
            continue
        out.append(a)
    if streaming and '--streaming' not in out:
        out.append('--streaming')
    if not any(a == '--runner' or a.startswith('--runner=') for a in out):
        out.append('--runner=DataflowRunner')
    return out


def launch(argv: Iterable[str] | None = None, environ=None) -> int:
    """What a template's container runs: the pipeline its ``BEAMML_TEMPLATE`` names, with
    the launcher's arguments (:func:`flex_argv`); returns the pipeline's exit code."""
    from beamml.pipelines._platform.main import main_wrapper
    environ = os.environ if environ is None else environ
    name = environ.get(TEMPLATE_VARIABLE, '')
    found = templates()
    if name not in found:
        print(f'beamml launcher: error: {TEMPLATE_VARIABLE}={name!r} names no template; build '
              f'the image with --build-arg {TEMPLATE_VARIABLE}=<one of {", ".join(found)}>',
              file=sys.stderr)
        return 2
    t = found[name]
    args = flex_argv(t.pipeline, sys.argv[1:] if argv is None else argv, streaming=t.streaming)
    return main_wrapper(t.module.run, args, prog=f'beamml {t.pipeline}')


# --------------------------------------------------------------------------- files

def _summary(folder: str, expected: dict[str, str]) -> str | None:
    """One line saying how the folder's JSON files differ from ``expected``, or None."""
    have = {f for f in os.listdir(folder) if f.endswith('.json')} if os.path.isdir(folder) else set()
    missing = sorted(set(expected) - have)
    extra = sorted(have - set(expected))
    changed = []
    for f in sorted(set(expected) & have):
        with open(os.path.join(folder, f), encoding='utf-8') as fh:
            text = fh.read()
        if text == expected[f]:
            continue
        try:
            old = {p['name'] for p in json.loads(text).get('parameters', [])}
        except (ValueError, AttributeError, TypeError, KeyError):
            old = set()
        new = {p['name'] for p in json.loads(expected[f])['parameters']}
        detail = ', '.join([f'+{n}' for n in sorted(new - old)] +
                           [f'-{n}' for n in sorted(old - new)]) or 'fields changed'
        changed.append(f'{f} ({detail})')
    parts = ([f'missing {", ".join(missing)}'] if missing else []) + \
            ([f'not generated {", ".join(extra)}'] if extra else []) + \
            ([f'differ {"; ".join(changed)}'] if changed else [])
    return '; '.join(parts) if parts else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m beamml.pipelines._platform.templates',
        description='Write or check the Flex Template metadata files (configs/templates).')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--write', metavar='FOLDER', help='write <template>.json files there')
    mode.add_argument('--check', metavar='FOLDER',
                      help='exit 1 when the files there differ from the generator')
    args = parser.parse_args(argv)
    expected = {f'{name}.json': render(t) for name, t in templates().items()}
    if args.check:
        diff = _summary(args.check, expected)
        if diff:
            print(f'{args.check}: {diff}: run make templates', file=sys.stderr)
            return 1
        print(f'{args.check}: {len(expected)} template(s) up to date')
        return 0
    os.makedirs(args.write, exist_ok=True)
    for f in sorted(set(os.listdir(args.write)) - set(expected)):
        if f.endswith('.json'):   # a template no pipeline has any more
            os.remove(os.path.join(args.write, f))
    for f, text in expected.items():
        with open(os.path.join(args.write, f), 'w', encoding='utf-8') as fh:
            fh.write(text)
    print(f'{args.write}: wrote {", ".join(expected)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
