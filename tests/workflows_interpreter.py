"""A small interpreter of the subset of Cloud Workflows syntax that
configs/workflows/beamml_daily_cycle.yaml uses, for tests/test_workflows_cycle.py (there is
no Workflows emulator). Anything else fails loudly (NotImplementedError), so a change to
the file that uses more syntax than this knows cannot pass unnoticed.

Known: subworkflows with ``params`` and ``steps``; steps of one of the kinds ``assign``
(simple names), ``call`` (a subworkflow, or a connector the test gives) with ``args`` and
``result``, ``try`` + ``retry`` (``predicate`` a subworkflow, ``max_retries``,
``backoff``), ``switch`` (``condition`` with ``raise`` or ``return``), ``raise`` and
``return``; steps run in order (no ``next``). Expressions ``${...}``: literals, variables,
``a.b`` of a map, lists, ``+`` (strings, numbers), ``-``, comparisons, ``and`` / ``or`` /
``not``, and the functions in FUNCTIONS. The semantics are Workflows' documented ones:
an error a call raises is retried while the predicate says true and retries are left,
sleeping ``initial_delay`` then times ``multiplier`` up to ``max_delay``; an error not
caught ends the workflow with it.
"""
from __future__ import annotations

import ast
import datetime as dt
import re

_EXPR = re.compile(r'^\$\{(.*)\}$', re.S)


