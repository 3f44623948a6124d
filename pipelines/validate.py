"""Translate a pipeline to its Dataflow job offline and print the job; nothing is submitted.

``beamml validate <pipeline> [flags]`` runs ``beamml <pipeline> [flags]
--runner DataflowRunner --dry_run True``: the flags are checked as Dataflow
would check them (project id, region, gs:// paths, bucket names, a
``--temp_location``), the graph is built and translated to a Dataflow job
without the network, and the job's type (batch or streaming), SDK container
image and top-level steps are printed. No storage is touched: the input is
neither listed nor read (its layout comes from the flags, with defaults:
:func:`beamml.pipelines.declare_layout`), the files the job is built
from (a model, a baseline, a gate, a monitoring config, initial centres) are
read from local paths only, and nothing is written. Exit 0 when the job
translates, 2 with one line saying what Dataflow would refuse or which flag a
dry run needs. Beam's record of the submitting environment (a ``pip freeze``, a quarter
of a dry run's time) is left out: nothing is staged (``--experiments
disable_logging_submission_environment``).
"""
from __future__ import annotations

import importlib
import sys

from beamml.pipelines._platform.runners import DATAFLOW_RUNNERS
from beamml.transforms.core.errors import BeammlError
from beamml.pipelines.__main__ import pipelines

NOT_VALIDATED = {'validate', 'demo', 'cycle'}
#: Beam's experiment that skips the ``pip freeze`` a translation runs to list the
#: submission environment among the files it would stage (1.5 s of a 6.3 s dry run)
NO_FREEZE = 'disable_logging_submission_environment'


def _usage() -> str:
    names = ', '.join(n for n in pipelines() if n not in NOT_VALIDATED)
    return (f'usage: beamml validate <pipeline> [flags]   (pipeline: {names}); the flags '
            'are the pipeline\'s own plus --project, --region, --temp_location gs://...')


def _values(argv, flag: str) -> list[str]:
    """The values given to ``flag`` (``--flag V`` or ``--flag=V``)."""
    return [argv[i + 1] if a == flag and i + 1 < len(argv) else a.split('=', 1)[1]
            for i, a in enumerate(argv) if a == flag or a.startswith(flag + '=')]


def dry_run_argv(argv) -> list[str]:
    """The pipeline's flags with ``--runner DataflowRunner --dry_run True`` (and
    ``--experiments`` :data:`NO_FREEZE`) added; another runner, or a dry run switched off,
    is refused (validate never submits a job)."""
    argv = list(argv)
    for runner in _values(argv, '--runner'):
        if runner not in DATAFLOW_RUNNERS:
            raise BeammlError(f'validate translates a Dataflow job; drop --runner '
                                     f'{runner} (or give DataflowRunner)')
    for value in _values(argv, '--dry_run'):
        if value.lower() != 'true':
            raise BeammlError(f'validate never submits a job; drop --dry_run {value}')
    if not _values(argv, '--runner'):
        argv += ['--runner', 'DataflowRunner']
    if not _values(argv, '--dry_run'):
        argv += ['--dry_run', 'True']
    if NO_FREEZE not in ','.join(_values(argv, '--experiments')).split(','):
        argv += ['--experiments', NO_FREEZE]
    return argv


def run(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in pipelines() or name in NOT_VALIDATED:
        raise BeammlError(f'cannot validate {name!r}; {_usage()}')
    module = importlib.import_module(f'beamml.pipelines.{name}')
    module.run(dry_run_argv(rest))
