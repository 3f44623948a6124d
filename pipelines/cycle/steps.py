"""The steps of the daily cycle: each one idempotent per day, each decision a file.

For day ``D`` (``WORK/D/`` is the day's folder; ``MODEL`` a model directory):

=========  =====================================================  ======================
step       what it does                                           what it leaves
=========  =====================================================  ======================
wait       the day's input (and ready marker) is there, or exit 4  nothing
assign     ``beamml assign`` with ``LATEST``; when day D-1 trained  ``assign/`` (committed)
           a candidate, the same pass shadows it and the gate
           judges it on D's traffic (``--shadow_model --gate``)
gate       promote the candidate when the gate passed and          ``gate.json``
           ``LATEST`` is still the model it was compared with
           (``MODEL/ROLLBACK`` first), else keep; say why
monitor    ``beamml monitor`` of D with the model assign used,      ``monitor/`` (committed),
           the earlier days' ``monitor/`` as the rules' history;   ``report.html`` and
           then the day's page: monitor's report and the cycle's   ``timeline.json``
           timeline (``monitor/`` is not written after its commit)
retrain    when ``monitor/decision.json`` says retrain and         ``retrain.json``
           ``LATEST`` did not move today: a candidate version
           (``--no_latest``) on the config's ``retrain.input``
=========  =====================================================  ======================

A step whose file (or committed folder) is there does nothing and says so, so a rerun
or an orchestrator's retry of any step, or of the whole day, is safe; a failed attempt
of a step (:func:`run_step`; not "retry later", exit 4 or 5) is appended to the day's
``failures.json``. The steps run the pipelines in this process (``run(argv)``), with
the Beam flags given to the cycle.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging

from beamml.pipelines._platform import inputs, runs
from beamml.pipelines.cycle.files import (ASSIGN, DAY_REPORT, FAILURES_FILE,  # noqa: F401
                                          GATE_FILE, MONITOR, RETRAIN_FILE, SUCCESS,
                                          TIMELINE_DAYS)
from beamml.transforms.core.documents import exists, is_remote, join, read_json, write_json
from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.model import CentroidModel, latest_version, list_versions

LOG = logging.getLogger('beamml')

#: the steps of one day, in the order ``day`` runs them
STEPS = ('wait', 'assign', 'gate', 'monitor', 'retrain')
#: exit codes that say "retry later" (no input yet, another run holds the lock): not failures
RETRY_LATER = (4, 5)


@dataclasses.dataclass(frozen=True)
class Cycle:
    """Where the cycle reads and writes; ``input`` holds ``{date}`` (or
    ``{date:FORMAT}``), ``work`` is the root of the per-day folders."""
    input: str
    model: str
    work: str
    monitor_config: str | None = None
    gate: str | None = None
    input_ready_marker: str | None = None
    wait_for_input: float = 0.0
    beam_args: tuple[str, ...] = ()
    timeline_days: int = TIMELINE_DAYS

    def __post_init__(self):
        if not is_remote(self.work):   # the monitor history compares absolute paths
            import os
            object.__setattr__(self, 'work', os.path.abspath(self.work))

    def day(self, date: dt.date, *parts: str) -> str:
        return join(self.work, date.isoformat(), *parts)

    def folder(self, date: dt.date, name: str) -> str:
        return self.day(date, name) + '/'

    def filled(self, date: dt.date, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        return runs.PLACEHOLDER.sub(lambda m: date.strftime(m.group(1) or '%Y-%m-%d'),
                                    pattern)


def _success(folder: str) -> dict | None:
    path = folder + SUCCESS
    return read_json(path) if exists(path) else None


def used_version(c: Cycle, date: dt.date) -> str:
    """The model version the day's committed assign used (its ``_SUCCESS``)."""
    done = _success(c.folder(date, ASSIGN))
    if done is None:
        raise BeammlError(f'{date}: {c.folder(date, ASSIGN)} has no {SUCCESS}: run the '
                          'assign step of the day first')
    return done['model']['version']


def _say(date: dt.date, step: str, text: str) -> None:
    print(f'{date} {step}: {text}')


