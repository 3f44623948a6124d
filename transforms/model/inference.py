"""Beam's RunInference with a centroid model: :class:`CentroidModelHandler` (nearest centre).

``RunInference(CentroidModelHandler(path))`` loads a
:class:`~beamml.transforms.model.artifact.CentroidModel` (a model directory, a
version directory or a model.json, local or gs://) and assigns numpy points to
their nearest centre under the model's distance
(:meth:`~beamml.transforms.model.artifact.CentroidModel.nearest`: Euclidean,
:func:`beamml.transforms.distances.nearest_centroid`, or cosine), including
side-input model updates.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model.artifact import CentroidModel

__all__ = ['CentroidModelHandler']


class CentroidModelHandler(ModelHandler[np.ndarray, PredictionResult, CentroidModel]):
    """Nearest-centroid inference for Beam's ``RunInference`` over numpy arrays.

    ``RunInference(CentroidModelHandler(path))`` takes a PCollection of points
    (1-D arrays of shape (d,), or 2-D arrays of shape (m, d), which give one
    result per row), batches them, and yields ``PredictionResult(example,
    inference=(cluster, distance), model_id=<model version>)``.

    The distance is the model's (``model.json``'s ``"distance"``: Euclidean, or
    cosine ``1 - cos``); a point the distance is undefined for (NaN or
    infinite values; a zero vector for a cosine model) gets cluster -1 and
    distance NaN.

    ``path`` is anything :meth:`CentroidModel.load` accepts. With side-input
    model updates (``RunInference(handler, model_metadata_pcoll=...)`` whose
    ``ModelMetadata.model_id`` is a model path) the handler switches to the new
    model and the results carry its version. Give version paths (or model.json
    files) there: RunInference caches models by path, so the same model
    directory sent twice is not reloaded even if its LATEST moved.

    Parameters
    ----------
    model_path : str
    min_batch_size, max_batch_size, max_batch_duration_secs :
        ``BatchElements`` settings (defaults 1, 4096, none).
    """

    def __init__(self, model_path: str, *, min_batch_size: int = 1,
                 max_batch_size: int = 4096, max_batch_duration_secs: int | None = None,
                 **kwargs):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs, **kwargs)
        self._model_path = model_path

    @property
    def model_path(self) -> str:
        return self._model_path

    def load_model(self) -> CentroidModel:
        return CentroidModel.load(self._model_path)

    def update_model_path(self, model_path: Optional[str] = None):
        if model_path:
            self._model_path = model_path

    def run_inference(self, batch: Sequence[np.ndarray], model: CentroidModel,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        if not len(batch):
            return []
        arrays = [np.asarray(x, dtype=np.float64) for x in batch]
        if all(a.ndim == 1 for a in arrays):
            lengths = {a.shape[0] for a in arrays}
            if lengths != {model.d}:
                raise BeammlError(f'points of {sorted(lengths)} features given to model '
                                  f'{model.version} of d={model.d}')
            labels, dist = model.nearest(np.stack(arrays))
            return [PredictionResult(x, (int(c), float(r)), model.version)
                    for x, c, r in zip(batch, labels.tolist(), dist.tolist())]
        # 2-D examples: one call over all their rows, then split back
        mats = [a.reshape(1, -1) if a.ndim == 1 else a for a in arrays]
        bad = sorted({m.shape[-1] for m in mats if m.ndim != 2 or m.shape[1] != model.d})
        if bad:
            raise BeammlError(f'examples of {bad} features given to model {model.version} '
                              f'of d={model.d}')
        labels, dist = model.nearest(np.concatenate(mats))
        out, lo = [], 0
        for x, m in zip(batch, mats):
            hi = lo + m.shape[0]
            inf = ((int(labels[lo]), float(dist[lo])) if np.ndim(x) == 1
                   else (labels[lo:hi], dist[lo:hi]))
            out.append(PredictionResult(x, inf, model.version))
            lo = hi
        return out

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return 'BeammlCentroidModel'
