"""The K-means point cache: batches of points and their row hashes as .npy files (local, gs://).

File I/O only. :class:`~beamml.transforms.kmeans.training.KMeans` with a
``cache_dir`` writes each batch here once and hands the iterations the files'
paths instead of the points; the iterations read them back (memory-mapped
when local) and the last step drops them.
"""
from __future__ import annotations

import io
import os
import uuid

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.io.documents import is_remote, read_bytes, write_bytes

__all__ = ['write_cached_points', 'read_cached_points', 'points_of', 'drop_cached_points']


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


def write_cached_points(cache_dir: str, X: np.ndarray, hashes: np.ndarray, *,
                        prefix: str = 'points', dtype=np.float64) -> str:
    """Write a batch of (centred) points and their row hashes as ``.npy`` files; X's path.

    The file names come from the batch's content, so a retried write rewrites
    the same files; local files are written to a temporary name and renamed.
    ``dtype`` float32 (an opt-in) stores the points rounded to float32: half
    the bytes to write and to read every iteration, and the E-step
    (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass`) then computes in
    float32; the row hashes stay those of the points given (float64).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f'dtype must be float64 or float32, got {dtype}')
    if not is_remote(cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
    h = int(np.add.reduce(hashes, dtype=np.uint64))
    tag = '' if dtype == np.float64 else '-f32'  # a float32 copy never replaces a float64 one
    path = FileSystems.join(cache_dir, f'{prefix}-{h:016x}-{len(hashes)}{tag}.npy')
    _save_npy(_hash_path(path), np.asarray(hashes, dtype=np.uint64))
    _save_npy(path, np.ascontiguousarray(X, dtype=dtype))
    return path


def read_cached_points(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, row hashes) written by :func:`write_cached_points` (local files: memory-mapped)."""
    return _load_npy(path), _load_npy(_hash_path(path))


def points_of(element) -> tuple[np.ndarray, np.ndarray]:
    """A training element: (centred X, row hashes), or the path of their cache file."""
    return read_cached_points(element) if isinstance(element, str) else element


def drop_cached_points(paths) -> None:
    """Delete the cache files of these points paths (and their hash files); forget their maps.

    Elements that are not paths (points that travelled without a cache) are ignored.
    """
    paths = sorted({q for p in paths if isinstance(p, str) for q in (p, _hash_path(p))})
    for path in paths:
        _MAPPED.pop((os.getpid(), path), None)
    if paths:
        try:
            FileSystems.delete(paths)
        except Exception:  # already gone (a retried step); the caller's directory cleanup
            pass
