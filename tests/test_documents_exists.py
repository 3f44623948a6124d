"""``documents.exists`` on Cloud Storage (the local emulator): only a missing object is
"no"; a refusal or a store that does not answer is one BeammlError line naming the path."""
from __future__ import annotations

from http import HTTPStatus

import pytest

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import exists, write_text


def _answer_objects_with(monkeypatch, status: int) -> None:
    """The emulator answers every metadata read of an object with HTTP ``status``."""
    from gcp_storage_emulator import server as srv
    from gcp_storage_emulator.handlers import objects

    def refuse(request, response, storage, *args, **kwargs):
        response.status = HTTPStatus(status)
        response.json({'error': {'code': status, 'message': f'answered {status}'}})

    for _, handlers in srv.HANDLERS:
        if handlers.get(srv.GET) is objects.get:
            monkeypatch.setitem(handlers, srv.GET, refuse)


def _shorten_storage_retries(monkeypatch, seconds: float) -> None:
    from google.cloud.storage import retry
    from apache_beam.io.gcp import gcsio_retry
    for r in (retry.DEFAULT_RETRY, gcsio_retry.DEFAULT_RETRY_WITH_THROTTLING_COUNTER):
        monkeypatch.setattr(r, '_timeout', seconds)
        monkeypatch.setattr(r, '_deadline', seconds)


def test_present_and_missing(gcs_bucket):
    write_text(f'{gcs_bucket}/m/model.json', '{}')
    assert exists(f'{gcs_bucket}/m/model.json')
    assert not exists(f'{gcs_bucket}/m/other.json')
    assert not exists('gs://beamml-no-such-bucket-here/model.json')


def test_a_refusal_is_not_a_missing_file(gcs_bucket, monkeypatch):
    path = f'{gcs_bucket}/m/model.json'
    write_text(path, '{}')
    _answer_objects_with(monkeypatch, 403)
    with pytest.raises(BeammlError) as e:
        exists(path)
    assert str(e.value).startswith(f'{path}: Cloud Storage refused the request: 403')
    assert '\n' not in str(e.value)


def test_a_store_that_does_not_answer_is_not_a_missing_file(gcs_bucket, monkeypatch):
    path = f'{gcs_bucket}/m/model.json'
    _shorten_storage_retries(monkeypatch, 1)
    _answer_objects_with(monkeypatch, 503)
    with pytest.raises(BeammlError) as e:
        exists(path)
    assert str(e.value).startswith(f'{path}: Cloud Storage did not answer: ')
    assert '\n' not in str(e.value)
