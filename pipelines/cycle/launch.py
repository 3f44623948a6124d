"""A cycle step as a Flex Template launch: the parameters of the day's ``assign`` or
``monitor`` for an orchestrator that starts the job itself (Airflow's
``DataflowStartFlexTemplateOperator``, a Workflows call of ``flexTemplates.launch``).

    beamml cycle assign --date D ... --template_parameters

prints one JSON line and runs nothing::

    {"step": "assign", "template": "assign", "date": "D", "complete": false,
     "output": "WORK/D/assign/", "parameters": {"input": "...", "model": "...", ...}}

``parameters`` are the flags the step itself passes to the pipeline
(:func:`~beamml.pipelines.cycle.steps.assign_argv`, ``monitor_argv``) as the template's
``--name=value`` parameters, so the decisions stay beamml's: the candidate of day D-1 to
shadow with the gate, the model version the day's assign used. ``complete`` is true
when the step's output folder has its ``_SUCCESS`` already: the orchestrator then
launches nothing (the step is done; a launch would exit 0 without a job). Beam's flags
given to the cycle are not parameters: a launch's environment (workers, temp location,
service account) is the orchestrator's request.
"""
from __future__ import annotations

import datetime as dt
import json

from beamml.pipelines.cycle import steps
from beamml.transforms.core.documents import exists
from beamml.transforms.core.errors import BeammlError

#: the steps that run as a Flex Template, and the template each launches
TEMPLATE_STEPS = {'assign': 'assign', 'monitor': 'monitor'}
_ARGV = {'assign': steps.assign_argv, 'monitor': steps.monitor_argv}


def as_parameters(argv: list[str]) -> dict[str, str]:
    """``['--name', 'value', ...]`` as ``{'name': 'value'}`` (every flag of a step's argv
    takes a value)."""
    names, values = argv[0::2], argv[1::2]
    if len(names) != len(values) or not all(n.startswith('--') for n in names):
        raise ValueError(f'not --name value pairs: {argv}')
    return {n[2:]: str(v) for n, v in zip(names, values)}


def declared(template: str) -> set[str]:
    """The parameter names the template's metadata declares (its parser's flags)."""
    from beamml.pipelines._platform import templates
    return {a.dest for a in templates.parameter_actions(templates.templates()[template])}


def template_launch(c: steps.Cycle, date: dt.date, step: str) -> dict:
    """What an orchestrator launches for ``step`` of ``date`` (see the module's doc)."""
    if step not in TEMPLATE_STEPS:
        raise BeammlError(f'--template_parameters: the steps that run as a Flex Template are '
                          f'{" and ".join(TEMPLATE_STEPS)}; {step} runs where the cycle runs '
                          f'(beamml cycle {step})')
    output = c.folder(date, steps.ASSIGN if step == 'assign' else steps.MONITOR)
    parameters = as_parameters(_ARGV[step](c, date))
    unknown = sorted(set(parameters) - declared(TEMPLATE_STEPS[step]))
    if unknown:   # a flag the step passes that the template cannot take
        raise BeammlError(f'--template_parameters: the {TEMPLATE_STEPS[step]} template has no '
                          f'parameter {", ".join(unknown)}')
    return {'step': step, 'template': TEMPLATE_STEPS[step], 'date': date.isoformat(),
            'complete': exists(output + steps.SUCCESS), 'output': output,
            'parameters': parameters}


def show(c: steps.Cycle, date: dt.date, step: str) -> int:
    print(json.dumps(template_launch(c, date, step), sort_keys=True))
    return 0
