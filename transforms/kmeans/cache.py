"""The K-means point cache: batches of points and their row hashes as .npy files (local, gs://).

File I/O only. :class:`~beamml.transforms.kmeans.training.KMeans` with a
``cache_dir`` writes each batch here once and hands the iterations the files'
paths instead of the points; the iterations read them back (memory-mapped
when local) and the last step drops them.

Weighted points (sample weights) also keep their weights, in a third file
``<stem>.weight.npy``; such a batch's name carries a hash of its weights
(``-w<16 hex>``), so two batches of the same points but other weights never
share a file, and :func:`weights_of` knows a weighted file by its name. A raw
batch written with its ids (``beamml kmeans --output`` labels them in the final
pass) keeps them in ``<stem>.ids.arrow`` (an Arrow IPC file, memory-mapped when
local), and its name carries a hash of them (``-i<16 hex>``) for the same reason.

Every read of a points file adds its rows to the Beam counter
``beamml.kmeans/cache_rows_read`` (:data:`CACHE_ROWS_READ`; a no-op outside a
pipeline), so a run can report its passes over the cache.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import uuid

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beamml.transforms.core.documents import is_remote, read_bytes, write_bytes

__all__ = ['CACHE_COUNTERS', 'CACHE_ROWS_READ', 'write_cached_points', 'read_cached_points',
           'read_cached_weights', 'read_cached_ids', 'has_ids', 'points_of', 'weights_of',
           'drop_cached_points']

#: the name of a cache file of weighted points: ...-w<hash of the weights>[-f32].npy
_WEIGHTED_NAME = re.compile(r'-w[0-9a-f]{16}(-f32)?\.npy$')
#: the name of a cache file holding its ids: ...-i<hash of the ids>[-w...][-f32].npy
_IDS_NAME = re.compile(r'-i[0-9a-f]{16}(-w[0-9a-f]{16})?(-f32)?\.npy$')
#: the Beam counter of the rows read from the point cache (namespace, name)
CACHE_COUNTERS = 'beamml.kmeans'
CACHE_ROWS_READ = 'cache_rows_read'


def _save_npy(path: str, arr: np.ndarray) -> None:
    """Write ``arr`` as an ``.npy`` file whole (a reader never sees half a file)."""
    if is_remote(path):
        buf = io.BytesIO()
        np.save(buf, arr)
        write_bytes(path, buf.getvalue())
    else:  # np.save straight into the temporary file: no second copy of a large batch
        tmp = f'{path}.{uuid.uuid4().hex}.tmp'
        with open(tmp, 'wb') as f:
            np.save(f, arr)
        os.replace(tmp, path)


#: Local cache files kept memory-mapped in this process between iterations:
#: (pid, path) -> (inode, size, array). Opening and faulting in a file again
#: every iteration costs about 10 ms per million points; the files never change
#: (named by content, replaced atomically) and :func:`drop_cached_points` forgets
#: them. Keyed by pid because a forked worker must not trust its parent's maps.
_MAPPED: dict = {}
_MAX_MAPPED = 128  # each map holds a file descriptor


def _save_bytes(path: str, data: bytes) -> None:
    """Write ``data`` whole (local: a temporary name, then renamed)."""
    if is_remote(path):
        write_bytes(path, data)
        return
    tmp = f'{path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def _load_npy(path: str) -> np.ndarray:
    if is_remote(path):
        return np.load(io.BytesIO(read_bytes(path)))
    st = os.stat(path)
    key = (os.getpid(), path)
    hit = _MAPPED.get(key)
    if hit is not None and hit[0] == st.st_ino and hit[1] == st.st_size:
        return hit[2]
    arr = np.load(path, mmap_mode='r')
    if hit is not None or len(_MAPPED) < _MAX_MAPPED:
        _MAPPED[key] = (st.st_ino, st.st_size, arr)
    return arr


def _hash_path(path: str) -> str:
    return path[:-len('.npy')] + '.hash.npy'


def _weight_path(path: str) -> str:
    return path[:-len('.npy')] + '.weight.npy'


def _ids_path(path: str) -> str:
    return path[:-len('.npy')] + '.ids.arrow'


def _is_weighted(path: str) -> bool:
    return bool(_WEIGHTED_NAME.search(path))


def _has_ids(path: str) -> bool:
    return bool(_IDS_NAME.search(path))


def _ids_bytes(ids) -> bytes:
    """One Arrow IPC file holding the ids (column ``id``)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    sink = pa.BufferOutputStream()
    batch = pa.record_batch([ids], names=['id'])
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _weights_hash(weights: np.ndarray, hashes: np.ndarray) -> int:
    """A 64-bit hash of (row hash, weight) pairs, order-free (summed mod 2**64)."""
    h = np.asarray(weights, dtype=np.float64).view(np.uint64) ^ np.asarray(hashes, np.uint64)
    h = h * np.uint64(0xBF58476D1CE4E5B9)   # a copy; then SplitMix64-style mixing
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return int(np.add.reduce(h, dtype=np.uint64))