# ----------------------------------------------------------------------------- wait

def wait(c: Cycle, date: dt.date) -> dict:
    """The day's input files (and ready marker) are there; NoInputError (exit 4) when
    they are not within ``wait_for_input`` seconds."""
    args = argparse.Namespace(input=c.filled(date, c.input),
                              input_ready_marker=c.filled(date, c.input_ready_marker),
                              wait_for_input=c.wait_for_input)
    files = inputs.wait_for_input(args)
    _say(date, 'wait', f'{len(files)} input file(s) match {args.input}')
    return {'files': len(files)}


# ----------------------------------------------------------------------------- assign

def pending_candidate(c: Cycle, date: dt.date) -> str | None:
    """The candidate version day D-1 trained (its ``retrain.json``), which day D shadows."""
    path = c.day(date - dt.timedelta(days=1), RETRAIN_FILE)
    doc = read_json(path) if exists(path) else {}
    return doc.get('candidate_version') if doc.get('status') == 'trained' else None


def assign_argv(c: Cycle, date: dt.date) -> list[str]:
    """The day's ``beamml assign`` flags (without Beam's): ``LATEST``, and D-1's candidate
    in shadow with the gate when there is one (also what a Flex Template launch passes:
    :mod:`beamml.pipelines.cycle.launch`)."""
    argv = ['--input', c.input, '--model', c.model, '--output', c.folder(date, ASSIGN),
            '--date', date.isoformat()]
    if c.input_ready_marker:
        argv += ['--input_ready_marker', c.input_ready_marker]
    if c.wait_for_input:
        argv += ['--wait_for_input', str(c.wait_for_input)]
    candidate = pending_candidate(c, date)
    if candidate and c.gate:
        argv += ['--shadow_model', join(c.model, candidate), '--gate', c.gate]
    return argv


def assign(c: Cycle, date: dt.date) -> dict:
    """``beamml assign`` of the day with ``LATEST``, shadowing D-1's candidate."""
    from beamml.pipelines import assign as assign_cmd
    out = c.folder(date, ASSIGN)
    candidate = pending_candidate(c, date)
    assign_cmd.run(assign_argv(c, date) + list(c.beam_args))
    done = _success(out)
    version = done['model']['version']
    _say(date, 'assign', f'model {version}, {done["counts"]["records_ok"]} point(s)'
         + (f'; shadow {candidate}' if candidate and c.gate else ''))
    return {'model_version': version, 'candidate_version': candidate}


# ----------------------------------------------------------------------------- gate

def gate(c: Cycle, date: dt.date) -> dict:
    """Promote or keep the candidate the day's assign shadowed; ``gate.json`` says which
    and why (``decision: none`` when nothing was shadowed)."""
    path = c.day(date, GATE_FILE)
    if exists(path):
        doc = read_json(path)
        _say(date, 'gate', f'done already: {doc["decision"]} ({doc["reason"]}); {path}')
        return doc
    used = used_version(c, date)
    decision_file = c.folder(date, ASSIGN) + 'part-decision.json'
    if not exists(decision_file):
        doc = {'decision': 'none', 'reason': 'no candidate was shadowed today',
               'production_version': used, 'promoted': False}
    else:
        doc = _decide(c, read_json(decision_file), decision_file)
    doc.update(date=date.isoformat(), latest=latest_version(c.model))
    write_json(path, doc, indent=1)
    _say(date, 'gate', f'{doc["decision"]} ({doc["reason"]})'
         + (f'; LATEST {doc["production_version"]} -> {doc["candidate_version"]}'
            if doc['promoted'] else ''))
    return doc


