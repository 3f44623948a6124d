"""Runs a DAG file's days with Airflow's ``dag.test()`` in the Airflow virtualenv
(``make e2e`` builds it), one day per line of standard input, for
tests/test_airflow_cycle.py.

    python tests/airflow_driver.py DAG_FILE        (AIRFLOW_HOME set, its database migrated)

Each input line is a date (``YYYY-MM-DD``); after that day's run it prints one line
``RESULT {"date": ..., "state": ..., "tasks": {task_id: [state, try_number]}}``. One
process for every day: Airflow builds its in-process execution API once (about 15 s of
CPU), not once per day as ``airflow dags test`` would. Not a test module (no ``test_``):
pytest runs it as a program with the Airflow virtualenv's Python.
"""
import datetime
import importlib.util
import json
import sys


def load(path):
    spec = importlib.util.spec_from_file_location('dag_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def task_states(dag_id, run_id):
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                  TaskInstance.run_id == run_id).all()
        return {ti.task_id: [str(getattr(ti.state, 'value', ti.state)), ti.try_number]
                for ti in rows}


def main(path):
    dag = load(path)
    print('READY ' + json.dumps(sorted(dag.task_dict)), flush=True)
    for line in sys.stdin:
        day = line.strip()
        if not day:
            continue
        when = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.timezone.utc)
        run = dag.test(logical_date=when)
        print('RESULT ' + json.dumps({'date': day, 'state': str(getattr(run.state, 'value',
                                                                        run.state)),
                                      'tasks': task_states(dag.dag_id, run.run_id)}), flush=True)


if __name__ == '__main__':
    main(sys.argv[1])
