"""The centroid model artifact: :class:`CentroidModel` and its versions, local or on gs://.

A model directory holds immutable versions and a pointer to the current one::

    <model_dir>/<version>/model.json     one per trained model
    <model_dir>/LATEST                   the current version's name (one line)

:meth:`CentroidModel.save` writes the version's ``model.json`` first and
``LATEST`` last, so a reader never sees a ``LATEST`` naming a version that is
not complete. Pointing ``LATEST`` back at an older version (:func:`set_latest`)
is a rollback. Everything goes through Beam's ``FileSystems``
(:mod:`beamml.transforms.core.documents`), so local paths and ``gs://`` behave alike.

``model.json`` is plain JSON under beamml's one JSON policy; the centres are
lists of finite floats written with Python's ``repr`` (shortest round-trip
text), so float64 values survive save / load exactly. A non-finite optional
float (``inertia``, ``inertia_history``) is written ``"NaN"``, ``"Infinity"`` or
``"-Infinity"`` and read back as that float; ``null`` (what earlier versions
wrote for any non-finite value) still loads, as a missing ``inertia`` and as
NaN in ``inertia_history``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import posixpath
import re
from typing import Any, Mapping, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.distances import (DISTANCES, nearest_centroid, nearest_centroid_cosine,
                                         row_sq_norms, unit_rows)
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import (NON_FINITE, dumps, exists, is_remote, join, read_text,
                                              to_jsonable, write_text)

__all__ = [
    'CentroidModel', 'MODEL_FILE', 'LATEST_FILE', 'set_latest', 'latest_version',
    'list_versions', 'new_version',
]

MODEL_FILE = 'model.json'
LATEST_FILE = 'LATEST'
FORMAT = 'beamml.centroid_model'
FORMAT_VERSION = 1
_VERSION_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
_REQUIRED = ('centers',)


# ----------------------------------------------------------------------------- versions

def new_version(now: _dt.datetime | None = None) -> str:
    """A version name from the UTC time: ``YYYYMMDDTHHMMSSffffffZ`` (sorts by time)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime('%Y%m%dT%H%M%S%fZ')


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='microseconds').replace(
        '+00:00', 'Z')


def _check_version_name(version: str) -> str:
    version = str(version)
    if not _VERSION_RE.match(version):
        raise BeammlError(f'model version {version!r} is not a valid name (letters, digits, '
                          '".", "_", "-"; not starting with "." or "-")')
    return version


def latest_version(model_dir: str) -> str:
    """The version ``<model_dir>/LATEST`` names."""
    path = join(model_dir, LATEST_FILE)
    if not exists(path):
        raise BeammlError(f'{model_dir} is not a model directory: {path} does not exist '
                          f'(save a model there first, or give a version directory or a '
                          f'{MODEL_FILE})')
    try:
        version = read_text(path).strip()
    except Exception as e:
        raise BeammlError(f'cannot read {path}: {e}') from e
    if not version or not _VERSION_RE.match(version):
        raise BeammlError(f'{path} is corrupt: it should hold one version name, '
                          f'holds {version[:80]!r}')
    return version


def list_versions(model_dir: str) -> list[str]:
    """Names of the complete versions (those with a model.json) of a model directory, sorted."""
    try:
        results = FileSystems.match([join(model_dir, '*', MODEL_FILE)])
    except Exception:
        return []
    names = set()
    for r in results:
        for m in r.metadata_list:
            names.add(posixpath.basename(posixpath.dirname(m.path)))
    return sorted(names)


def set_latest(model_dir: str, version: str) -> str:
    """Point ``LATEST`` at ``version`` (a rollback when it is an older one).

    The version must exist and load; returns its directory.
    """
    version = _check_version_name(version)
    vdir = join(model_dir, version)
    CentroidModel.load(join(vdir, MODEL_FILE))  # refuse to point at a broken version
    write_text(join(model_dir, LATEST_FILE), version + '\n')
    return vdir


# ----------------------------------------------------------------------------- model

