"""Runner choice and Dataflow checks, and running a pipeline in the run's own temporary folder.

A command's ``run`` is decorated with :func:`pipeline_run` (Beam's temporary folders go
to one of the run's own, removed afterwards); a Dataflow dry run (:func:`is_dry_run`)
prints the translated job and touches no storage; :func:`is_launch_only` is a Flex
Template launcher's mode (submit, do not wait).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beamml.transforms.core.errors import BeammlError


LOCAL_RUNNERS = {None, 'DirectRunner', 'direct', 'Direct'}
DATAFLOW_RUNNERS = {'DataflowRunner', 'dataflow', 'Dataflow'}


def is_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner in DATAFLOW_RUNNERS or (isinstance(runner, str)
                                          and runner.endswith('.DataflowRunner'))


def is_dry_run(options: PipelineOptions) -> bool:
    """A Dataflow job that is translated offline and never submitted (``--dry_run True``)."""
    from apache_beam.options.pipeline_options import TestOptions
    return is_dataflow(options) and bool(options.view_as(TestOptions).dry_run)


def local_for_dry_run(options: PipelineOptions, flag: str, path: str | None) -> None:
    """A dry run touches no storage: a file the graph is built from (a model, a baseline,
    a gate, a monitoring config, initial centres) must then be local; one on Cloud Storage
    (any ``scheme://``) is one line asking for a local copy, before anything is read."""
    if path and '://' in str(path) and is_dry_run(options):
        raise BeammlError(f'--{flag} {path}: a dry run reads nothing from Cloud Storage, and '
                          f'the job is built from this file: give a local copy of it '
                          f'(--{flag} PATH) to translate the job')


def input_files(read) -> str:
    """What the progress line says of a reader's input: its files, or that it was not read."""
    return (f'{len(read.paths)} file(s)' if read.paths is not None else
            'not read (a dry run: the layout from the flags)')


LAUNCH_ONLY_VARIABLE = 'BEAMML_LAUNCH_ONLY'


def is_launch_only(options: PipelineOptions) -> bool:
    """A Dataflow job submitted without waiting for it to finish: what a Flex Template
    launcher does (``BEAMML_LAUNCH_ONLY=1`` in its environment), since Dataflow gives the
    launcher minutes, not the job's hours. Work that belongs after the job is then in
    the graph (the commit of a dated run, :mod:`beamml.pipelines._platform.runs`)."""
    return is_dataflow(options) and os.environ.get(LAUNCH_ONLY_VARIABLE, '') not in ('', '0')


def no_results(options: PipelineOptions) -> bool:
    """The run ends without results to read back here: a dry run (translated offline,
    nothing written) or a launch that does not wait (:func:`is_launch_only`)."""
    return is_dry_run(options) or is_launch_only(options)


def check_dataflow_options(options: PipelineOptions) -> None:
    """What Dataflow would refuse, as one line, before anything touches the network.

    Beam's own option checks (project id, region, job name, gs:// paths and bucket
    names), plus ``--temp_location``, without which Beam tries to create a default
    staging bucket in the project (a minute of retries with no network).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    gcp = options.view_as(GoogleCloudOptions)
    for flag, path in (('temp_location', gcp.temp_location),
                       ('staging_location', gcp.staging_location)):
        if path is None:
            continue
        m = re.fullmatch(r'gs://([^/]*)(/.*)?', path)
        if not m:
            raise BeammlError(f'--{flag} {path}: Dataflow needs a gs://BUCKET/PATH location')
        if not re.fullmatch(r'[a-z0-9][-_a-z0-9.]{1,61}[a-z0-9]', m.group(1)):
            raise BeammlError(f'--{flag} {path}: {m.group(1)!r} is not a valid bucket name '
                              '(3-63 lowercase letters, digits, "-", "_" and ".")')
    if not gcp.temp_location and not gcp.staging_location:
        raise BeammlError('a Dataflow run needs --temp_location gs://BUCKET/PATH (Beam would '
                          'otherwise try to create a default bucket in the project)')
    errors = PipelineOptionsValidator(options, DataflowRunner()).validate()
    if errors:
        first = ' '.join(str(errors[0]).split())
        more = f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''
        raise BeammlError(f'Dataflow would refuse these options: {first}{more}')


def describe_job(job) -> list[str]:
    """The lines ``beamml validate`` prints for a translated Dataflow job."""
    from apache_beam.portability.api import beam_runner_api_pb2
    kind = {1: 'batch', 2: 'streaming'}.get(int(job.proto.type), str(job.proto.type))
    proto = job.proto_pipeline
    roots = [proto.components.transforms[t] for t in proto.root_transform_ids]
    steps = []   # the pipeline's top-level steps (a root's children, or the root itself)
    for t in roots:
        steps.extend([proto.components.transforms[s].unique_name for s in t.subtransforms]
                     or [t.unique_name])
    images = sorted({beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
                     for e in proto.components.environments.values()
                     if e.urn == 'beam:env:docker:v1'})
    return ([f'job: {job.proto.name or "(unnamed)"} type={kind} '
             f'steps={len(proto.components.transforms)}'] +
            [f'sdk_image: {i}' for i in images] +
            ['steps:'] + [f'  {s}' for s in steps])


def use_anonymous_storage() -> None:
    """Make this process's Beam Cloud Storage client anonymous, at once.

    Without credentials, Beam retries Google's default credentials with back-off
    for about 25 s (and ~60 warning lines) before it goes anonymous; against the
    Cloud Storage emulator or a public bucket there is nothing to wait for. This
    sets Beam's credential cache (``apache_beam.internal.gcp.auth``) to "looked up,
    none found" and stops google-auth from probing the GCE metadata server.
    """
    os.environ.setdefault('NO_GCE_CHECK', 'true')
    from apache_beam.internal.gcp import auth
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None


def run_pipeline(p: beam.Pipeline):
    """Run and wait; turn a failure that carries a beamml message into that message.

    A Dataflow dry run translates the job offline and prints it (:func:`describe_job`);
    a launch-only run (:func:`is_launch_only`) submits the job, prints its id and returns
    at once. In both cases the caller must not touch the outputs (:func:`no_results`)."""
    try:
        result = p.run()
        if is_launch_only(p.options) and not is_dry_run(p.options):
            job_id = getattr(result, 'job_id', lambda: None)()
            print(f'submitted Dataflow job {job_id}; not waiting for it ({LAUNCH_ONLY_VARIABLE})')
            return result
        result.wait_until_finish()
    except BeammlError as e:  # a worker's error, re-raised with the step appended
        message = re.sub(r'\s\[while running .*$', '', str(e), flags=re.S)
        if message == str(e):
            raise
        raise BeammlError(message.strip(), parameters=e.parameters) from e
    except Exception as e:  # Beam wraps errors raised in workers
        m = re.search(r'BeammlError: (.+?)(?:\s\[while running|$)', str(e), re.S)
        if m:
            raise BeammlError(m.group(1).strip().splitlines()[0]) from e
        raise
    if is_dry_run(p.options):
        print('\n'.join(describe_job(result.job)))
    return result


_RUN_PREFIX = 'beamml-run-'
#: in a run's folder, held locked (``flock``) by the run for as long as it lives
_RUN_LOCK = '.beamml-run.lock'
#: a folder whose lock file is younger than this is never swept (its run may be
#: between making the file and locking it)
_SWEEP_AFTER_SECONDS = 60


def _hold_run_lock(folder: str):
    """Create and lock the run's lock file; the open descriptor (None where ``fcntl`` is
    missing). The lock ends with the process, however it ends: a SIGKILL too."""
    try:
        import fcntl
    except ImportError:   # not a POSIX system: no sweeping either
        return None
    fd = os.open(os.path.join(folder, _RUN_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def sweep_killed_runs(parent: str) -> list[str]:
    """Remove the folders that killed runs left in ``parent``; the folders removed.

    A run killed with no chance to clean up (SIGKILL, the machine's out-of-memory killer)
    leaves its ``beamml-run-*`` folder. Its lock file tells: a run holds an ``flock`` on
    it while it lives, and the kernel drops the lock when the process dies. A folder is
    removed only when its lock file exists, is older than a minute, and can be locked
    now; anything else (a live run, in this or another container on the same kernel; a
    folder with no lock file; a name merely like ours) is left alone.
    """
    try:
        import fcntl
        import time
        names = [n for n in os.listdir(parent) if n.startswith(_RUN_PREFIX)]
    except (ImportError, OSError):
        return []
    removed = []
    for name in names:
        folder = os.path.join(parent, name)
        lock = os.path.join(folder, _RUN_LOCK)
        try:
            if time.time() - os.lstat(lock).st_mtime < _SWEEP_AFTER_SECONDS:
                continue
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:   # its run is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def private_tempdir():
    """Point :mod:`tempfile` at a folder of this run's own, and remove it afterwards.

    Beam leaves temporary folders behind: every ``beam.Pipeline`` makes a
    ``beam-pipeline-temp*`` folder that only a completed ``run()`` removes (so a run
    refused while its graph is built leaves one), and a Dataflow submission or dry
    run stages the sdist of ``--setup_file`` in a ``tmp*`` folder it keeps. Inside
    this scope they all land in one folder, removed when the scope ends, however
    it ends. Nested scopes share the outer folder. A killed run cannot remove its
    folder: the next run does (:func:`sweep_killed_runs`), and says so.
    """
    if isinstance(tempfile.tempdir, str) and os.path.basename(
            tempfile.tempdir).startswith(_RUN_PREFIX):
        yield tempfile.tempdir
        return
    saved = tempfile.tempdir
    parent = tempfile.gettempdir()
    swept = sweep_killed_runs(parent)
    if swept:   # (DEBUG: housekeeping, never a line beside a refusal's one line)
        import logging
        logging.getLogger('beamml').debug(
            'removed %d temporary folder(s) that killed runs left in %s', len(swept), parent)
    folder = tempfile.mkdtemp(prefix=_RUN_PREFIX)
    lock = _hold_run_lock(folder)
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def outer_tempdir() -> str:
    """The temporary folder outside :func:`private_tempdir` (which ends with the run):
    for files that must outlive a killed run, such as a K-means point cache."""
    d = tempfile.gettempdir()
    return os.path.dirname(d) if os.path.basename(d).startswith(_RUN_PREFIX) else d


def pipeline_run(run):
    """Decorator for a pipeline's ``run(argv)``: it runs in :func:`private_tempdir`."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with private_tempdir():
            return run(*args, **kwargs)
    return wrapper
