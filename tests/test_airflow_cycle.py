"""The Airflow DAG of the daily cycle (configs/airflow/beamml_daily_cycle.py) run by real
Airflow (``dag.test()`` in the virtualenv ``make e2e`` builds: .venv-airflow) over the four
days of tests/cycle_story.py on the Cloud Storage emulator, in its ``local`` mode
(``beamml cycle STEP`` per task, the local runner): on the late day the ``wait`` sensor's
first poke finds no input (exit 4: up for reschedule, not a failure), the test lands the
input then, the next poke finds it; the rerun of day 3 succeeds and changes nothing.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest
from cycle_story import DAYS, LATE, RERUN, Bucket, check_the_days

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAG_FILE = os.path.join(ROOT, 'configs', 'airflow', 'beamml_daily_cycle.py')
DRIVER = os.path.join(ROOT, 'tests', 'airflow_driver.py')
TASKS = ['assign', 'gate', 'monitor', 'retrain', 'wait']


def airflow_venv() -> str:
    """The Airflow virtualenv: BEAMML_AIRFLOW_VENV (``make e2e`` sets it, and the test
    then fails if it is missing), else .venv-airflow, else the test skips."""
    given = os.environ.get('BEAMML_AIRFLOW_VENV')
    venv = given or os.path.join(ROOT, '.venv-airflow')
    if not os.path.exists(os.path.join(venv, '.installed')):
        if given:
            pytest.fail(f'BEAMML_AIRFLOW_VENV={given} has no .installed: make airflow-venv')
        pytest.skip('no Airflow virtualenv (.venv-airflow): `make e2e` builds it and runs '
                    'this test')
    return venv


def dag_environment(b: Bucket, home: str) -> dict:
    """The DAG's settings (environment variables read when it is parsed) for the test;
    the DAGs folder holds this DAG only."""
    return {**os.environ, 'AIRFLOW_HOME': home, 'AIRFLOW__CORE__LOAD_EXAMPLES': 'False',
            'AIRFLOW__CORE__DAGS_FOLDER': os.path.join(home, 'dags'),
            'BEAMML_MODE': 'local',
            'BEAMML_BIN': os.path.join(os.path.dirname(sys.executable), 'beamml'),
            'BEAMML_INPUT': f'{b.url}/incoming/{{date}}/*.parquet',
            'BEAMML_MODEL': f'{b.url}/models', 'BEAMML_WORK': f'{b.url}/cycle',
            'BEAMML_MONITOR_CONFIG': f'{b.url}/monitor.yaml',
            'BEAMML_GATE': f'{b.url}/gate.yaml', 'BEAMML_START': '2026-10-01',
            'BEAMML_WAIT_POKE': '2', 'BEAMML_WAIT_TIMEOUT': '300',
            'BEAMML_RETRY_DELAY': '1', 'PYTHONUNBUFFERED': '1'}


class Driver:
    """tests/airflow_driver.py in the Airflow virtualenv: one ``dag.test()`` per day."""

    def __init__(self, python: str, env: dict, log_path: str):
        self.log = open(log_path, 'w', encoding='utf-8')
        dag_file = os.path.join(env['AIRFLOW__CORE__DAGS_FOLDER'], os.path.basename(DAG_FILE))
        self.proc = subprocess.Popen([python, DRIVER, dag_file], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=env['AIRFLOW_HOME'])
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.tasks = json.loads(self.until(lambda line: line.startswith('READY '))[6:])

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.lines.put(line)
        self.lines.put(None)

    def until(self, match, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f'Airflow said nothing that matches in {timeout} s; '
                                     f'see {self.log.name}') from None
            if line is None:
                raise AssertionError(f'the Airflow driver ended (exit {self.proc.wait()}); '
                                     f'see {self.log.name}')
            if match(line):
                return line

    def start(self, day) -> None:
        self.proc.stdin.write(f'{day}\n')
        self.proc.stdin.flush()

    def result(self) -> dict:
        return json.loads(self.until(lambda line: line.startswith('RESULT '))[7:])

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope='module')
def airflow_home(tmp_path_factory):
    """A fresh AIRFLOW_HOME with the migrated sqlite database ``make airflow-venv`` made."""
    venv = airflow_venv()
    home = str(tmp_path_factory.mktemp('airflow_home'))
    shutil.copy(os.path.join(venv, 'home', 'airflow.db'), os.path.join(home, 'airflow.db'))
    os.mkdir(os.path.join(home, 'dags'))
    shutil.copy(DAG_FILE, os.path.join(home, 'dags'))
    return venv, home


def test_four_days_of_the_cycle_dag_in_airflow(gcs_emulator, airflow_home, tmp_path):
    venv, home = airflow_home
    b = Bucket('beamml-airflow-cycle')
    driver = Driver(os.path.join(venv, 'bin', 'python'), dag_environment(b, home),
                    str(tmp_path / 'airflow.log'))
    results = {}
    try:
        assert sorted(driver.tasks) == TASKS
        for day in DAYS:
            if day != LATE:
                b.land(day)
            driver.start(day)
            if day == LATE:   # the sensor's first poke finds no input (exit 4): land it then
                driver.until(lambda line: 'Return code matches retry code' in line)
                b.land(day)
            results[day] = driver.result()
        before = b.objects()
        driver.start(RERUN)   # a rerun of a complete day
        rerun = driver.result()
    finally:
        driver.close()
    log = open(tmp_path / 'airflow.log', encoding='utf-8').read()
    for day in DAYS:
        assert results[day]['state'] == 'success', (day, results[day])
        assert {t: s for t, (s, _) in results[day]['tasks'].items()} == dict.fromkeys(
            TASKS, 'success'), results[day]
    pokes = log.count(f'cycle wait --date {LATE}')   # the sensor's command, once a poke
    assert pokes >= 2, pokes
    assert rerun['state'] == 'success' and {s for s, _ in rerun['tasks'].values()} == {
        'success'}, rerun
    assert b.objects() == before   # the rerun changed nothing
    assert log.count(f'{RERUN} gate: done already: promote') == 1
    assert log.count(f'{RERUN} retrain: done already: skipped') == 1
    check_the_days(b)


STAND_IN = '''\
"""A stand-in for apache-airflow-providers-google's operator (not installed: it is large):
the constructor's signature the DAG uses, ``body`` templated as the real one's."""
from airflow.sdk import BaseOperator


class DataflowStartFlexTemplateOperator(BaseOperator):
    template_fields = ('body',)

    def __init__(self, *, body, project_id, location, wait_until_finished=None, **kwargs):
        super().__init__(**kwargs)
        self.body, self.project_id, self.location = body, project_id, location
        self.wait_until_finished = wait_until_finished

    def execute(self, context):
        raise RuntimeError('a stand-in: nothing is launched in the tests')
'''

INSPECT = '''\
import importlib.util, json, sys
from airflow.sdk.definitions.xcom_arg import XComArg
spec = importlib.util.spec_from_file_location('dag_under_test', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.dag
out = {}
for task_id, t in dag.task_dict.items():
    info = {'upstream': sorted(t.upstream_task_ids),
            'trigger_rule': getattr(t.trigger_rule, 'value', t.trigger_rule),
            'class': type(t).__name__, 'retries': t.retries}
    if hasattr(t, 'body'):
        launch = dict(t.body['launchParameter'])
        params = launch.pop('parameters')
        info['parameters_from'] = params.operator.task_id if isinstance(params, XComArg) else None
        info['launch'] = launch
        info['job'] = t.render_template(launch['jobName'], {'ds_nodash': '20261103'})
        info['project_location_wait'] = [t.project_id, t.location, t.wait_until_finished]
    out[task_id] = info
print('GRAPH ' + json.dumps(out))
'''


def test_the_dataflow_mode_parses_in_airflow_with_its_launches(airflow_home, tmp_path):
    """BEAMML_MODE=dataflow in real Airflow (the Google provider's operator stood in for):
    the task graph, the trigger rules that let a skipped launch (a complete step) not skip
    the next step, and the launch requests: the templates' specs, an environment the API
    takes, the parameters from the step's plan (beamml's, tests/test_cycle_launch.py)."""
    from test_templates import ENVIRONMENT
    venv, home = airflow_home
    operators = tmp_path / 'stand_in' / 'airflow' / 'providers' / 'google' / 'cloud' / 'operators'
    operators.mkdir(parents=True)
    (operators / 'dataflow.py').write_text(STAND_IN)
    env = {**os.environ, 'AIRFLOW_HOME': home, 'AIRFLOW__CORE__LOAD_EXAMPLES': 'False',
           'PYTHONPATH': str(tmp_path / 'stand_in'), 'BEAMML_MODE': 'dataflow',
           'BEAMML_TEMPLATES': 'gs://b/templates', 'BEAMML_TEMP_LOCATION': 'gs://b/tmp',
           'BEAMML_PROJECT': 'p', 'BEAMML_REGION': 'r'}
    out = subprocess.run([os.path.join(venv, 'bin', 'python'), '-c', INSPECT, DAG_FILE],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    graph = json.loads(next(line for line in out.stdout.splitlines()
                            if line.startswith('GRAPH '))[6:])
    order = ['wait', 'assign_plan', 'assign', 'gate', 'monitor_plan', 'monitor', 'retrain']
    assert sorted(graph) == sorted(order)
    assert [graph[t]['upstream'] for t in order] == [[]] + [[t] for t in order[:-1]]
    assert {t: graph[t]['trigger_rule'] for t in order} == {
        **dict.fromkeys(order, 'all_success'), 'gate': 'none_failed', 'retrain': 'none_failed'}
    assert graph['wait']['class'] == 'BashSensor' and graph['wait']['retries'] == 0
    for step in ('assign', 'monitor'):
        t = graph[step]
        assert t['class'] == 'DataflowStartFlexTemplateOperator'
        assert t['parameters_from'] == f'{step}_plan'
        assert t['project_location_wait'] == ['p', 'r', True]
        assert t['launch']['containerSpecGcsPath'] == f'gs://b/templates/{step}.json'
        assert os.path.exists(os.path.join(ROOT, 'configs', 'templates', f'{step}.json'))
        assert set(t['launch']['environment']) <= ENVIRONMENT
        assert t['launch']['environment']['tempLocation'] == 'gs://b/tmp'
        assert t['job'] == f'beamml-cycle-{step}-20261103'
