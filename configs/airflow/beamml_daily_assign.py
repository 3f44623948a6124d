"""Airflow DAG: nearest-centroid inference (beamml assign) once a day, on the data of the
day the run covers, through the assign Flex Template (configs/templates/assign.json).

``date`` is ``{{ ds }}``, the run's logical date (the start of its daily interval): the
run that starts just after midnight UTC on day D+1 covers day D, and a backfill or a
cleared task reruns the same day. beamml fills ``{date}`` in the paths from it. A day
whose ``_SUCCESS`` is already written is a no-op (exit 0) unless ``overwrite`` is
``true``. No sensor: ``wait_for_input`` makes beamml itself poll for the day's files (and
``input_ready_marker``) before the job is submitted; that wait runs on the template's
launcher VM, so keep it to minutes, or put a sensor before the task for longer waits.
If the input never appears the launch fails with exit code 4 (5: another run holds the
destination's lock), and the task fails.

Fill in PROJECT, REGION and BUCKET. Needs apache-airflow-providers-google.
"""
import datetime

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

PROJECT = 'PROJECT'
REGION = 'us-central1'

# A literal (tests read it with ast): the flexTemplates.launch request body.
BODY = {
    'launchParameter': {
        'jobName': 'beamml-assign-{{ ds_nodash }}',
        'containerSpecGcsPath': 'gs://BUCKET/templates/assign.json',
        'parameters': {
            'input': 'gs://BUCKET/incoming/{date}/*.parquet',
            'output': 'gs://BUCKET/predictions/{date}/',
            'model': 'gs://BUCKET/models',
            'date': '{{ ds }}',
            'wait_for_input': '600',
            'input_ready_marker': '_READY',
        },
        'environment': {
            'tempLocation': 'gs://BUCKET/tmp',
            'serviceAccountEmail': 'beamml-worker@PROJECT.iam.gserviceaccount.com',
            'machineType': 'n1-standard-1',
            'maxWorkers': 2,
        },
    },
}

with DAG(
    dag_id='beamml_daily_assign',
    schedule='@daily',
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=['beamml'],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id='assign',
        project_id=PROJECT,
        location=REGION,
        body=BODY,
        wait_until_finished=True,
    )
