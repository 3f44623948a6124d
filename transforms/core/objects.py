"""Whole objects, local or on Cloud Storage: create only if absent, delete only if unchanged,
list everything under a prefix, move a tree. What a dated run's lock and commit stand on.

Cloud Storage has no rename and no lock; it has preconditions: an upload with
``ifGenerationMatch=0`` succeeds only if the object does not exist, and a delete with
``ifGenerationMatch=G`` only if the object is still generation ``G`` (HTTP 412
otherwise). A local file system has ``O_EXCL`` and ``flock``. Each function here is
the one atomic step on both; the names of local paths are plain paths, of objects
``gs://bucket/name``.
"""
from __future__ import annotations

import contextlib
import os
import re

from apache_beam.io.filesystems import FileSystems

from beamml.transforms.core.errors import BeammlError, first_line

__all__ = ['Stored', 'create_exclusive', 'write_stored', 'read_stored', 'delete_if_unchanged',
           'list_under', 'list_entries', 'describe_files', 'move_files', 'delete_files',
           'delete_tree', 'local_guard', 'open_file', 'missing_bucket', 'RUN_TEMPORARY',
           'in_run_temporary']

#: The name of a dated run's temporary folder starts with this
#: (``<parent>/.beamml-tmp-<name>-<run id>/``, :mod:`beamml.pipelines._platform.runs`):
#: each run makes its own, new, and writes its results there before the commit moves them.
RUN_TEMPORARY = '.beamml-tmp-'


def in_run_temporary(path: str) -> bool:
    """Whether ``path`` lies in a dated run's own temporary folder, where nothing but that
    run's files can be."""
    return any(part.startswith(RUN_TEMPORARY) for part in path.replace('\\', '/').split('/'))


class Stored:
    """An object's bytes and its version (Cloud Storage generation; locally the file's
    inode and modification time in ns)."""

    def __init__(self, data: bytes, version):
        self.data, self.version = data, version


#: how long a Cloud Storage call here retries an unanswered or failed request before it
#: gives up (Google's client default, 120 s); the environment variable sets it
RETRY_VARIABLE = 'BEAMML_STORAGE_RETRY_SECONDS'


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY
    return DEFAULT_RETRY.with_timeout(float(os.environ.get(RETRY_VARIABLE) or 120.0))


def _client():
    from apache_beam.io.gcp.gcsio import GcsIO
    return GcsIO().client


def _gcs(path: str):
    from apache_beam.io.gcp.gcsio import parse_gcs_path
    bucket, name = parse_gcs_path(path)
    return _client().bucket(bucket).blob(name)


def _storage_error(e: BaseException, *, unanswered: bool = False) -> bool:
    """An error of the store itself (unreachable, access denied, a failed request);
    ``unanswered``: only one where the store did not answer (unreachable, timed out
    after the retries, a server error), not an answer such as "access denied"."""
    from apache_beam.io.filesystem import BeamIOError
    from google.api_core import exceptions
    import requests
    if not unanswered:
        return isinstance(e, (exceptions.GoogleAPIError, requests.RequestException,
                              ConnectionError, TimeoutError, BeamIOError))
    if isinstance(e, BeamIOError) and isinstance(e.exception_details, dict):
        return any(isinstance(x, BaseException) and _storage_error(x, unanswered=True)
                   for x in e.exception_details.values())
    return isinstance(e, (exceptions.RetryError, exceptions.ServerError,
                          requests.ConnectionError, requests.Timeout, ConnectionError,
                          TimeoutError))


def _first_line(e: BaseException) -> str:
    return re.sub(r'\s*\(Caused by .*$', '', first_line(e))


@contextlib.contextmanager
def _storage(path: str):
    """A Cloud Storage call about ``path``: an error of the store (unreachable after the
    retries: "did not answer"; an answer such as access denied: "refused the request")
    becomes one BeammlError line naming the path."""
    from google.api_core import exceptions
    try:
        yield
    except (exceptions.PreconditionFailed, exceptions.NotFound):
        raise
    except Exception as e:
        if not _storage_error(e):
            raise
        if _storage_error(e, unanswered=True):
            raise BeammlError(f'{path}: Cloud Storage did not answer: {_first_line(e)}') from e
        raise BeammlError(f'{path}: Cloud Storage refused the request: {_first_line(e)}') from e


