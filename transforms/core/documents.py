"""Small documents beside the results (JSON summaries, model files, markers), local or gs://.

Documents are written under the one JSON policy of :mod:`beamml.transforms.core.jsonable`
(its names are re-exported here: ``dumps``, ``to_jsonable``, ``json_float``).
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.core.jsonable import (NON_FINITE, NON_FINITE_TEXT, dumps, json_float,
                                             to_jsonable)

__all__ = ['NON_FINITE', 'NON_FINITE_TEXT', 'json_float', 'to_jsonable', 'dumps', 'join',
           'is_remote', 'exists', 'read_bytes', 'read_text', 'write_bytes', 'write_text',
           'read_json', 'write_json']

def is_remote(path: str) -> bool:
    return '://' in path


def join(base: str, *parts: str) -> str:
    """``FileSystems.join`` that tolerates a trailing ``/`` on ``base``."""
    return FileSystems.join(base.rstrip('/') if base not in ('/', '') else base, *parts)


def exists(path: str) -> bool:
    """Whether the file ``path`` exists. Only a missing file is ``False``: a store that did
    not answer or refused the request (no access) is one BeammlError naming ``path``."""
    from beamml.transforms.core.objects import _storage
    with _storage(path):
        return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode('utf-8')


def write_bytes(path: str, data: bytes) -> str:
    """Write a small file whole: on Cloud Storage one upload (atomic), locally through a
    temporary name and a rename, so a reader never sees half a file. Returns ``path``."""
    if is_remote(path):
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        return path
    tmp = f'{path}.{uuid.uuid4().hex[:8]}.tmp'
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode('utf-8'))


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, doc: Any, *, indent: int | None = None) -> str:
    """Write one JSON document (newline-terminated) under the policy above."""
    return write_text(path, dumps(doc, indent=indent) + '\n')
