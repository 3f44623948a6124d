"""Airflow DAG: beamml's daily cycle (docs/cycle.md), one task per step of day ``{{ ds }}``.

    wait >> assign >> gate >> monitor >> retrain     (beamml.pipelines.cycle.steps.STEPS)

Every step is ``beamml cycle STEP --date {{ ds }} ...``, idempotent per day (a step whose
decision file or committed folder is there says so and exits 0), so a retry, a cleared
task or a rerun of the whole day is safe. The logic is beamml's; this file only maps the
steps to tasks and exit codes to Airflow states:

* ``wait`` is a sensor: exit 4 (no input for the day yet) is "not yet", poked again every
  ``BEAMML_WAIT_POKE`` seconds in ``reschedule`` mode (the worker slot is freed between
  pokes) until ``BEAMML_WAIT_TIMEOUT``; any other non-zero code fails it.
* the other steps fail at once, without a retry, on exit 2 (a refusal a person must fix:
  a step run before the one it needs) and 6 (the day's input changed after its results
  were committed); any other failure (5: another run holds the day's lock, a worker
  error, a lost worker) is retried ``retries`` times.

ONE switch, ``BEAMML_MODE`` (an environment variable of the scheduler and the workers,
read when the file is parsed):

* ``local`` (the default): every step runs ``BEAMML_BIN cycle STEP`` on the Airflow worker,
  the pipelines on Beam's local runner (development, small days, and the tests:
  tests/test_airflow_cycle.py runs this DAG with ``airflow dags test``).
* ``dataflow``: ``wait``, ``gate`` and ``retrain`` still run ``beamml cycle`` on the worker
  (``wait`` and ``gate`` read and write a few small objects; ``retrain`` trains the
  candidate from its own process, as ``beamml kmeans`` must: batch kmeans has no Flex
  Template), while ``assign`` (with the shadow of day D-1's candidate and the gate) and
  ``monitor`` are Flex Template launches on Dataflow: ``assign_plan`` / ``monitor_plan``
  ask beamml for the launch (``beamml cycle STEP --template_parameters``: the same flags
  the local step passes, so the decisions stay beamml's) and skip the launch when the
  step is complete already; ``DataflowStartFlexTemplateOperator`` (from
  ``apache-airflow-providers-google``) starts the job and waits for it.

``BEAMML_BIN`` is the ``beamml`` command (default ``beamml`` on the PATH): Airflow and
beamml need not share a Python environment (install beamml in its own virtualenv and
point ``BEAMML_BIN`` at its ``bin/beamml``). The day's paths are ``BEAMML_INPUT`` (with
``{date}``), ``BEAMML_MODEL``, ``BEAMML_WORK``, ``BEAMML_MONITOR_CONFIG``, ``BEAMML_GATE``,
``BEAMML_INPUT_READY_MARKER`` (optional); Dataflow's are ``BEAMML_PROJECT``,
``BEAMML_REGION``, ``BEAMML_TEMPLATES`` (where the templates' specs are),
``BEAMML_TEMP_LOCATION``, ``BEAMML_SERVICE_ACCOUNT``, ``BEAMML_MACHINE_TYPE``,
``BEAMML_MAX_WORKERS``.

Days run in order, one at a time (``max_active_runs=1``, ``depends_on_past=True``): day
D's monitor reads the earlier days' as the rules' history and day D's assign shadows the
candidate of D-1. ``catchup`` is ``BEAMML_CATCHUP`` (default false): when true, the
scheduler runs every day from ``start_date`` (``BEAMML_START``) in order, which is how a
gap is filled; when false only the latest interval runs, and a missed day is run with
``airflow dags backfill`` (or a manual run with its logical date). The run that starts
just after midnight UTC on day D+1 covers day D (``{{ ds }}``).
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import DAG, task

ENV = os.environ
MODE = ENV.get('BEAMML_MODE', 'local')
if MODE not in ('local', 'dataflow'):
    raise ValueError(f'BEAMML_MODE must be local or dataflow, not {MODE!r}')
BEAMML = ENV.get('BEAMML_BIN', 'beamml')
FLAGS = ['--input', ENV.get('BEAMML_INPUT', 'gs://BUCKET/incoming/{date}/*.parquet'),
         '--model', ENV.get('BEAMML_MODEL', 'gs://BUCKET/models'),
         '--work', ENV.get('BEAMML_WORK', 'gs://BUCKET/cycle'),
         '--monitor_config', ENV.get('BEAMML_MONITOR_CONFIG', 'gs://BUCKET/monitor.yaml'),
         '--gate', ENV.get('BEAMML_GATE', 'gs://BUCKET/gate.yaml')]
if ENV.get('BEAMML_INPUT_READY_MARKER'):
    FLAGS += ['--input_ready_marker', ENV['BEAMML_INPUT_READY_MARKER']]

#: exit codes that a retry cannot fix (docs/conventions.md#exit-codes)
NO_RETRY = {2: 'a refusal a person must fix', 6: "the day's input changed after its "
            'results were committed (a person decides: --overwrite)'}

# Dataflow: the launch request's fixed parts (the parameters come from beamml)
PROJECT = ENV.get('BEAMML_PROJECT', 'PROJECT')
REGION = ENV.get('BEAMML_REGION', 'us-central1')
TEMPLATES = ENV.get('BEAMML_TEMPLATES', 'gs://BUCKET/templates')
ENVIRONMENT = {
    'tempLocation': ENV.get('BEAMML_TEMP_LOCATION', 'gs://BUCKET/tmp'),
    'serviceAccountEmail': ENV.get('BEAMML_SERVICE_ACCOUNT',
                                   'beamml-worker@PROJECT.iam.gserviceaccount.com'),
    'machineType': ENV.get('BEAMML_MACHINE_TYPE', 'n1-standard-1'),
    'maxWorkers': int(ENV.get('BEAMML_MAX_WORKERS', '2')),
}


def command(step: str, date: str, *more: str) -> list[str]:
    return [BEAMML, 'cycle', step, '--date', date, *FLAGS, *more]


def run_step(step: str, date: str, *more: str) -> str:
    """``beamml cycle STEP`` for the day: its output in the task's log; exit 2 and 6 fail
    the task for good, any other failure is retried."""
    done = subprocess.run(command(step, date, *more), capture_output=True, text=True)
    print(done.stdout, end='')
    print(done.stderr, end='')
    if done.returncode in NO_RETRY:
        raise AirflowFailException(f'beamml cycle {step} exited {done.returncode}: '
                                   f'{NO_RETRY[done.returncode]}')
    if done.returncode:
        raise AirflowException(f'beamml cycle {step} exited {done.returncode} (retried)')
    return done.stdout


def launch_body(template: str, parameters) -> dict:
    """The ``flexTemplates.launch`` request of a step (``parameters``: its plan's XCom)."""
    return {'launchParameter': {
        'jobName': f'beamml-cycle-{template}-{{{{ ds_nodash }}}}',
        'containerSpecGcsPath': f'{TEMPLATES}/{template}.json',
        'parameters': parameters,
        'environment': ENVIRONMENT,
    }}


def cycle_task(step: str, **kw):
    @task(task_id=step, **kw)
    def step_task(ds=None):
        run_step(step, ds)
    return step_task()


def plan_task(step: str):
    @task(task_id=f'{step}_plan')
    def plan(ds=None) -> dict:
        """beamml's launch of the step for the day; skipped (with the launch) when the
        step is complete already."""
        out = json.loads(run_step(step, ds, '--template_parameters').strip().splitlines()[-1])
        if out['complete']:
            raise AirflowSkipException(f'{out["output"]} is complete: nothing to launch')
        return out['parameters']
    return plan()


def launch_task(step: str, plan):
    from airflow.providers.google.cloud.operators.dataflow import (
        DataflowStartFlexTemplateOperator)
    return DataflowStartFlexTemplateOperator(
        task_id=step, project_id=PROJECT, location=REGION,
        body=launch_body(step, plan), wait_until_finished=True)


with DAG(
    dag_id='beamml_daily_cycle',
    schedule='@daily',
    start_date=datetime.datetime.fromisoformat(ENV.get('BEAMML_START', '2026-01-01')).replace(
        tzinfo=datetime.timezone.utc),
    catchup=ENV.get('BEAMML_CATCHUP', 'false') == 'true',
    max_active_runs=1,
    default_args={'depends_on_past': True, 'retries': int(ENV.get('BEAMML_RETRIES', '2')),
                  'retry_delay': datetime.timedelta(
                      seconds=float(ENV.get('BEAMML_RETRY_DELAY', '300')))},
    tags=['beamml'],
    doc_md=__doc__,
) as dag:
    wait = BashSensor(
        task_id='wait',
        bash_command=shlex.join(command('wait', '__DS__')).replace('__DS__', '{{ ds }}'),
        retry_exit_code=4,   # no input yet: poke again; other codes fail the sensor
        mode='reschedule',
        poke_interval=float(ENV.get('BEAMML_WAIT_POKE', '600')),
        timeout=float(ENV.get('BEAMML_WAIT_TIMEOUT', str(6 * 3600))),
        retries=0,
    )
    if MODE == 'local':
        wait >> cycle_task('assign') >> cycle_task('gate') >> cycle_task('monitor') >> \
            cycle_task('retrain')
    else:   # a skipped launch (the step was complete) does not skip the next step
        assign_plan = plan_task('assign')
        assign = launch_task('assign', assign_plan)
        gate = cycle_task('gate', trigger_rule='none_failed')
        monitor_plan = plan_task('monitor')
        monitor = launch_task('monitor', monitor_plan)
        retrain = cycle_task('retrain', trigger_rule='none_failed')
        wait >> assign_plan >> assign >> gate >> monitor_plan >> monitor >> retrain