@contextlib.contextmanager
def open_file(path: str):
    """``FileSystems.open(path)`` as raw bytes; a file that cannot be read (no access,
    gone, the store unreachable), at the open or later, is one BeammlError naming it.
    A store that did not answer says so (``<path>: Cloud Storage did not answer: ...``),
    also when a reader had already worded the failure as its own ("not a readable
    parquet file: Timeout of 120.0s exceeded" would blame the file)."""
    from apache_beam.io.filesystem import CompressionTypes
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield f
    except PermissionError as e:
        raise BeammlError(f'{path}: cannot read it: {e.strerror or e}') from e
    except Exception as e:   # a missing file is the caller's to word (FileNotFoundError)
        from google.api_core import exceptions
        cause = e if path.startswith('gs://') else None   # the store's own error in e's chain
        while cause is not None and not _storage_error(cause, unanswered=True):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise BeammlError(f'{path}: Cloud Storage did not answer: '
                              f'{_first_line(cause)}') from e
        if isinstance(e, (BeammlError, exceptions.NotFound)) or not _storage_error(e):
            raise
        raise BeammlError(f'{path}: cannot read it: {_first_line(e)}') from e


def _precondition_failed():
    from google.api_core import exceptions
    return (exceptions.PreconditionFailed,)


def _not_found():
    from google.api_core import exceptions
    return (exceptions.NotFound,)


def create_exclusive(path: str, data: bytes, *,
                     content_type: str = 'application/json') -> bool:
    """Write ``path`` only if it does not exist; True if this call created it."""
    if path.startswith('gs://'):
        try:
            with _storage(path):
                _gcs(path).upload_from_string(data, content_type=content_type,
                                              if_generation_match=0, retry=_retry())
        except _precondition_failed():
            return False
        return True
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def write_stored(path: str, data: bytes) -> None:
    """Write (or replace) ``path`` whole: a reader sees the old bytes or the new ones,
    never a part (locally a temporary file renamed over it; Cloud Storage objects are
    replaced whole by an upload)."""
    if path.startswith('gs://'):
        with _storage(path):
            _gcs(path).upload_from_string(data, content_type='application/json',
                                          retry=_retry())
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.partial')
    with open(partial, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_stored(path: str) -> Stored | None:
    """The object's bytes and version, or None when there is none."""
    if path.startswith('gs://'):
        for _ in range(5):
            blob = _gcs(path)
            with _storage(path):
                blob = blob.bucket.get_blob(blob.name, retry=_retry())   # the generation
            if blob is None:
                return None
            generation = blob.generation   # (a download may reset it from its headers)
            try:
                with _storage(path):
                    data = blob.download_as_bytes(if_generation_match=generation,
                                                  retry=_retry())
            except _not_found():
                return None
            except _precondition_failed():   # replaced between the two calls
                continue
            return Stored(data, generation)
        raise OSError(f'{path} keeps changing while it is read')
    try:
        with open(path, 'rb') as f:
            st = os.fstat(f.fileno())
            return Stored(f.read(), (st.st_ino, st.st_mtime_ns))
    except FileNotFoundError:
        return None


def delete_if_unchanged(path: str, version) -> bool:
    """Delete ``path`` if it is still the version read; True if this call deleted it.
    (Locally, call it inside :func:`local_guard` so that read, check and delete are one step.)"""
    if version is None:
        raise ValueError(f'{path}: no version to match')
    if path.startswith('gs://'):
        try:
            with _storage(path):
                _gcs(path).delete(if_generation_match=version, retry=_retry())
        except _precondition_failed() + _not_found():
            return False
        return True
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if (st.st_ino, st.st_mtime_ns) != version:
        return False
    os.remove(path)
    return True


@contextlib.contextmanager
def local_guard(path: str):
    """Hold an exclusive ``flock`` on the folder of ``path`` (local paths; nothing for
    gs://, whose preconditions are the guard). Every process that reads, checks and
    replaces ``path`` inside this scope does so one at a time; no file is left behind."""
    if '://' in path:
        yield
        return
    import fcntl
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the flock


def list_under(prefix: str) -> list[str]:
    """Every file whose path starts with ``prefix`` (a folder ending in ``/`` lists its
    whole tree), sorted."""
    if prefix.startswith('gs://'):
        from apache_beam.io.gcp.gcsio import parse_gcs_path
        bucket, start = parse_gcs_path(prefix, object_optional=True)
        with _storage(prefix):
            return sorted(f'gs://{bucket}/{b.name}' for b in
                          _client().list_blobs(bucket, prefix=start, retry=_retry()))
    folder, start = os.path.split(prefix)
    folder = folder or '.'
    if not os.path.isdir(folder):
        return []
    found = []
    for entry in os.listdir(folder):
        if not entry.startswith(start):
            continue
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            for root, _, files in os.walk(full):
                found.extend(os.path.join(root, f) for f in files)
        else:
            found.append(full)
    return sorted(found)


def missing_bucket(path: str) -> str | None:
    """The bucket of a ``gs://`` path when it does not exist (Beam's listing of a missing
    bucket is an empty list, as if no file matched), else None; one call, made only when
    a listing found nothing."""
    if not path.startswith('gs://'):
        return None
    from apache_beam.io.gcp.gcsio import parse_gcs_path
    bucket, _ = parse_gcs_path(path, object_optional=True)
    with _storage(f'gs://{bucket}'):
        return None if _client().lookup_bucket(bucket, retry=_retry()) is not None else bucket


def list_entries(prefix: str) -> list[str]:
    """The names that start with ``prefix`` one level down: locally the files *and
    folders* (empty ones too) of the prefix's folder whose names start with its last
    part; on Cloud Storage, which has no folders, :func:`list_under`."""
    if prefix.startswith('gs://'):
        return list_under(prefix)
    folder, start = os.path.split(prefix)
    folder = folder or '.'
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, e) for e in os.listdir(folder) if e.startswith(start))


