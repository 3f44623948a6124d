"""``beamml assign``'s shadow, canary and promote/keep gate: flags, files, promotion.

The kernels, the comparison CombineFn and the gate are in
:mod:`beamml.transforms.deployment`; this module words their errors as flags, writes
``<output>-shadow.json`` and ``<output>-decision.json``, and, after a batch run has
committed, moves LATEST of the candidate's model directory when the gate passed
(``--promote_on_pass``), with ``<model dir>/ROLLBACK`` saying how to undo it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import posixpath

import apache_beam as beam

from beamml.pipelines._platform import streams
from beamml.pipelines._platform.runners import is_dry_run, is_launch_only
from beamml.transforms.deployment import ShadowComparisonFn, Gate
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import exists, join, read_json, write_json
from beamml.transforms.model import CentroidModel, latest_version, set_latest

LOG = logging.getLogger('beamml')
ROLLBACK_FILE = 'ROLLBACK'


def check_flags(args, options, is_streaming: bool) -> None:
    """The combinations of the deployment flags that cannot work, as one line each."""
    shadow, canary = args.shadow_model, args.canary_model
    fraction = args.canary_fraction
    if shadow and canary:
        raise BeammlError('--shadow_model and --canary_model cannot be combined: compare the '
                          'candidate in shadow first, then send it a canary share')
    if fraction is not None and not canary:
        raise BeammlError('--canary_fraction needs --canary_model (the model it sends '
                          'that share of the points to)')
    if canary and fraction is None:
        raise BeammlError('--canary_model needs --canary_fraction F (the share of ids, in '
                          '[0, 1], it assigns)')
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise BeammlError(f'--canary_fraction must be in [0, 1], got {fraction:g}')
    if args.gate and not shadow:
        raise BeammlError('--gate needs --shadow_model (it decides on the shadow comparison)')
    if args.promote_on_pass and not args.gate:
        raise BeammlError('--promote_on_pass needs --gate (the thresholds that must pass)')
    if args.promote_on_pass and is_streaming:
        raise BeammlError('--promote_on_pass works in batch only: a streaming run has no '
                          'end at which to decide (its shadow records carry the gate per '
                          'window)')
    if args.promote_on_pass and is_launch_only(options):
        raise BeammlError('--promote_on_pass cannot be used by a launch-only run '
                          '(BEAMML_LAUNCH_ONLY: the launcher does not wait for the job): '
                          'run the promotion from a launcher that waits')
    if args.promote_on_pass and is_dry_run(options):
        raise BeammlError('--promote_on_pass cannot be used with --dry_run (nothing runs)')


class DeployPlan:
    """What the graph and the launcher need of the deployment flags (picklable)."""

    def __init__(self, mode: str, production: CentroidModel, other: CentroidModel,
                 fraction: float = 0.0, gate: Gate | None = None,
                 gate_path: str | None = None, promote_on_pass: bool = False):
        self.mode, self.other, self.fraction = mode, other, float(fraction)
        self.production_version, self.production_path = production.version, production.path
        self.gate, self.gate_path, self.promote_on_pass = gate, gate_path, promote_on_pass
        self.candidate_dir = self.previous_version = None
        if promote_on_pass:
            self.candidate_dir = model_dir_of(other, '--shadow_model')
            self.previous_version = latest_version(self.candidate_dir)

    def versions(self) -> dict:
        return {'production_version': self.production_version,
                'production_path': self.production_path,
                'candidate_version': self.other.version, 'candidate_path': self.other.path}

    def comparison_document(self, report: dict) -> dict:
        return {**self.versions(), **report}


def model_dir_of(model: CentroidModel, flag: str) -> str:
    """The model directory a loaded version belongs to (``<dir>/<version>/model.json``
    with ``<dir>/LATEST``), or a one-line error."""
    vdir = posixpath.dirname(model.path or '')
    mdir = posixpath.dirname(vdir)
    if not model.version or posixpath.basename(vdir) != model.version or not exists(
            join(mdir, 'LATEST')):
        raise BeammlError(f'--promote_on_pass: {flag} {model.path} is not a version of a '
                          'model directory (<dir>/<version>/model.json beside <dir>/LATEST): '
                          'give the candidate as such a version directory')
    return mdir


def deployment_plan(args, model: CentroidModel, dimension: int) -> DeployPlan | None:
    """Load and check the second model of --shadow_model / --canary_model (None without)."""
    path = args.shadow_model or args.canary_model
    if not path:
        return None
    flag = '--shadow_model' if args.shadow_model else '--canary_model'
    other = CentroidModel.load(path)
    if other.d != model.d:
        raise BeammlError(f'{flag} {other.version} has d={other.d} features but --model '
                          f'{model.version} has d={model.d}: both models must have the '
                          'dimension of the data')
    other.check_dimension(dimension, f'the input {args.input}')
    if args.canary_model:
        if not other.version or not model.version or other.version == model.version:
            raise BeammlError(f'--canary_model version {other.version} must differ from '
                              f'--model version {model.version}: every row names the model '
                              'that assigned it')
        if args.all_distances and other.k != model.k:
            raise BeammlError(f'--all_distances with --canary_model: the models have k='
                              f'{model.k} and k={other.k}, so "distances" would have two '
                              'lengths; drop --all_distances')
        return DeployPlan('canary', model, other, args.canary_fraction)
    gate = Gate.load(args.gate) if args.gate else None
    return DeployPlan('shadow', model, other, gate=gate, gate_path=args.gate,
                      promote_on_pass=args.promote_on_pass)


def write_document(doc: dict, path: str) -> str:
    return write_json(path, doc, indent=1)


def write_decision(doc: dict, plan: DeployPlan, path: str) -> str:
    """``<output>-decision.json``: the gate's decision on the comparison ``doc``."""
    return write_json(path, decision_document(doc, plan), indent=1)


