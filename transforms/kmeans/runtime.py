"""How the Lloyd kernels run (no Beam): the E-step's thread pool, BLAS on one thread, the dtype.

Used by :func:`~beamml.transforms.kmeans.kernels.lloyd_labels` and
:func:`~beamml.transforms.kmeans.kernels.lloyd_pass_runs`: chunks of rows go to
a small thread pool, one per process (numpy releases the GIL in the products
and the argmin), with the BLAS libraries held to one thread inside the pass;
:func:`kernel_dtype` picks float64 or the float32 opt-in. None of this changes
a result: only how fast it comes.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ['KERNEL_DTYPES', 'thread_pool', 'map_chunks', 'in_pool',
           'blas_controller', 'single_threaded_blas', 'kernel_dtype']


#: the dtypes the Lloyd kernels compute in (float64 by default; float32 is an opt-in)
KERNEL_DTYPES = (np.float64, np.float32)


#: The E-step's thread pool, one per process: DoFns are created, pickled and torn
#: down by the runner, while the threads should be started once and shared by
#: every batch and iteration the process runs (as scikit-learn's OpenMP team).
#: Keyed by pid because a forked worker inherits the dict but not the threads.
_POOL: dict = {}
#: threadpoolctl's controller of the BLAS libraries, one per process (None without it).
_BLAS: dict = {}


def thread_pool():
    """The small thread pool for the E-step of this process (None on a single core)."""
    pid = os.getpid()
    if pid not in _POOL:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        _POOL.clear()
        _POOL[pid] = (ThreadPoolExecutor(min(cores, 8), thread_name_prefix='beamml-kmeans',
                                         initializer=_mark_pool_thread)
                      if cores > 1 else None)
    return _POOL[pid]


#: whether this thread is one of the pool's
_LOCAL = threading.local()


def in_pool() -> bool:
    """Whether the calling thread is one of the pool's (work it submits would wait for
    the very threads that are busy running it: it runs its chunks itself)."""
    return getattr(_LOCAL, 'pool_thread', False)


def _mark_pool_thread():
    _LOCAL.pool_thread = True


def map_chunks(chunk, starts, min_parallel: int = 4) -> None:
    """``chunk(lo)`` for every start, on the thread pool when there are ``min_parallel`` or
    more (in order on the calling thread when it is a pool thread itself)."""
    starts = list(starts)
    pool = thread_pool() if len(starts) >= min_parallel and not in_pool() else None
    if pool is None:
        for lo in starts:
            chunk(lo)
    else:  # numpy releases the GIL in the product and argmin: chunks run in parallel
        for _ in pool.map(chunk, starts):
            pass


def blas_controller():
    """threadpoolctl's controller, made once per process (None without threadpoolctl)."""
    pid = os.getpid()
    if pid not in _BLAS:
        _BLAS.clear()
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS[pid] = ThreadpoolController()
        except Exception:  # threadpoolctl is optional (scikit-learn brings it)
            _BLAS[pid] = None
    return _BLAS[pid]


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS on one thread within the block (as scikit-learn's Lloyd loop does).

    The E-step's products are small (4096 x d by d x k): a multi-threaded BLAS
    spends more time starting and joining its threads than computing (measured
    with OpenBLAS, k=16, d=8: 3 to 6x slower per product, and twice the CPU),
    and inside the E-step's own thread pool it oversubscribes the cores. The
    results do not change: each entry of a product is computed by the same
    kernel whatever the number of threads.
    """
    controller = blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api='blas'):
        yield


def kernel_dtype(X, dtype):
    """The dtype a kernel computes in: ``dtype`` if given, else float32 for float32 X, else float64."""
    if dtype is None:
        dtype = np.float32 if getattr(X, 'dtype', None) == np.float32 else np.float64
    dtype = np.dtype(dtype)
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f'dtype must be float64 or float32, got {dtype}')
    return dtype
