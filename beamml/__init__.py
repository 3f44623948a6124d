"""beamml: Apache Beam pipelines for machine learning on point clouds and prediction logs.

The package's rooms are the project's top-level folders: ``pipelines/`` installs
as :mod:`beamml.pipelines` and ``transforms/`` as :mod:`beamml.transforms`
(``package_dir`` in setup.py), so nothing generic lands at the top of site-packages.
"""
__version__ = '0.1.0'
