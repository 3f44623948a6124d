"""The distribution: one import package, ``beamml``, from the sdist that Dataflow builds to the wheel."""
from __future__ import annotations

import ast
import glob
import importlib
import os
import pkgutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import beamml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _top_level(names) -> set[str]:
    return {n.split('/')[0] for n in names if n.split('/')[0] and not n.endswith('/')}


@pytest.fixture(scope='module')
def sdist(tmp_path_factory):
    """What ``--setup_file ./setup.py`` stages for Dataflow: ``python setup.py sdist``."""
    out = tmp_path_factory.mktemp('sdist')
    subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '--dist-dir', str(out)],
                   cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    (path,) = glob.glob(str(out / 'beamml-*.tar.gz'))
    return path


def test_sdist_declares_only_beamml(sdist):
    with tarfile.open(sdist) as tar:
        top = [m for m in tar.getnames() if m.endswith('.egg-info/top_level.txt')]
        assert top, 'the sdist has no top_level.txt'
        assert tar.extractfile(top[0]).read().decode().split() == ['beamml']


def test_wheel_built_from_the_sdist_holds_only_beamml(sdist, tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '-q', '-w', str(tmp_path), sdist],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(str(tmp_path / 'beamml-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert _top_level(names) == {'beamml', f'beamml-{beamml.__version__}.dist-info'}
    for module in ('beamml/__init__.py', 'beamml/__main__.py', 'beamml/pipelines/__main__.py',
                   'beamml/pipelines/norms.py', 'beamml/transforms/__init__.py'):
        assert module in names
    # every sub-package of the source folders is in the wheel
    for folder in ('pipelines', 'transforms'):
        for init in glob.glob(os.path.join(ROOT, folder, '**', '__init__.py'), recursive=True):
            rel = os.path.relpath(init, ROOT).replace(os.sep, '/')
            assert f'beamml/{rel}' in names


def test_every_module_imports_under_beamml():
    for folder in ('pipelines', 'transforms'):
        package = importlib.import_module(f'beamml.{folder}')
        for info in pkgutil.walk_packages(package.__path__, prefix=f'beamml.{folder}.'):
            importlib.import_module(info.name)


def test_python_m_beamml_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}   # the installed package
    out = subprocess.run([sys.executable, '-m', 'beamml', '--help'], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'norms' in out.stdout
    bare = subprocess.run([sys.executable, '-c', 'import pipelines'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0, 'a top-level `pipelines` package is installed'


def test_python_m_beamml_in_the_checkout_and_nothing_else_under_beamml():
    """From the checkout's root, where its beamml/ folder shadows the installed package,
    the editable install's finder still maps beamml.pipelines and beamml.transforms to
    their folders (pyproject.toml makes pip's editable install PEP 660's); and neither
    setup.py nor tests/ is importable as part of beamml."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([sys.executable, '-m', 'beamml', '--help'], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'norms' in out.stdout
    for name in ('beamml.setup', 'beamml.tests'):
        bare = subprocess.run([sys.executable, '-c', f'import {name}'], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert bare.returncode != 0, f'{name} is importable'


def _imports(path: str, package: str) -> set[str]:
    """The beamml modules that ``path`` imports anywhere, deferred imports inside
    functions included (they hide a cycle, they do not remove it)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                mod = f'{base}.{node.module}' if node.module else base
            else:
                mod = node.module or ''
            found.add(mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith('beamml.')}


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for folder in ('pipelines', 'transforms'):
        for path in glob.glob(os.path.join(ROOT, folder, '**', '*.py'), recursive=True):
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
            name = 'beamml.' + rel.removesuffix('.__init__')
            package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
            graph[name] = _imports(path, package)
    return graph


def test_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            nxt = nxt if nxt in graph else nxt.rsplit('.', 1)[0]   # `from pkg import name`
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
