"""``beamml <pipeline> [flags]`` and ``python -m beamml <pipeline> [flags]``.

Each module of this package that defines ``run(argv)`` is a pipeline; the first
line of its docstring is its one-line description in ``beamml --help``.
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys

_NOT_PIPELINES = {'common', 'runs', 'streaming', '__main__'}


def pipelines() -> dict[str, str]:
    """{name: one-line description} of every pipeline module, read without importing it."""
    here = os.path.dirname(__file__)
    found = {}
    for info in sorted(pkgutil.iter_modules([here]), key=lambda m: m.name):
        if info.name in _NOT_PIPELINES or info.name.startswith('_'):
            continue
        with open(os.path.join(here, info.name + '.py'), encoding='utf-8') as f:
            tree = ast.parse(f.read())
        if not any(isinstance(n, ast.FunctionDef) and n.name == 'run' for n in tree.body):
            continue
        doc = ast.get_docstring(tree) or ''
        found[info.name] = doc.strip().splitlines()[0] if doc.strip() else ''
    return found


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
    if name not in pipelines():
        print(f'beamml: unknown pipeline {name!r}\n\n{usage()}', file=sys.stderr)
        return 2
    module = importlib.import_module(f'beamml.pipelines.{name}')
    from beamml.pipelines.common import main_wrapper
    return main_wrapper(module.run, rest, prog=f'beamml {name}')


if __name__ == '__main__':
    sys.exit(main())