class WorkflowError(Exception):
    """An error raised in the workflow (``raise``, a failed connector call): its value."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


class _Return(Exception):
    def __init__(self, value):
        self.value = value


def _time_format(seconds, timezone='UTC'):
    if timezone != 'UTC':
        raise NotImplementedError(f'time.format with timezone {timezone}')
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%S.%fZ')


class Interpreter:
    def __init__(self, definition: dict, connectors: dict, now, sleep):
        self.subworkflows, self.connectors = definition, connectors
        self.now, self.sleep = now, sleep
        self.functions = {
            'default': lambda v, d: d if v is None else v,
            'map.get': lambda m, k: None if m is None else m.get(k),
            'text.substring': lambda s, a, b: s[a:b],
            'time.format': _time_format,
            'sys.now': lambda: self.now(),
        }
        for name, sub in definition.items():
            _only(sub, {'params', 'steps'}, f'subworkflow {name}')

    def run(self, args):
        """Runs ``main`` with ``args``: its return value, or WorkflowError."""
        return self.call('main', {'args': args})

    def call(self, name: str, args: dict):
        sub = self.subworkflows[name]
        params = sub.get('params', [])
        if set(args) != set(params):
            raise NotImplementedError(f'{name} takes {params}, called with {sorted(args)}')
        variables = dict(args)
        try:
            for step in sub['steps']:
                (label, body), = step.items()
                self.step(body, variables)
        except _Return as r:
            return r.value
        return None

    def step(self, body: dict, v: dict) -> None:
        kind = next((k for k in ('assign', 'call', 'try', 'switch', 'raise', 'return')
                     if k in body), None)
        allowed = {'assign': {'assign'}, 'call': {'call', 'args', 'result'},
                   'try': {'try', 'retry'}, 'switch': {'switch'}, 'raise': {'raise'},
                   'return': {'return'}}.get(kind)
        if allowed is None:
            raise NotImplementedError(f'step kind not supported: {sorted(body)}')
        _only(body, allowed, f'a {kind} step')
        if kind == 'assign':
            for item in body['assign']:
                (name, value), = item.items()
                if not re.fullmatch(r'\w+', name):
                    raise NotImplementedError(f'assignment to {name}')
                v[name] = self.value(value, v)
        elif kind == 'call':
            result = self.invoke(body['call'], self.value(body.get('args', {}), v))
            if 'result' in body:
                v[body['result']] = result
        elif kind == 'try':
            self.retrying(body['try'], body['retry'], v)
        elif kind == 'switch':
            for case in body['switch']:
                _only(case, {'condition', 'raise', 'return'}, 'a switch case')
                if self.value(case['condition'], v) is True:
                    rest = {k: c for k, c in case.items() if k != 'condition'}
                    if len(rest) != 1:
                        raise NotImplementedError(f'a switch case with {sorted(rest)}')
                    self.step(rest, v)
                    break
        elif kind == 'raise':
            raise WorkflowError(self.value(body['raise'], v))
        else:
            raise _Return(self.value(body['return'], v))

    def invoke(self, name: str, args: dict):
        if name in self.subworkflows:
            return self.call(name, args)
        if name in self.connectors:
            return self.connectors[name](args)
        raise NotImplementedError(f'call of {name}')

    def retrying(self, body: dict, policy: dict, v: dict) -> None:
        _only(policy, {'predicate', 'max_retries', 'backoff'}, 'a retry policy')
        _only(policy['backoff'], {'initial_delay', 'max_delay', 'multiplier'}, 'a backoff')
        predicate = _EXPR.match(policy['predicate'])
        if not predicate or predicate.group(1).strip() not in self.subworkflows:
            raise NotImplementedError(f'retry predicate {policy["predicate"]}')
        delay, retries = policy['backoff']['initial_delay'], 0
        while True:
            try:
                return self.step(body, v)
            except WorkflowError as e:
                if retries >= policy['max_retries'] or self.call(
                        predicate.group(1).strip(), {'e': e.value}) is not True:
                    raise
            retries += 1
            self.sleep(delay)
            delay = min(delay * policy['backoff']['multiplier'], policy['backoff']['max_delay'])

    # ------------------------------------------------------------------ expressions

    def value(self, value, v: dict):
        """A YAML value with its ``${...}`` expressions evaluated."""
        if isinstance(value, dict):
            return {k: self.value(x, v) for k, x in value.items()}
        if isinstance(value, list):
            return [self.value(x, v) for x in value]
        if isinstance(value, str):
            m = _EXPR.match(value)
            if m:
                return self.expression(ast.parse(m.group(1).strip(), mode='eval').body, v)
            if '${' in value:
                raise NotImplementedError(f'an expression inside a string: {value}')
        return value

    def expression(self, node, v: dict):
        e = lambda n: self.expression(n, v)  # noqa: E731
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            literals = {'true': True, 'false': False, 'null': None}
            if node.id in literals:
                return literals[node.id]
            if node.id not in v:
                raise WorkflowError({'message': f'{node.id} is not defined',
                                     'tags': ['KeyError']})
            return v[node.id]
        if isinstance(node, ast.Attribute):
            base = e(node.value)
            if not isinstance(base, dict) or node.attr not in base:
                raise WorkflowError({'message': f'no key {node.attr}', 'tags': ['KeyError']})
            return base[node.attr]
        if isinstance(node, ast.List):
            return [e(x) for x in node.elts]
        if isinstance(node, ast.Call) and not node.keywords:
            name = _dotted(node.func)
            if name not in self.functions:
                raise NotImplementedError(f'function {name}')
            return self.functions[name](*[e(a) for a in node.args])
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            a, b = e(node.left), e(node.right)
            if isinstance(node.op, ast.Add) and type(a) is str is type(b):
                return a + b
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
                return a + b if isinstance(node.op, ast.Add) else a - b
            raise WorkflowError({'message': f'{ast.dump(node.op)} of {a!r} and {b!r}',
                                 'tags': ['TypeError']})
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            ops = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
                   ast.Lt: lambda a, b: a < b, ast.Gt: lambda a, b: a > b}
            op = ops.get(type(node.ops[0]))
            if op:
                return op(e(node.left), e(node.comparators[0]))
        if isinstance(node, ast.BoolOp):
            values = [e(x) for x in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not e(node.operand)
        raise NotImplementedError(f'expression syntax not supported: {ast.dump(node)}')


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _dotted(node.value) + '.' + node.attr
    raise NotImplementedError(f'a call of {ast.dump(node)}')


def _only(mapping: dict, allowed: set, what: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise NotImplementedError(f'{what}: not supported: {sorted(unknown)}')
