"""The centroid model: a versioned artifact on local disk or gs://, and a RunInference handler.

Modules:

* :mod:`~beamml.transforms.model.artifact`: :class:`CentroidModel` (centres and how
  they were made), its ``model.json`` format, versions, ``LATEST`` and rollback;
* :mod:`~beamml.transforms.model.inference`: :class:`CentroidModelHandler`, a
  ``ModelHandler`` for Beam's ``RunInference``.
"""
from beamml.transforms.model.artifact import (LATEST_FILE, MODEL_FILE, CentroidModel,
                                              latest_version, list_versions, new_version,
                                              set_latest)
from beamml.transforms.model.inference import CentroidModelHandler

__all__ = [
    'CentroidModel', 'CentroidModelHandler', 'MODEL_FILE', 'LATEST_FILE',
    'set_latest', 'latest_version', 'list_versions', 'new_version',
]