def _decide(c: Cycle, shadow: dict, decision_file: str) -> dict:
    from beamml.pipelines.assign import deploy
    production, candidate = shadow['production_version'], shadow['candidate_version']
    doc = {'production_version': production, 'candidate_version': candidate,
           'decision_file': decision_file, 'checks': shadow['checks'], 'promoted': False}
    if shadow['decision'] != 'promote':
        return {**doc, 'decision': 'keep', 'reason': shadow['reason']}   # failed: <checks>
    now = latest_version(c.model)
    if now == candidate:   # a retry after the move: ROLLBACK and LATEST are written
        return {**doc, 'decision': 'promote', 'promoted': True,
                'reason': 'every threshold passed (promoted by an earlier attempt)'}
    if now != production:
        return {**doc, 'decision': 'keep', 'reason': f'the gate passed but LATEST moved from '
                f'{production} to {now} since the shadow run: not promoted'}
    other = CentroidModel.load(shadow['candidate_path'])
    plan = deploy.DeployPlan('shadow', CentroidModel.load(shadow['production_path']), other,
                             promote_on_pass=True)
    plan.previous_version = production   # what the comparison was against
    done = deploy.promote(decision_file[:-len('-decision.json')], plan, decision_file)
    return {**doc, 'decision': 'promote', 'promoted': bool(done.get('promoted')),
            'reason': shadow['reason'], 'rollback_note': done.get('rollback_note')}


# ----------------------------------------------------------------------------- monitor

def monitor_argv(c: Cycle, date: dt.date) -> list[str]:
    """The day's ``beamml monitor`` flags (without Beam's): the version the day's assign
    used, the earlier days' ``monitor/`` as the rules' history."""
    argv = ['--input', c.input, '--model', join(c.model, used_version(c, date)),
            '--output', c.folder(date, MONITOR), '--date', date.isoformat(),
            '--history', join(c.work, '*', MONITOR) + '/']
    if c.monitor_config:
        argv += ['--monitor_config', c.monitor_config]
    return argv


def monitor(c: Cycle, date: dt.date) -> dict:
    """``beamml monitor`` of the day with the model its assign used; alarms are results
    here (the decision acts on them), not a failure of the step."""
    from beamml.pipelines import monitor as monitor_cmd
    out = c.folder(date, MONITOR)
    ran = not exists(out + SUCCESS)
    try:
        monitor_cmd.run(monitor_argv(c, date) + list(c.beam_args))
    except monitor_cmd.AlarmError:
        pass
    # the day's page: monitor's report with the cycle's timeline (again only when monitor
    # ran now or the page is missing, so a rerun of a complete day writes nothing)
    if c.timeline_days and (ran or not exists(c.day(date, DAY_REPORT))):
        from beamml.pipelines.cycle.timeline import write_day_report
        write_day_report(c.work, date, out, c.timeline_days)
    alarms = read_json(out + 'drift.json')['alarms']
    decision = read_json(out + 'decision.json')
    _say(date, 'monitor', f'{len(alarms)} alarm(s); retrain: {str(decision["retrain"]).lower()}'
         + (f' (rules {", ".join(decision["fired"])})' if decision['fired'] else ''))
    return {'alarms': len(alarms), 'retrain': decision['retrain'], 'fired': decision['fired']}


# ----------------------------------------------------------------------------- retrain

def retrain(c: Cycle, date: dt.date) -> dict:
    """A candidate version when the day's decision says retrain and ``LATEST`` is still
    the model the day used; ``retrain.json`` records it (or why not)."""
    path = c.day(date, RETRAIN_FILE)
    prior = read_json(path) if exists(path) else None
    if prior is not None and prior['status'] != 'training':
        _say(date, 'retrain', f'done already: {_retrain_text(prior)}; {path}')
        return prior
    used = used_version(c, date)
    decision_path = c.folder(date, MONITOR) + 'decision.json'
    if not exists(c.folder(date, MONITOR) + SUCCESS):
        raise BeammlError(f'{date}: {c.folder(date, MONITOR)} has no {SUCCESS}: run the '
                          'monitor step of the day first')
    decision = read_json(decision_path)
    latest = latest_version(c.model)
    base = {'date': date.isoformat(), 'production_version': used,
            'fired': decision['fired'], 'decision_file': decision_path}
    if not decision['retrain']:
        doc = {**base, 'status': 'skipped', 'reason': 'no retraining rule fired'}
    elif latest != used:
        doc = {**base, 'status': 'skipped', 'reason': f'LATEST moved from {used} to {latest} '
               f'today, by a promotion or a rollback: the next days monitor {latest}'}
    else:
        doc = _train(c, date, used, decision, base, prior)
    write_json(path, doc, indent=1)
    _say(date, 'retrain', _retrain_text(doc))
    return doc