def write_cached_points(cache_dir: str, X: np.ndarray, hashes: np.ndarray, *,
                        prefix: str = 'points', dtype=np.float64,
                        weights: np.ndarray | None = None, ids=None) -> str:
    """Write a batch of (centred) points and their row hashes as ``.npy`` files; X's path.

    The file names come from the batch's content, so a retried write rewrites
    the same files; local files are written to a temporary name and renamed.
    ``dtype`` float32 (an opt-in) stores the points rounded to float32: half
    the bytes to write and to read every iteration, and the E-step
    (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass`) then computes in
    float32; the row hashes stay those of the points given (float64).
    ``weights`` (sample weights, float64) are written beside them
    (:func:`weights_of` reads them); ``ids`` (a pyarrow array, one per row) in an
    Arrow IPC file beside them (:func:`read_cached_ids`).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f'dtype must be float64 or float32, got {dtype}')
    if not is_remote(cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
    h = int(np.add.reduce(hashes, dtype=np.uint64))
    tag = '' if dtype == np.float64 else '-f32'  # a float32 copy never replaces a float64 one
    if weights is not None:
        tag = f'-w{_weights_hash(weights, hashes):016x}{tag}'
    id_bytes = None
    if ids is not None:
        id_bytes = _ids_bytes(ids)
        tag = f'-i{hashlib.blake2b(id_bytes, digest_size=8).hexdigest()}{tag}'
    path = FileSystems.join(cache_dir, f'{prefix}-{h:016x}-{len(hashes)}{tag}.npy')
    if id_bytes is not None:
        _save_bytes(_ids_path(path), id_bytes)
    if weights is not None:
        _save_npy(_weight_path(path), np.ascontiguousarray(weights, dtype=np.float64))
    _save_npy(_hash_path(path), np.asarray(hashes, dtype=np.uint64))
    _save_npy(path, np.ascontiguousarray(X, dtype=dtype))
    return path


def read_cached_points(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, row hashes) written by :func:`write_cached_points` (local files: memory-mapped);
    counted in :data:`CACHE_ROWS_READ` (in a pipeline)."""
    X = _load_npy(path)
    Metrics.counter(CACHE_COUNTERS, CACHE_ROWS_READ).inc(len(X))
    return X, _load_npy(_hash_path(path))


def has_ids(path: str) -> bool:
    """Whether the cache file ``path`` was written with its ids (its name says so)."""
    return _has_ids(path)


def read_cached_ids(path: str):
    """The ids written with the points of ``path`` (a pyarrow array; None: none kept).
    Local files are memory-mapped (the ids are not copied)."""
    if not _has_ids(path):
        return None
    ids_path = _ids_path(path)
    if is_remote(ids_path):
        source = pa.BufferReader(read_bytes(ids_path))
    else:
        source = pa.memory_map(ids_path)
    return pa.ipc.open_file(source).get_batch(0).column(0)


def read_cached_weights(path: str) -> np.ndarray | None:
    """The sample weights written with the points of ``path`` (None: unweighted)."""
    return _load_npy(_weight_path(path)) if _is_weighted(path) else None


def points_of(element) -> tuple[np.ndarray, np.ndarray]:
    """A training element: (centred X, row hashes[, weights]), or the path of their
    cache file -> (X, row hashes)."""
    if isinstance(element, str):
        return read_cached_points(element)
    return element[0], element[1]


def weights_of(element) -> np.ndarray | None:
    """The sample weights of a training element (None when unweighted)."""
    if isinstance(element, str):
        return read_cached_weights(element)
    return element[2] if len(element) > 2 else None


def drop_cached_points(paths) -> None:
    """Delete the cache files of these points paths (and their hash files); forget their maps.

    Elements that are not paths (points that travelled without a cache) are ignored.
    """
    paths = sorted({q for p in paths if isinstance(p, str)
                    for q in (p, _hash_path(p)) + ((_weight_path(p),) if _is_weighted(p) else ())
                    + ((_ids_path(p),) if _has_ids(p) else ())})
    for path in paths:
        _MAPPED.pop((os.getpid(), path), None)
    if paths:
        try:
            FileSystems.delete(paths)
        except Exception:  # already gone (a retried step); the caller's directory cleanup
            pass
