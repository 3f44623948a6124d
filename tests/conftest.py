"""Shared fixtures: a local Cloud Storage emulator for gs:// paths, sample-data helpers.

No test needs a network or a cloud account: ``gcs_bucket`` starts
gcp-storage-emulator in this process on a free loopback port, points Beam's
GCS client at it (``STORAGE_EMULATOR_HOST``), makes Beam connect anonymously at
once (instead of retrying Google's default credentials for ~25 s), and yields
``gs://<bucket>``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import tempfile
import uuid

import pytest

# pytest keeps the test modules it rewrites (for its assertion messages) in
# tests/__pycache__, as Python keeps compiled modules, even where PYTHONDONTWRITEBYTECODE
# is set (as on the machines we run on; `make test` compiles beamml's modules for the same
# reason): each pytest-xdist worker collects every test file, and rewriting all of them
# took ~10 s of CPU per worker per run. Only this process: the processes the tests start
# keep the environment's setting.
sys.dont_write_bytecode = False

# Before google-auth is imported anywhere: never probe the GCE metadata server.
os.environ.setdefault('NO_GCE_CHECK', 'true')

# Beam's DoFn introspection and options views are computed once in the test processes
# (about a third of a small pipeline's run; tests/beam_signatures.py says why and what it
# changes).
import beam_signatures  # noqa: E402

beam_signatures.install()


def pytest_configure(config):
    config.addinivalue_line('markers', 'e2e: a long end-to-end simulation: `make e2e` runs '
                                       'these, `make test` leaves them out')


@pytest.fixture(scope='session')
def gcs_emulator():
    gcp_storage_emulator = pytest.importorskip(
        'gcp_storage_emulator.server', reason='gcp-storage-emulator is not installed')
    _enforce_generation_preconditions()
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


def _enforce_generation_preconditions() -> None:
    """Make gcp-storage-emulator honour ``ifGenerationMatch`` on uploads and deletes, as
    Cloud Storage does (HTTP 412 when the object's generation is not the one given; 0
    means "does not exist"): the emulator ignores the parameter, and beamml's run lock
    stands on it (pipelines/_platform/runs.py).

    And serve requests concurrently, as the service does, one handler at a time (so every
    check-and-act is atomic): each connection has a thread that reads the request body
    before it takes the lock. The emulator served one connection at a time: a failed run in
    the test process leaves uploads half sent (the upload thread waits for bytes its failed
    writer never gives), and each held the whole server in its body read until the read
    timed out; several in a row made a later listing's connection time out after 60 s
    (seen in CI). A stalled request now holds only its own thread, for 10 s at most."""
    import threading
    from functools import partial
    from http import HTTPStatus, server as http_server
    from urllib.parse import parse_qs, urlparse
    from gcp_storage_emulator import server as srv
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects
    if getattr(srv, '_beamml_preconditions', False):
        return
    serial = threading.Lock()

    def current(storage, bucket, name):
        try:
            return str(storage.get_file_obj(bucket, name)['generation'])
        except NotFound:
            return '0'

    def wrap(handler, name_of):
        def checked(request, response, storage, *args, **kwargs):
            wanted = request.query.get('ifGenerationMatch')
            if not wanted:
                return handler(request, response, storage, *args, **kwargs)
            name = name_of(request)
            if name is not None and current(
                    storage, request.params['bucket_name'], name) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({'error': {'code': 412, 'message': 'conditionNotMet'}})
                return None
            return handler(request, response, storage, *args, **kwargs)
        return checked

    def upload_name(request):
        if 'name' in request.query:
            return request.query['name'][0]
        data = request.data
        return data.get('meta', {}).get('name') if isinstance(data, dict) else None

    wrapped = {objects.insert: wrap(objects.insert, upload_name),
               objects.delete: wrap(objects.delete, lambda r: r.params.get('object_id'))}
    for _, handlers in srv.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in wrapped:
                handlers[method] = wrapped[fn]

    real_handle, real_init = srv.Router.handle, srv.Request.__init__

    def handle(router, method):
        """The body first, in this connection's thread; then the handler, one at a time."""
        h = router._request_handler
        h.beamml_body = srv._read_data(h, parse_qs(urlparse(h.path).query))
        with serial:
            real_handle(router, method)

    def init(request, request_handler, method):
        real_init(request, request_handler, method)
        request._data = request_handler.beamml_body

    def run(api):
        api._httpd = http_server.ThreadingHTTPServer(
            (api._host, api._port), partial(srv.RequestHandler, api._storage))
        api._httpd.daemon_threads = True
        api.is_running.set()
        api._httpd.serve_forever()

    srv.Router.handle, srv.Request.__init__, srv.APIThread.run = handle, init, run
    # Cloud Storage drops a stalled request: so does the emulator, after 10 s without a byte.
    srv.RequestHandler.timeout = 10
    srv._beamml_preconditions = True


