"""beamml: Apache Beam pipelines for machine learning on point clouds and prediction logs.

This file is also what Dataflow workers install (``--setup_file ./setup.py``).
"""
import os
import re

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    with open(os.path.join(_HERE, 'beamml', '__init__.py'), encoding='utf-8') as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


def _packages() -> dict[str, str]:
    """{import name: folder}: ``pipelines/`` and ``transforms/`` (and their
    sub-packages) install inside ``beamml``, never as top-level names."""
    found = {'beamml': 'beamml'}
    for top in ('pipelines', 'transforms'):
        for sub in setuptools.find_packages(where=_HERE, include=[top, top + '.*']):
            found['beamml.' + sub] = sub.replace('.', '/')
    return found


_PACKAGES = _packages()

setuptools.setup(
    name='beamml',
    version=_version(),
    description='Apache Beam pipelines for ML on point clouds and prediction logs',
    long_description=open(os.path.join(_HERE, 'README.md'), encoding='utf-8').read()
    if os.path.exists(os.path.join(_HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=list(_PACKAGES),
    package_dir=_PACKAGES,
    install_requires=[
        'apache-beam[gcp]>=2.60,<3',
        'numpy>=1.24,<3',
        'pyarrow>=14',
        'PyYAML>=6,<7',
    ],
    extras_require={
        'test': [
            'pytest>=7',
            'pytest-xdist>=3.7',  # `make test`: every core, --dist loadfile --no-loadscope-reorder
            'hypothesis>=6',  # tests/test_fuzz.py
            'scikit-learn>=1.3',
            'gcp-storage-emulator>=2024.0',
            'wheel',  # tests/test_packaging.py builds the wheel offline
            'pytrec-eval-terrier>=0.5.6',  # trec_eval itself: the ranking measures' oracle
        ],
        # `make bench`: Beam's own RunInference with its scikit-learn handler (the peer of
        # assign --streaming in benchmarks/bench_streaming.py) imports pandas
        'bench': ['pandas', 'ranx'],  # ranx (numba): benchmarks/bench_evaluate_trec.py
    },
    entry_points={'console_scripts': ['beamml=beamml.pipelines.__main__:main']},
)
