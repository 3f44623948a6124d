"""``beamml <pipeline> [flags]`` and ``python -m beamml <pipeline> [flags]``.

The commands are the table :data:`COMMANDS`; the first line of each command module's
docstring is its one-line description in ``beamml --help``, read without importing it
(``beamml --help`` stays instant).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

#: every command: its name on the command line -> its module (with ``run(argv)``)
COMMANDS = {
    'assign': 'beamml.pipelines.assign',
    'cycle': 'beamml.pipelines.cycle',
    'demo': 'beamml.pipelines.demo',
    'evaluate': 'beamml.pipelines.evaluate',
    'index_ids': 'beamml.pipelines.index_ids',
    'kmeans': 'beamml.pipelines.kmeans',
    'monitor': 'beamml.pipelines.monitor',
    'norms': 'beamml.pipelines.norms',
    'pca': 'beamml.pipelines.pca',
    'validate': 'beamml.pipelines.validate',
}


def _description(module: str) -> str:
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding='utf-8') as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    return doc.strip().splitlines()[0] if doc.strip() else ''


def pipelines() -> dict[str, str]:
    """{name: one-line description} of every command, in :data:`COMMANDS`' order."""
    return {name: _description(module) for name, module in COMMANDS.items()}


def usage() -> str:
    found = pipelines()
    width = max(map(len, found), default=0)
    lines = ['usage: beamml <pipeline> [flags]    (beamml <pipeline> --help for its flags)',
             '', 'pipelines:']
    lines += [f'  {name.ljust(width)}  {desc}' for name, desc in found.items()]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'beamml: unknown pipeline {name!r}\n\n{usage()}', file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    from beamml.pipelines._platform.main import main_wrapper
    return main_wrapper(module.run, rest, prog=f'beamml {name}')


if __name__ == '__main__':
    sys.exit(main())
