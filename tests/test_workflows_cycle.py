"""The Cloud Workflows definition of the daily cycle (configs/workflows/beamml_daily_cycle.yaml)
and its Cloud Scheduler job (configs/scheduler/cycle_daily.json) over the four days of
tests/cycle_story.py on the Cloud Storage emulator.

There is no Workflows emulator: tests/workflows_interpreter.py interprets exactly the
syntax the file uses (and fails on any other). The Cloud Run job's execution
(``googleapis.run.v2.projects.locations.jobs.run``) runs the arguments the workflow gives
the container (``beamml ...``) in this process, on the local runner; a non-zero exit is
the connector's error (a failed execution says no more than that it failed). The days run
as Cloud Scheduler starts them (the scheduler's argument, ``sys.now()`` just after
midnight of the next day); the rerun of day 3 passes ``{"date": ...}``. Then a day whose
input never lands: the wait is retried 36 times, 10 minutes apart, and the workflow fails
without running a later step.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest
import yaml
from cycle_story import DAYS, LATE, RERUN, Bucket, check_the_days
from inprocess import run_beamml
from workflows_interpreter import Interpreter, WorkflowError

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, 'configs', 'workflows', 'beamml_daily_cycle.yaml')
SCHEDULER = os.path.join(ROOT, 'configs', 'scheduler', 'cycle_daily.json')
JOB = 'projects/p/locations/r/jobs/beamml-cycle'
STEPS = ['wait', 'assign', 'gate', 'monitor', 'retrain']


def definition(b: Bucket) -> dict:
    """The workflow with its settings (the ``cfg`` the file says to fill in) the test's."""
    with open(WORKFLOW, encoding='utf-8') as f:
        doc = yaml.safe_load(f)
    init = doc['main']['steps'][0]['init']['assign'][0]['cfg']
    ours = {'job': JOB, 'input': f'{b.url}/incoming/{{date}}/*.parquet',
            'model': f'{b.url}/models', 'work': f'{b.url}/cycle',
            'monitor_config': f'{b.url}/monitor.yaml', 'gate': f'{b.url}/gate.yaml',
            'wait_seconds': '0'}   # beamml looks once; the workflow's retries wait
    assert set(init) == set(ours) and init['wait_seconds'] == '600'
    assert all('BUCKET' in init[k] or 'PROJECT' in init[k] for k in ours if k != 'wait_seconds')
    doc['main']['steps'][0]['init']['assign'][0]['cfg'] = ours
    return doc


class CloudRun:
    """``jobs.run`` of the beamml image: ``beamml ARGS`` here; what each call ran."""

    def __init__(self):
        self.calls: list[tuple[str, str, int]] = []

    def run(self, request: dict) -> dict:
        assert set(request) == {'name', 'body'} and request['name'] == JOB
        assert set(request['body']) == {'overrides'}
        (container,) = request['body']['overrides']['containerOverrides']
        args = container['args']
        assert set(container) == {'args'} and all(isinstance(a, str) for a in args), args
        assert args[:1] == ['cycle'] and args[2:4] == ['--date', args[3]]
        out = run_beamml(*args)
        self.calls.append((args[1], args[3], out.returncode))
        if out.returncode:
            raise WorkflowError({'message': f'execution failed: {out.stderr.strip()[-300:]}',
                                 'tags': ['OperationError']})
        return {'name': f'{JOB}/executions/e{len(self.calls)}', 'succeededCount': 1,
                'failedCount': 0}


def scheduled_argument() -> dict:
    """The argument Cloud Scheduler's body gives each execution."""
    with open(SCHEDULER, encoding='utf-8') as f:
        job = json.load(f)
    target = job['httpTarget']
    assert target['httpMethod'] == 'POST' and target['uri'].endswith(
        '/workflows/beamml-daily-cycle/executions')
    assert target['oauthToken']['serviceAccountEmail']
    assert job['timeZone'] == 'Etc/UTC'
    return json.loads(json.loads(base64.b64decode(target['body']))['argument'])