def _read_float(value, name: str, *, missing: float | None = None) -> float | None:
    """A float field of model.json: a number or "NaN" / "Infinity" / "-Infinity";
    ``null`` (a missing value, or a non-finite one written by earlier versions) is
    ``missing``."""
    if value is None:
        return missing
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{name} must hold numbers, got {value!r}')
    return float(value)


class CentroidModel:
    """k centres in d dimensions, with how they were made.

    Parameters
    ----------
    centers : array-like of shape (k, d)
        Finite float64 values; k >= 1, d >= 1.
    version : str, optional
        Assigned by :meth:`save` when None.
    created : str, optional
        UTC ISO-8601 time; now when None.
    input_pattern : str, optional
        What the model was trained on.
    n_iter : int, optional
    inertia : float, optional
        Final sum of squared distances to the nearest centre (a cosine model:
        of the cosine distances ``1 - cos``).
    inertia_history : sequence of float
        Inertia after each iteration.
    stop_reason : str, optional
    cluster_sizes : sequence of int, optional
        Points per cluster at the end of training.
    config : dict, optional
        The training configuration (JSON-able).
    init_inertias : sequence of float, optional
        With ``n_init > 1``: the final inertia of every seeding trained (the
        model is the run of the lowest); None for one run.
    distance : {'euclidean', 'cosine'}, default 'euclidean'
        What "nearest centre" means for this model (``model.json``'s
        ``"distance"``; a model.json without it, written before the field
        existed, is Euclidean). A cosine model's centres must not be zero vectors.

    Attributes
    ----------
    k, d : int
    centers_sq : ndarray of shape (k,)
        Squared norms of the centres (computed once, for the assignment kernel).
    path : str or None
        Where the model was loaded from or saved to.
    """

    def __init__(self, centers, *, version: str | None = None, created: str | None = None,
                 input_pattern: str | None = None, n_iter: int | None = None,
                 inertia: float | None = None, inertia_history: Sequence[float] = (),
                 stop_reason: str | None = None,
                 cluster_sizes: Sequence[int] | None = None,
                 config: Mapping[str, Any] | None = None, distance: str = 'euclidean',
                 init_inertias: Sequence[float] | None = None):
        if distance not in DISTANCES:
            raise BeammlError(f'model distance must be one of {", ".join(DISTANCES)}, '
                              f'got {distance!r}')
        try:
            centers = np.array(centers, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise BeammlError(f'model centres are not a numeric (k, d) array: {e}') from e
        if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
            raise BeammlError(f'model centres must be a (k, d) array with k, d >= 1, '
                              f'got shape {centers.shape}')
        if not np.isfinite(centers).all():
            raise BeammlError('model centres contain NaN or infinite values')
        if distance == 'cosine' and unit_rows(centers)[1].any():
            raise BeammlError(f'centre {int(np.flatnonzero(unit_rows(centers)[1])[0])} of a '
                              'cosine model is a zero vector: cosine distance is undefined')
        centers.setflags(write=False)
        self.distance = distance
        self.centers = centers
        self.version = None if version is None else _check_version_name(version)
        self.created = created or _utc_now()
        self.input_pattern = input_pattern
        self.n_iter = None if n_iter is None else int(n_iter)
        self.inertia = None if inertia is None else float(inertia)
        self.inertia_history = [float(v) for v in inertia_history]
        self.stop_reason = stop_reason
        self.cluster_sizes = None if cluster_sizes is None else [int(c) for c in cluster_sizes]
        if self.cluster_sizes is not None and len(self.cluster_sizes) != self.k:
            raise BeammlError(f'cluster_sizes has {len(self.cluster_sizes)} entries for '
                              f'{self.k} centres')
        self.config = dict(config or {})
        self.init_inertias = (None if init_inertias is None
                              else [float(v) for v in init_inertias])
        self.path: str | None = None
        self._centers_sq = None

    #: what models pickled before the fields existed read as
    distance = 'euclidean'
    init_inertias = None

    # -- shape
    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def d(self) -> int:
        return int(self.centers.shape[1])

    @property
    def centers_sq(self) -> np.ndarray:
        if self._centers_sq is None:
            self._centers_sq = row_sq_norms(self.centers)
        return self._centers_sq

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_centers_sq'] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # numpy arrays unpickle writable; keep the centres read-only
        self.centers = np.array(self.centers, dtype=np.float64)
        self.centers.setflags(write=False)

    def __repr__(self):
        return (f'CentroidModel(k={self.k}, d={self.d}, version={self.version!r}, '
                f'n_iter={self.n_iter}, inertia={self.inertia}'
                f'{", distance=" + repr(self.distance) if self.distance != "euclidean" else ""})')

    def __eq__(self, other):
        if not isinstance(other, CentroidModel):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def nearest(self, X: np.ndarray, *, return_all: bool = False):
        """Nearest centre of each row of X under the model's distance: ``(labels,
        distances[, all distances])``.

        Euclidean: :func:`~beamml.transforms.distances.nearest_centroid` (exact
        ties to the lowest index; a non-finite row gets label -1, distance NaN).
        Cosine: :func:`~beamml.transforms.distances.nearest_centroid_cosine`,
        the distance ``1 - x.c / (||x|| ||c||)``, ties to the lowest index; a zero
        or non-finite row gets label -1, distance NaN.
        """
        if self.distance == 'cosine':
            return nearest_centroid_cosine(X, self.centers, return_all=return_all)
        return nearest_centroid(X, self.centers, centers_sq=self.centers_sq,
                                return_all=return_all)

    def check_dimension(self, d: int, source: str) -> None:
        """Refuse data whose number of features differs from the model's."""
        if int(d) != self.d:
            raise BeammlError(
                f'model {self.version or "(unsaved)"}'
                f'{" at " + self.path if self.path else ""} has d={self.d} features '
                f'but {source} has {d}; assign with a model trained on data of the same '
                f'dimension')

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        """The model.json document: JSON-ready, non-finite floats as "NaN", "Infinity",
        "-Infinity" (:func:`~beamml.transforms.core.documents.to_jsonable`)."""
        return to_jsonable({
            'format': FORMAT,
            'format_version': FORMAT_VERSION,
            'version': self.version,
            'created': self.created,
            'input_pattern': self.input_pattern,
            'k': self.k,
            'd': self.d,
            'n_iter': self.n_iter,
            'inertia': self.inertia,
            'inertia_history': self.inertia_history,
            'stop_reason': self.stop_reason,
            'cluster_sizes': self.cluster_sizes,
            'init_inertias': self.init_inertias,
            'config': self.config,
            'distance': self.distance,
            'centers': self.centers,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = 'model') -> 'CentroidModel':
        """Build from :meth:`to_dict`'s output; BeammlError naming ``source`` when invalid."""
        if not isinstance(data, Mapping):
            raise BeammlError(f'{source} is not a model: expected a JSON object')
        fmt = data.get('format', FORMAT)
        if fmt != FORMAT:
            raise BeammlError(f'{source} is not a centroid model (format {fmt!r})')
        fv = data.get('format_version', FORMAT_VERSION)
        if not isinstance(fv, int) or fv > FORMAT_VERSION:
            raise BeammlError(f'{source} has format_version {fv!r}; this beamml reads up to '
                              f'{FORMAT_VERSION}: upgrade beamml')
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise BeammlError(f'{source} is incomplete: no {", ".join(missing)}')
        centers = data['centers']
        if (not isinstance(centers, list) or not centers
                or not all(isinstance(r, list) for r in centers)
                or len({len(r) for r in centers}) != 1
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for r in centers for v in r)):
            raise BeammlError(f'{source} is incomplete or corrupt: "centers" must be a '
                              f'non-empty list of equally long lists of numbers')
        k, d = len(centers), len(centers[0])
        for key, expected in (('k', k), ('d', d)):
            if data.get(key) is not None and data[key] != expected:
                raise BeammlError(f'{source} is inconsistent: {key}={data[key]} but the '
                                  f'centres are {k} x {d}')
        try:
            return cls(
                centers, version=data.get('version'), created=data.get('created'),
                input_pattern=data.get('input_pattern'), n_iter=data.get('n_iter'),
                inertia=_read_float(data.get('inertia'), 'inertia'),
                inertia_history=[_read_float(v, 'inertia_history', missing=math.nan)
                                 for v in data.get('inertia_history') or ()],
                stop_reason=data.get('stop_reason'), cluster_sizes=data.get('cluster_sizes'),
                config=data.get('config') or {},
                distance=data.get('distance') or 'euclidean',
                init_inertias=None if data.get('init_inertias') is None else [
                    _read_float(v, 'init_inertias', missing=math.nan)
                    for v in data['init_inertias']])
        except BeammlError as e:
            raise BeammlError(f'{source}: {e}') from e
        except (TypeError, ValueError) as e:
            raise BeammlError(f'{source} is corrupt: {e}') from e

    def to_json(self) -> str:
        return dumps(self.to_dict(), indent=1)

    # -- files
    def save(self, model_dir: str, *, make_latest: bool = True) -> str:
        """Write ``<model_dir>/<version>/model.json``, then ``<model_dir>/LATEST``.

        A version is assigned from the UTC time when ``self.version`` is None. An
        existing version is never overwritten. Returns the version directory.
        """
        if self.version is None:
            version = new_version()
            while exists(join(model_dir, version, MODEL_FILE)):
                version = new_version()
            self.version = version
        vdir = join(model_dir, self.version)
        path = join(vdir, MODEL_FILE)
        if exists(path):
            raise BeammlError(f'model version {self.version} already exists at {path}; '
                              'versions are immutable, save under a new version')
        try:
            write_text(path, self.to_json())
            if make_latest:
                write_text(join(model_dir, LATEST_FILE), self.version + '\n')
        except BeammlError:
            raise
        except Exception as e:
            raise BeammlError(f'cannot write model to {vdir}: {e}') from e
        self.path = path
        return vdir

    @classmethod
    def load(cls, path: str) -> 'CentroidModel':
        """Load a ``model.json``, a version directory, or a model directory (its LATEST).

        Raises BeammlError naming the path when nothing is there, LATEST names a
        missing version, or the file is corrupt or incomplete.
        """
        path = str(path)
        file_path = _resolve(path)
        try:
            text = read_text(file_path)
        except Exception as e:
            raise BeammlError(f'cannot read model {file_path}: {e}') from e
        if not text.strip():
            raise BeammlError(f'model file {file_path} is empty (incomplete write?)')
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BeammlError(f'model file {file_path} is corrupt or incomplete: '
                              f'not valid JSON ({e})') from e
        model = cls.from_dict(data, source=f'model file {file_path}')
        if model.version is None:  # a hand-written model.json in a version directory
            parent = posixpath.basename(posixpath.dirname(file_path))
            model.version = parent if _VERSION_RE.match(parent or '') else None
        model.path = file_path
        return model


def _resolve(path: str) -> str:
    """The model.json a path designates (file, version directory or model directory)."""
    if path.endswith('.json'):
        if not exists(path):
            raise BeammlError(f'no model file {path}')
        return path
    candidate = join(path, MODEL_FILE)
    if exists(candidate):
        return candidate
    latest = join(path, LATEST_FILE)
    if exists(latest):
        version = latest_version(path)
        target = join(path, version, MODEL_FILE)
        if not exists(target):
            raise BeammlError(f'{latest} names version {version!r} but {target} does not '
                              f'exist; point LATEST at an existing version ('
                              f'{", ".join(list_versions(path)) or "none found"})')
        return target
    if exists(path) and not is_remote(path) and os.path.isfile(path):
        return path  # a model file with another extension
    raise BeammlError(f'no model at {path}: expected a {MODEL_FILE}, a version directory '
                      f'holding one, or a model directory with a {LATEST_FILE} file')
