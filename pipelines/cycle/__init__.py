"""The daily cycle: assign, monitor, retrain, shadow, gate and promote, one idempotent step at a time.

    beamml cycle day --date D --input 'gs://B/incoming/{date}/*.parquet' \\
        --model gs://B/models --work gs://B/cycle --monitor_config monitor.yaml --gate gate.yaml
    beamml cycle STEP --date D ...      (STEP: wait, assign, gate, monitor, retrain)
    beamml cycle assign|monitor --date D ... --template_parameters   (a Flex Template launch)
    beamml cycle status --work gs://B/cycle [--report timeline.html]
    beamml cycle rollback --model gs://B/models [--to VERSION]

``day`` runs the steps of :mod:`beamml.pipelines.cycle.steps` in order (an orchestrator
runs one step per task instead); each writes its decision under ``WORK/D/`` and does
nothing when that is there already, so a rerun or a retry of a step or of a day is
safe. A candidate trained on day D is shadowed and judged by the gate on day D+1's
traffic, and promoted (``LATEST`` moved, ``MODEL/ROLLBACK`` written first) when it
passes; the day after uses what ``LATEST`` says. ``rollback`` points ``LATEST`` back
(see :mod:`beamml.pipelines.cycle.rollback`). Flags the cycle does not know (Beam's:
``--runner``, ``--project``, ...) go to the day's assign and monitor; a candidate is
trained on the local runner. See docs/cycle.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from beamml.pipelines._platform import cli, runs
from beamml.pipelines._platform.main import main_wrapper
from beamml.pipelines._platform.values import non_negative_int, seconds
from beamml.pipelines.cycle.files import TIMELINE_DAYS
from beamml.transforms.core.errors import BeammlError

ACTIONS = ('day', 'wait', 'assign', 'gate', 'monitor', 'retrain', 'status', 'rollback')


def parser():
    p = cli._Parser(prog='beamml cycle', description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog='STEP is one of: ' + ', '.join(ACTIONS) + '. Any Beam pipeline '
                           'option (--runner, --project, --region, --temp_location, ...) is '
                           "passed to the day's assign and monitor (a candidate is trained "
                           'on the local runner).')
    p.add_argument('step', choices=ACTIONS, metavar='STEP',
                   help='day (every step of the day in order), one of its steps (wait, '
                        'assign, gate, monitor, retrain), status, or rollback')
    p.add_argument('--date', type=runs.run_date, default=None,
                   help='the day: YYYY-MM-DD, today or yesterday (UTC); every step but '
                        'status and rollback needs it (status --report: the last day of '
                        'the timeline)')
    p.add_argument('--input', default=None,
                   help="the day's points, with a {date} placeholder "
                        "(e.g. 'gs://B/incoming/{date}/*.parquet')")
    p.add_argument('--model', default=None, metavar='DIR',
                   help='the model directory (its LATEST is production; candidates are '
                        'saved beside it)')
    p.add_argument('--work', default=None, metavar='DIR',
                   help='the root of the per-day folders (WORK/YYYY-MM-DD/: assign/, '
                        'gate.json, monitor/, retrain.json); local or gs://')
    p.add_argument('--monitor_config', default=None, metavar='YAML',
                   help='the monitoring config: thresholds, retraining rules and '
                        'retrain.input (the window a candidate is trained on)')
    p.add_argument('--gate', default=None, metavar='YAML',
                   help='the promote/keep thresholds a candidate must pass on the next '
                        "day's traffic (without it no candidate is shadowed)")
    p.add_argument('--input_ready_marker', default=None, metavar='NAME',
                   help='a file that says the day\'s input is complete (e.g. _READY), '
                        'waited for by wait and assign')
    p.add_argument('--wait_for_input', type=seconds, default=0.0, metavar='SECONDS',
                   help='poll up to SECONDS for the input (default 0: look once; exit 4 '
                        'when it is not there)')
    p.add_argument('--report', default=None, metavar='PATH',
                   help='status: also write the timeline of the last --timeline_days days '
                        '(up to --date, default the last day under --work) as an HTML page '
                        'at PATH (local or gs://; outside --work, and replacing only a page '
                        'status --report wrote)')
    p.add_argument('--timeline_days', type=non_negative_int, default=TIMELINE_DAYS, metavar='N',
                   help='the days the timeline covers: in the day\'s page WORK/D/report.html '
                        '(the monitor step writes it) and in status --report (default '
                        '%(default)s; 0: no day\'s page)')
    p.add_argument('--template_parameters', action='store_true',
                   help='assign, monitor: print the Flex Template launch of the step for the '
                        'day (one JSON line: template, parameters, complete) and run nothing '
                        '(for an orchestrator that launches the job itself)')
    p.add_argument('--to', default=None, metavar='VERSION',
                   help='rollback: the version LATEST goes to (default: the one the last '
                        'promotion replaced, from MODEL/ROLLBACK)')
    return p


_NEEDS = {'status': ('work',), 'rollback': ('model',)}
_DAY_FLAGS = ('date', 'input', 'model', 'work')


def run(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parser().parse_known_args(argv)
    needed = _NEEDS.get(args.step, _DAY_FLAGS)
    missing = [f'--{n}' for n in needed if getattr(args, n) is None]
    if missing:
        raise BeammlError(f'cycle {args.step} needs {", ".join(missing)} (see beamml cycle '
                          '--help)')
    if os.environ.get('STORAGE_EMULATOR_HOST'):   # as every pipeline's parse_args does
        from beamml.pipelines._platform.runners import use_anonymous_storage
        use_anonymous_storage()
    if args.template_parameters and args.step not in ('assign', 'monitor'):
        raise BeammlError(f'--template_parameters goes with assign or monitor (the steps that '
                          f'run as a Flex Template), not {args.step}')
    if args.step == 'status':
        from beamml.pipelines.cycle.status import show
        return show(args.work, args.report, args.date, args.timeline_days)
    if args.step == 'rollback':
        from beamml.pipelines.cycle.rollback import rollback
        return rollback(args.model, args.to)
    from beamml.pipelines.cycle import steps
    if '{date' not in args.input:
        raise BeammlError(f'--input {args.input} has no {{date}} placeholder: the cycle reads '
                          "each day's own input")
    c = steps.Cycle(args.input, args.model, args.work, args.monitor_config, args.gate,
                    args.input_ready_marker, args.wait_for_input, tuple(beam_args),
                    args.timeline_days)
    if args.template_parameters:
        from beamml.pipelines.cycle import launch
        return launch.show(c, args.date, args.step)
    if args.step == 'day':
        return steps.day(c, args.date)
    return steps.run_step(c, args.date, args.step)


if __name__ == '__main__':
    sys.exit(main_wrapper(run, prog='beamml cycle'))