def describe_files(paths: list[str]) -> list[dict]:
    """[{path, size, generation (gs://) or mtime (local, ISO UTC)}] of existing files."""
    import datetime as dt
    out = []
    gcs = [p for p in paths if p.startswith('gs://')]
    if gcs:
        from apache_beam.io.gcp.gcsio import parse_gcs_path
        client = _client()
        by_bucket: dict[str, set[str]] = {}
        for p in gcs:
            b, n = parse_gcs_path(p)
            by_bucket.setdefault(b, set()).add(n)
        info = {}
        for b, names in by_bucket.items():
            common = os.path.commonprefix(sorted(names))
            with _storage(f'gs://{b}/{common}'):
                blobs = list(client.list_blobs(b, prefix=common, retry=_retry()))
            for blob in blobs:
                if blob.name in names:
                    info[f'gs://{b}/{blob.name}'] = {
                        'size': blob.size, 'generation': str(blob.generation),
                        'updated': blob.updated.isoformat() if blob.updated else None}
    for p in paths:
        if p.startswith('gs://'):
            out.append({'path': p, **info.get(p, {})})
        else:
            st = os.stat(p)
            out.append({'path': p, 'size': st.st_size, 'mtime': dt.datetime.fromtimestamp(
                st.st_mtime, dt.timezone.utc).isoformat()})
    return out


def move_files(pairs: list[tuple[str, str]]) -> None:
    """Rename each (source, destination), replacing the destination. A source already
    gone whose destination exists was moved by an earlier attempt: skipped (so a retried
    commit finishes the moves instead of failing)."""
    if not pairs:
        return
    with _storage(pairs[0][0]):
        _move_files(pairs)


def _move_files(pairs):
    todo = [(s, d) for s, d in pairs if FileSystems.exists(s)]
    pending = set(todo)
    for s, d in pairs:
        if (s, d) not in pending and not FileSystems.exists(d):
            raise FileNotFoundError(f'{s} is gone and {d} was never written')
    local = [(s, d) for s, d in todo if '://' not in s]
    for s, d in local:
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        os.replace(s, d)
    remote = [(s, d) for s, d in todo if '://' in s]
    for i in range(0, len(remote), 100):   # Cloud Storage batches up to 100 requests
        chunk = remote[i:i + 100]
        FileSystems.rename([s for s, _ in chunk], [d for _, d in chunk])


def delete_tree(prefix: str) -> None:
    """Delete every file under ``prefix`` (and, locally, the emptied folders)."""
    files = list_under(prefix)
    if prefix.startswith('gs://'):
        delete_files(files)
        return
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)
    if prefix.endswith('/'):
        roots = [prefix.rstrip('/')]
    else:
        folder, start = os.path.split(prefix)
        folder = folder or '.'
        roots = [os.path.join(folder, e) for e in (os.listdir(folder) if os.path.isdir(folder)
                                                   else []) if e.startswith(start)]
    for root in roots:
        if os.path.isdir(root):
            for d, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def delete_files(paths: list[str]) -> None:
    """Delete these files (Cloud Storage: in batches of 100 requests)."""
    if not paths:
        return
    with _storage(paths[0]):
        for i in range(0, len(paths), 100):
            FileSystems.delete(paths[i:i + 100])