def _retrain_text(doc: dict) -> str:
    if doc['status'] == 'trained':
        return (f'candidate {doc["candidate_version"]} trained on {doc["window"]} '
                '(LATEST not moved)')
    return f'{doc["status"]} ({doc["reason"]})'


def _train(c: Cycle, date: dt.date, used: str, decision: dict, base: dict,
           prior: dict | None) -> dict:
    """``beamml monitor --retrain``'s training (``beamml kmeans --no_latest`` from the
    model's centres). ``retrain.json`` says ``training`` (and the versions there were)
    before it starts, so a retry adopts a candidate a killed attempt completed."""
    from beamml.pipelines import monitor as monitor_cmd
    from beamml.transforms.monitoring import load_monitor_config
    config = load_monitor_config(c.monitor_config)
    args = argparse.Namespace(date=date, input_format=None, id_column=None,
                              feature_columns=None)
    window = monitor_cmd.retrain_input(args, config)
    if not window:
        raise BeammlError(f'{date}: the monitoring config {c.monitor_config} has no '
                          'retrain.input (the data window a candidate is trained on)')
    before = prior['versions_before'] if prior else list_versions(c.model)
    if prior is None:
        write_json(c.day(date, RETRAIN_FILE), {**base, 'status': 'training', 'window': window,
                                               'versions_before': before}, indent=1)
    model = _adopt(c.model, before, window)
    if model is None:
        ctx = {'model': CentroidModel.load(join(c.model, used)), 'config': config,
               'retrain_input': window}
        model = monitor_cmd.retrain(args, ctx, decision)
    return {**base, 'status': 'trained', 'reason': 'rules fired: ' + ', '.join(
        decision['fired']), 'window': window, 'candidate_version': model.version,
        'candidate_path': model.path}


def _adopt(model_dir: str, before: list[str], window: str) -> CentroidModel | None:
    """A complete version trained on ``window`` since ``before`` (a killed attempt's)."""
    for version in sorted(set(list_versions(model_dir)) - set(before), reverse=True):
        model = CentroidModel.load(join(model_dir, version))
        if model.input_pattern == window:
            return model
    return None


# ----------------------------------------------------------------------------- a day

def day(c: Cycle, date: dt.date) -> dict:
    """Every step of the day in order; the first that fails stops the day (its error)."""
    return {name: run_step(c, date, name) for name in STEPS}


def run_step(c: Cycle, date: dt.date, name: str) -> dict:
    """One step of the day; a failure (any error but "retry later", exit 4 or 5) is
    appended to ``WORK/D/failures.json`` before it goes on up, so the day's timeline
    shows it after a rerun completed the day."""
    try:
        return STEP_FUNCTIONS[name](c, date)
    except Exception as e:
        code = int(getattr(e, 'exit_code', 2 if isinstance(e, BeammlError) else 1))
        if code not in RETRY_LATER:
            _record_failure(c, date, name, e, code)
        raise


def _record_failure(c: Cycle, date: dt.date, step: str, error: Exception, code: int) -> None:
    """Best effort: a failure to record never hides the step's own error."""
    path = c.day(date, FAILURES_FILE)
    text = first_line(error)[:300]
    try:
        doc = read_json(path) if exists(path) else {'failures': []}
        doc['failures'].append({
            'step': step, 'exit_code': code, 'error': f'{type(error).__name__}: {text}',
            'at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')})
        write_json(path, doc, indent=1)
    except Exception as e:   # (storage down: the error of the step is what matters)
        LOG.warning('%s %s: its failure was not recorded in %s (%s: %s)', date, step, path,
                    type(e).__name__, first_line(e))


STEP_FUNCTIONS = {'wait': wait, 'assign': assign, 'gate': gate, 'monitor': monitor,
                  'retrain': retrain}
