"""The distribution: one import package, ``beamml``, from the sdist that Dataflow builds to the wheel."""
from __future__ import annotations

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
