"""beamml: Apache Beam pipelines for machine learning on point clouds and prediction logs.

The package's rooms are the project's top-level folders: ``pipelines/`` installs
as :mod:`beamml.pipelines` and ``transforms/`` as :mod:`beamml.transforms`
(``package_dir`` in setup.py), so nothing generic lands at the top of site-packages.
"""
import os as _os

__version__ = '0.1.0'

# In a source checkout (an editable install, or ``python -m beamml`` run from the
# checkout, where this folder shadows the installed package) the sub-packages are
# this folder's siblings; an installed wheel or sdist has them inside it.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, 'pipelines')):
    __path__.append(_os.path.dirname(_here))   # noqa: F821 (a package's own __path__)