# ----------------------------------------------------------------------------- pytest-xdist

#: The test modules that take longest, longest first (summed test time, ``pytest -n 2
#: --dist loadfile --durations=0``, 2026-12-07). ``make test`` gives a pytest-xdist worker a
#: whole module at a time, in collection order (``--no-loadscope-reorder``: not by the
#: number of tests in it), so the long modules start first and the short ones fill in
#: at the end; a long module dispatched last would leave the other worker idle while
#: it runs. A module not listed keeps its place after these.
SLOW_MODULES_FIRST = (
    'test_cycle.py', 'test_airflow_cycle.py', 'test_workflows_cycle.py',
    'test_fuzz.py', 'test_hostile_input.py', 'test_data_safety.py', 'test_kmeans_blocks.py',
    'test_validate.py', 'test_monitor.py', 'test_dated_runs_gcs.py',
    'test_streaming_fail_closed.py', 'test_readme_shell.py', 'test_streaming.py',
    'test_report.py', 'test_index.py', 'test_streaming_files.py', 'test_readers_hostile.py',
    'test_local_pubsub.py', 'test_dated_runs.py', 'test_kmeans_ninit.py', 'test_evaluate.py',
    'test_norms.py', 'test_cli_runs.py', 'test_evaluate_hostile.py', 'test_deployment.py',
    'test_kmeans_cosine.py', 'test_kmeans_weights.py', 'test_cli.py', 'test_kmeans.py')


@pytest.fixture(autouse=True, scope='session')
def _stop_the_shared_pubsub_emulator():
    """The Pub/Sub emulator shared by this process's streaming tests (tests/pubsub_emulator.py)
    stops, by its process group, when the session ends."""
    yield
    from pubsub_emulator import stop_shared_emulator
    stop_shared_emulator()


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: in-module order kept


#: Building beamml's sdist in the repository folder (``python setup.py sdist``, or Beam's
#: stager for ``--setup_file ./setup.py``) writes ``<repo>/beamml.egg-info`` and a
#: ``<repo>/beamml-<version>/`` tree it deletes when done: two builds at once in one checkout
#: (two pytest-xdist workers) break each other (seen: "copying transforms/... ", then exit
#: 1). The tests that build one take a lock of this checkout, one at a time: these test
#: modules for the whole module (a module fixture builds it), these tests for the test
#: (and tests/test_validate.py's ``offline`` fixture around its one build).
SDIST_MODULES = ('tests/test_packaging.py',)
SDIST_TESTS = ('tests/test_cli.py::test_dataflow_translation_offline',
               'tests/test_readme_shell.py::')   # the validate runs of the Dataflow configs
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SDIST_LOCK = os.path.join(tempfile.gettempdir(), 'beamml-sdist-%s.lock'
                           % hashlib.sha1(_ROOT.encode()).hexdigest()[:12])


@contextlib.contextmanager
def one_sdist_build_at_a_time():
    with open(_SDIST_LOCK, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(autouse=True, scope='module')
def _sdist_lock_for_the_module(request):
    if request.node.nodeid.startswith(SDIST_MODULES):
        with one_sdist_build_at_a_time():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _sdist_lock_for_the_test(request):
    if request.node.nodeid.startswith(SDIST_TESTS):
        with one_sdist_build_at_a_time():
            yield
    else:
        yield
