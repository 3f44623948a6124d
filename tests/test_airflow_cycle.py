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