def test_the_workflow_runs_the_days_as_the_scheduler_starts_them(gcs_emulator):
    b = Bucket('beamml-workflows-cycle')
    job, sleeps, clock = CloudRun(), [], {}

    def sleep(seconds):
        sleeps.append((clock['day'], seconds))
        if clock['day'] == LATE and len([s for s in sleeps if s[0] == LATE]) == 1:
            b.land(LATE)   # the input lands while the workflow waits

    def interpreter():
        return Interpreter(definition(b), {'googleapis.run.v2.projects.locations.jobs.run':
                                           job.run},
                           now=lambda: dt.datetime.combine(
                               clock['day'] + dt.timedelta(days=1), dt.time(0, 30),
                               dt.timezone.utc).timestamp(),
                           sleep=sleep)

    argument = scheduled_argument()
    assert 'date' not in argument   # each day's execution covers yesterday (UTC)
    for day in DAYS:
        if day != LATE:
            b.land(day)
        clock['day'] = day
        assert interpreter().run(argument) == str(day)
    assert [(s, d) for s, d, _ in job.calls] == [
        (s, str(day)) for day in DAYS for s in (['wait'] * (2 if day == LATE else 1) + STEPS[1:])]
    assert [rc for _, _, rc in job.calls if rc] == [4]   # the late day's first wait
    assert sleeps == [(LATE, 600)]

    before, calls = b.objects(), len(job.calls)
    clock['day'] = DAYS[-1]   # a rerun of day 3, days later
    assert interpreter().run({'date': str(RERUN)}) == str(RERUN)
    assert [(s, d, rc) for s, d, rc in job.calls[calls:]] == [(s, str(RERUN), 0) for s in STEPS]
    assert b.objects() == before
    check_the_days(b)

    # a day whose input never lands: the wait is retried 36 times, then the day stops
    calls, sleeps[:] = len(job.calls), []
    clock['day'] = dt.date(2026, 11, 5)
    with pytest.raises(WorkflowError) as failed:
        interpreter().run(argument)
    assert failed.value.value['tags'] == ['OperationError']
    assert job.calls[calls:] == [('wait', '2026-11-05', 4)] * 37
    assert sleeps == [(dt.date(2026, 11, 5), 600)] * 36
    assert not [k for k in b.objects() if k.startswith('cycle/2026-11-05')]


def test_the_interpreter_refuses_syntax_it_does_not_know():
    """So the test above cannot pass on a file using more than the interpreter knows."""
    run = lambda doc, args=None: Interpreter(doc, {}, now=lambda: 0.0,  # noqa: E731
                                             sleep=lambda s: None).run(args or {})
    steps = lambda *s: {'main': {'params': ['args'], 'steps': list(s)}}  # noqa: E731
    assert run(steps({'a': {'assign': [{'x': '${1 + 2}'}]}},
                     {'b': {'return': '${"d" + text.substring("2026-11-03T00", 0, 10)}'}})
               ) == 'd2026-11-03'
    assert run(steps({'a': {'return': '${default(map.get(args, "date"), "none")}'}}),
               {'date': 'x'}) == 'x'
    assert run(steps({'a': {'return': '${time.format(sys.now() + 86400)}'}})) == \
        '1970-01-02T00:00:00.000000Z'
    for bad in ({'a': {'for': {'value': 'v', 'in': [1], 'steps': []}}},
                {'a': {'assign': [{'x': '${keys(args)}'}]}},
                {'a': {'return': '${args[0]}'}},
                {'a': {'call': 'http.get', 'args': {'url': 'u'}}},
                {'a': {'return': 1, 'next': 'end'}},
                {'a': {'try': {'call': 'main'}, 'except': {'as': 'e', 'steps': []}}}):
        with pytest.raises(NotImplementedError):
            run(steps(bad))
    with pytest.raises(WorkflowError) as e:
        run(steps({'a': {'switch': [{'condition': '${1 != 2}', 'raise': 'stop'}]}},
                  {'b': {'return': 'not reached'}}))
    assert e.value.value == 'stop'
