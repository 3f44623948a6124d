"""The house rules of the layout, read from the source (shared/DESIGN.md, README's Layout):

* no import cycle between beamml's modules (function-level imports count, and so does
  ``from package import module``);
* ``transforms/core`` imports nothing of beamml but itself;
* a kernel (``transforms/**/kernels.py``, the other numpy-only modules named in
  :data:`KERNELS`: ``transforms/distances.py``, the log parsers of
  ``transforms/metrics/parsing.py``...) imports neither Beam nor beamml's IO, only ``core``
  and other kernels;
* ``transforms/`` never imports ``pipelines/``, and no transform words an error as a
  command-line flag's name that only the CLI knows (checked for ``--resume`` and
  ``--make_baseline``);
* the commands are the explicit table of ``pipelines/__main__.py``, each a module with
  ``run(argv)``;
* no module over :data:`MAX_LINES` lines.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: "no module over ~500 lines" (shared/DESIGN.md)
MAX_LINES = 520
#: modules that are kernels although their file is not called kernels.py
KERNELS = {'beamml.transforms.distances', 'beamml.transforms.metrics.parsing',
           'beamml.transforms.metrics.ranking_measures',
           'beamml.transforms.kmeans.runtime', 'beamml.transforms.kmeans.seeding_kernels',
           'beamml.transforms.kmeans.accumulators', 'beamml.transforms.kmeans.streaming_kernels'}


def _modules() -> dict[str, str]:
    """{dotted name: path} of every module under pipelines/ and transforms/."""
    found = {}
    for top in ('pipelines', 'transforms'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith('.py'):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                    name = name[:-len('.__init__')] if name.endswith('.__init__') else name
                    found['beamml.' + name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, at any level of its source (absolute or relative):
    beamml modules by their dotted names, others by their top-level name."""
    path = MODULES[name]
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith('beamml.'):
                while t not in MODULES and '.' in t:
                    t = t.rsplit('.', 1)[0]
                if t in MODULES and t != name:
                    out.add(t)
            elif t != 'beamml':
                out.add(t.split('.')[0])
    return out


@functools.lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    """Every module's imports, parsed when a test first asks, not when the file is
    collected (each pytest-xdist worker collects every test file: 3 s each)."""
    return {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_kernel(name: str) -> bool:
    return name.endswith('.kernels') or name in KERNELS


def test_the_graph_is_read():
    # the rules below must not pass because nothing was found
    assert len(MODULES) > 60
    assert 'beamml.transforms.core.errors' in graph()['beamml.transforms.io.rows']
    assert 'apache_beam' in graph()['beamml.transforms.io.sources']


def test_no_import_cycle():
    assert _cycles(graph()) == []


def test_a_cycle_is_found():
    # the checker itself: a function-level import back is a cycle
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert _cycles(graph) == [['a', 'b', 'c']]


def test_core_imports_nothing_of_beamml_but_itself():
    bad = {name: sorted(i for i in graph()[name] if i.startswith('beamml.')
                        and not i.startswith('beamml.transforms.core'))
           for name in MODULES if name.startswith('beamml.transforms.core')}
    assert {k: v for k, v in bad.items() if v} == {}


def test_kernels_import_neither_beam_nor_io():
    kernels = [name for name in MODULES if _is_kernel(name)]
    assert len(kernels) >= 6
    bad = {}
    for name in kernels:
        wrong = sorted(i for i in graph()[name]
                       if i == 'apache_beam' or (i.startswith('beamml.') and not (
                           i.startswith('beamml.transforms.core') or _is_kernel(i))))
        if wrong:
            bad[name] = wrong
    assert bad == {}


def test_transforms_never_import_the_commands():
    bad = {name: sorted(i for i in graph()[name] if i.startswith('beamml.pipelines'))
           for name in MODULES if name.startswith('beamml.transforms')}
    assert {k: v for k, v in bad.items() if v} == {}


#: flags only the CLI has (the library's parameters behind them have other names)
CLI_ONLY_FLAGS = ('--resume', '--make_baseline')


def test_no_transform_names_a_cli_only_flag():
    for name, path in MODULES.items():
        if name.startswith('beamml.transforms'):
            with open(path, encoding='utf-8') as f:
                text = f.read()
            assert [f for f in CLI_ONLY_FLAGS if f in text] == [], name


def test_the_commands_are_one_explicit_table():
    from beamml.pipelines.__main__ import COMMANDS
    assert set(COMMANDS) == {'assign', 'cycle', 'demo', 'evaluate', 'index_ids', 'kmeans', 'monitor',
                             'norms', 'pca', 'validate'}
    for command, module in COMMANDS.items():
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding='utf-8') as f:
            tree = ast.parse(f.read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == 'run' for n in tree.body), command


@pytest.mark.parametrize('name', sorted(MODULES))
def test_no_module_is_too_long(name):
    with open(MODULES[name], encoding='utf-8') as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_LINES, f'{MODULES[name]} has {lines} lines'