def decision_document(doc: dict, plan: DeployPlan) -> dict:
    return {**plan.gate.decide(doc), **plan.versions(), 'points': doc['points'],
            'gate': plan.gate.to_dict(), 'gate_path': plan.gate_path,
            'promote_on_pass': plan.promote_on_pass, 'candidate_model_dir': plan.candidate_dir,
            'previous_version': plan.previous_version, 'promoted': False}


def write_canary_summary(counts, model: CentroidModel, plan: DeployPlan, path: str) -> str:
    """The summary of a canary run: the production model's fields as without a canary
    (``cluster_sizes``: its rows), and ``models``: points and cluster sizes per model."""
    roles = (('production', model), ('canary', plan.other))
    models = [{'role': role, 'version': m.version, 'path': m.path, 'k': m.k,
               'points': int(sum(c)), 'cluster_sizes': c}
              for (role, m), c in zip(roles, counts)]
    return write_json(path, {'model_version': model.version, 'model_path': model.path,
                             'k': model.k, 'd': model.d,
                             'points': sum(m['points'] for m in models),
                             'cluster_sizes': counts[0], 'canary_fraction': plan.fraction,
                             'models': models})


def promote(output: str, plan: DeployPlan, decision_file: str) -> dict:
    """After the run committed: when the gate passed, point LATEST of the candidate's
    model directory at the candidate, after writing ``<model dir>/ROLLBACK`` (the previous
    version, and how to go back); record it in the decision file. Returns the decision."""
    decision = read_json(decision_file)
    if decision.get('decision') != 'promote':
        return decision
    mdir, candidate = plan.candidate_dir, plan.other.version
    now = latest_version(mdir)
    if now != plan.previous_version:
        raise BeammlError(f'not promoted: LATEST of {mdir} moved from {plan.previous_version} '
                          f'to {now} while the run ran; the gate passed ({decision_file}): '
                          'run again to decide against the new LATEST')
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')
    if now != candidate:
        write_json(join(mdir, ROLLBACK_FILE), {
            'promoted_version': candidate, 'previous_version': now, 'promoted_at': at,
            'decision': decision_file,
            'rollback': f"set_latest({mdir!r}, {now!r})"}, indent=1)
        set_latest(mdir, candidate)
    decision.update(promoted=True, promoted_at=at,
                    rollback_note=join(mdir, ROLLBACK_FILE) if now != candidate else None)
    write_json(decision_file, decision, indent=1)
    return decision


# ----------------------------------------------------------------------------- streaming

def _window_record(keyed, plan: DeployPlan, window=beam.DoFn.WindowParam,
                   pane=beam.DoFn.PaneInfoParam):
    (production, candidate), report = keyed
    record = {**streams.window_fields(window, pane), 'pane': int(pane.index),
              'production_version': production, 'candidate_version': candidate, **report}
    if plan.gate is not None:
        record['gate'] = plan.gate.decide(report)
    yield record


def write_streaming_shadow(shadow, args, plan: DeployPlan):
    """One comparison record per window, pane and pair of versions, to
    ``<output>-shadow-<start>-<end>-pane-<i>-<timing>.jsonl`` (and --output_topic)."""
    records = (shadow
               | 'CompareShadow' >> beam.CombinePerKey(ShadowComparisonFn())
               | 'ShadowWithWindow' >> beam.FlatMap(_window_record, plan))
    if args.output:   # files only: --output_topic carries the rows
        files_only = argparse.Namespace(**{**vars(args), 'output_topic': None})
        streams.write_records(records, files_only, prefix=f'{args.output}-shadow',
                                label='WriteShadow')
    return records
