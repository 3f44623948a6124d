"""Shared fixtures: a local Cloud Storage emulator for gs:// paths, sample-data helpers.

No test needs a network or a cloud account: ``gcs_bucket`` starts
gcp-storage-emulator in this process on a free loopback port, points Beam's
GCS client at it (``STORAGE_EMULATOR_HOST``), makes Beam connect anonymously at
once (instead of retrying Google's default credentials for ~25 s), and yields
``gs://<bucket>``.
"""
from __future__ import annotations

import os
import uuid

import pytest

# Before google-auth is imported anywhere: never probe the GCE metadata server.
os.environ.setdefault('NO_GCE_CHECK', 'true')


@pytest.fixture(scope='session')
def gcs_emulator():
    gcp_storage_emulator = pytest.importorskip(
        'gcp_storage_emulator.server', reason='gcp-storage-emulator is not installed')
    server = gcp_storage_emulator.create_server('127.0.0.1', 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    url = f'http://127.0.0.1:{port}'
    saved = {k: os.environ.get(k) for k in ('STORAGE_EMULATOR_HOST',
                                             'GOOGLE_APPLICATION_CREDENTIALS')}
    os.environ['STORAGE_EMULATOR_HOST'] = url
    os.environ.pop('GOOGLE_APPLICATION_CREDENTIALS', None)
    from apache_beam.internal.gcp import auth
    auth._Credentials._credentials_init = True   # anonymous now, no 25 s of retries
    auth._Credentials._credentials = None
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A fresh bucket on the local emulator, as ``gs://name``."""
    from google.cloud import storage
    name = f'beamml-test-{uuid.uuid4().hex[:12]}'
    storage.Client.create_anonymous_client().create_bucket(name)
    yield f'gs://{name}'
