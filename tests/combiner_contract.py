"""The CombineFn contract that every beamml CombineFn goes through (used by test_combiners.py).

In the spirit of tensorflow-data-validation's combiner test utility:
:func:`check_combine_fn` runs a CombineFn the ways a runner may, without a
pipeline, and checks each against adding every input into one accumulator:

* the inputs shuffled and cut into random batches (several seeded splits), one
  accumulator per batch, merged in random orders and groupings: a merge of one
  accumulator, merges of merges, or one flat merge of all; fresh empty
  accumulators mixed in, one of them first in a merge; in some splits a few
  inputs are added after a merge (as Beam's combining state does);
* ``compact`` applied before merging (to no, some or all accumulators), and a
  round trip over the wire (pickle, then the CombineFn's accumulator coder) of
  every accumulator in some splits, of some in others; the CombineFn itself
  pickled with Beam's pickler, so that one instance adds, another merges and
  another extracts;
* Beam's rule for ``merge_accumulators``: only the first accumulator may be
  changed (and returned); every other one is compared with a snapshot (its
  pickle bytes) right after the merge and again at the end of the way, so an
  alias the merged accumulator keeps and changes later is caught too;
* elements are never changed by ``add_input``;
* the empty input gives the documented empty output, or raises the same error,
  every way;
* ``setup()`` before and ``teardown()`` after each CombineFn instance is used.
"""
from __future__ import annotations

import math
import numbers
import pickle
from typing import Any, Callable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.internal import pickler

__all__ = ['assert_same', 'check_combine_fn', 'difference']

_ARROW = (pa.Array, pa.ChunkedArray, pa.RecordBatch, pa.Table, pa.Schema, pa.Field,
          pa.DataType, pa.Scalar)


# ----------------------------------------------------------------------------- equality

def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(a)


def _array_difference(a: np.ndarray, b: np.ndarray, rtol, atol, where) -> str | None:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f'{where}: array {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}'
    if a.dtype.kind in 'fc':
        same = np.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True) | (a == b)
    elif a.dtype.kind == 'O':
        same = np.array([difference(x, y, rtol=rtol, atol=atol) is None
                         for x, y in zip(a.ravel(), b.ravel())], dtype=bool).reshape(a.shape)
    else:
        same = a == b
    if np.all(same):
        return None
    i = tuple(int(j) for j in np.argwhere(~np.asarray(same))[0])
    return (f'{where}: arrays differ at {int((~np.asarray(same)).sum())} of {a.size} '
            f'positions, first at index {i}: {a[i]!r} != {b[i]!r}')


def _state(obj) -> Any:
    """What an object is made of: its pickled state (``__getstate__``, slots, dict)."""
    state = obj.__getstate__() if hasattr(obj, '__getstate__') else vars(obj)
    if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
        state = state[1]   # (None, slots) of an object with __slots__ only
    return state


def difference(expected, got, *, rtol: float = 0.0, atol: float = 0.0,
               path: str = '') -> str | None:
    """Where ``got`` first differs from ``expected``; None when they agree.

    Floats (scalars and float arrays) agree within ``atol + rtol * |expected|``
    (NaN with NaN); everything else must be equal exactly: integers, booleans,
    strings, array dtypes and shapes, Arrow objects (``equals``), and the types
    of both sides (a Python and a numpy number of the same kind are alike).
    Dicts (by key, in any order), sequences and plain objects (their state)
    are compared item by item.
    """
    where = path or 'value'
    numeric = (isinstance(expected, numbers.Number) and isinstance(got, numbers.Number)
               and not isinstance(expected, (bool, np.bool_))
               and not isinstance(got, (bool, np.bool_)))
    if numeric:
        if isinstance(expected, numbers.Integral) and isinstance(got, numbers.Integral):
            return None if int(expected) == int(got) else f'{where}: {expected!r} != {got!r}'
        if isinstance(expected, numbers.Integral) != isinstance(got, numbers.Integral):
            return f'{where}: {expected!r} ({type(expected).__name__}) != {got!r} ' \
                   f'({type(got).__name__})'
        if _close(float(expected), float(got), rtol, atol):
            return None
        return f'{where}: {expected!r} != {got!r}'
    if type(expected) is not type(got):
        return f'{where}: a {type(expected).__name__} != a {type(got).__name__} ({got!r})'
    if expected is None or isinstance(expected, (str, bytes, bool, np.bool_)):
        return None if expected == got else f'{where}: {expected!r} != {got!r}'
    if isinstance(expected, np.ndarray):
        return _array_difference(expected, got, rtol, atol, where)
    if isinstance(expected, _ARROW):
        return None if expected.equals(got) else f'{where}: {expected} != {got}'
    if isinstance(expected, dict):
        if set(expected) != set(got):
            return (f'{where}: keys {sorted(map(repr, expected))} != '
                    f'{sorted(map(repr, got))}')
        for k in expected:
            d = difference(expected[k], got[k], rtol=rtol, atol=atol, path=f'{where}[{k!r}]')
            if d:
                return d
        return None
    if isinstance(expected, (list, tuple)):
        if len(expected) != len(got):
            return f'{where}: length {len(expected)} != {len(got)}'
        for i, (x, y) in enumerate(zip(expected, got)):
            d = difference(x, y, rtol=rtol, atol=atol, path=f'{where}[{i}]')
            if d:
                return d
        return None
    if type(expected).__eq__ is not object.__eq__:
        return None if expected == got else f'{where}: {expected!r} != {got!r}'
    return difference(_state(expected), _state(got), rtol=rtol, atol=atol,
                      path=f'{where}.__state__')


def assert_same(expected, got, *, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Raise AssertionError naming the first :func:`difference`."""
    d = difference(expected, got, rtol=rtol, atol=atol)
    if d:
        raise AssertionError(d)


def _snapshot(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _check_output(equal, expected, got, what: str) -> None:
    try:
        ok = equal(expected, got)
    except AssertionError as e:
        raise AssertionError(f'{what}: {e}') from None
    if ok is False:
        raise AssertionError(f'{what}: {got!r} != {expected!r}')


# ----------------------------------------------------------------------------- one way

class _Way:
    """One seeded way of combining the inputs; ``log`` says what it did."""

    def __init__(self, instances: Sequence[beam.CombineFn], inputs: list, split: int,
                 seed: int):
        self.inputs = inputs
        self.rng = rng = np.random.default_rng([seed, split])
        self.add_fn, self.merge_fn, self.extract_fn = (
            instances[int(rng.integers(len(instances)))] for _ in range(3))
        # the first splits take each option all or nothing; the others pick at random
        self.compact = ('none', 'all', 'none', 'all')[split] if split < 4 else 'some'
        self.wire = ('none', 'none', 'all', 'all')[split] if split < 4 else 'some'
        self.flat = split % 4 == 3
        self.late = split % 2 == 1
        self.log = [f'split {split} (seed {seed}): '
                    f'add/merge/extract by instances '
                    f'{[instances.index(f) for f in (self.add_fn, self.merge_fn, self.extract_fn)]}'
                    f' (0 = the given CombineFn, 1 = its pickled copy)']
        self.watched = []   # (accumulator, snapshot, name): non-first inputs of merges
        self._names = 0

    def _name(self, prefix: str) -> str:
        self._names += 1
        return f'{prefix}{self._names}'

    def describe(self) -> str:
        return '\n  '.join(self.log)

    def _accumulate(self, indices) -> tuple[Any, str]:
        acc = self.add_fn.create_accumulator()
        for i in indices:
            acc = self.add_fn.add_input(acc, self.inputs[i])
        name = self._name('a')
        self.log.append(f'{name} = inputs {list(map(int, indices))}')
        return acc, name

    def _maybe(self, mode: str, p: float) -> bool:
        return mode == 'all' or (mode == 'some' and self.rng.random() < p)

    def _prepare(self, item, p: float = 0.5):
        acc, name = item
        if self._maybe(self.compact, p):
            acc = self.merge_fn.compact(acc)
            self.log.append(f'compact({name})')
        if self._maybe(self.wire, p):
            coder = self.merge_fn.get_accumulator_coder()
            acc = coder.decode(coder.encode(pickle.loads(_snapshot(acc))))
            self.log.append(f'wire({name})')
        return acc, name

    def merge(self, items) -> tuple[Any, str]:
        name = self._name('m')
        self.log.append(f'{name} = merge({", ".join(n for _, n in items)})')
        accs = [a for a, _ in items]
        before = [(a, _snapshot(a), n) for a, n in items[1:] if a is not accs[0]]
        arg = iter(accs) if self.rng.random() < 0.5 else accs
        merged = self.merge_fn.merge_accumulators(arg)
        for acc, snap, n in before:
            if _snapshot(acc) != snap:
                raise AssertionError(
                    f'{type(self.merge_fn).__name__}.merge_accumulators changed {n}, which '
                    f'is not the first accumulator ({name}); Beam lets a merge change only '
                    f'the first: {difference(pickle.loads(snap), acc, path=n)}\n  '
                    + self.describe())
        self.watched.extend(before)
        return merged, name

    def _add_late(self, item, late: list):
        acc, name = item
        i = late.pop()
        self.log.append(f'add input {int(i)} to {name}')
        return self.add_fn.add_input(acc, self.inputs[i]), name

    def run(self):
        rng, n = self.rng, len(self.inputs)
        order = rng.permutation(n)
        n_late = int(rng.integers(1, min(3, n) + 1)) if self.late and n > 1 else 0
        late, early = list(order[:n_late]), order[n_late:]
        n_acc = int(rng.integers(1, len(early) + 1)) if len(early) else 1
        cuts = np.sort(rng.integers(0, len(early) + 1, n_acc - 1))  # equal cuts: empty batches
        pool = [self._prepare(self._accumulate(g)) for g in np.split(early, cuts)]
        for _ in range(int(rng.integers(1, 3))):
            empty = (self.add_fn.create_accumulator(), self._name('e'))
            self.log.append(f'{empty[1]} = an empty accumulator')
            pool.insert(int(rng.integers(len(pool) + 1)), self._prepare(empty))
        # an empty accumulator first in the first merge of more than one
        j = next(i for i, (_, name) in enumerate(pool) if name.startswith('e'))
        pool.insert(0, pool.pop(j))
        j = int(rng.integers(len(pool)))
        pool[j] = self.merge([pool[j]])   # a merge of one accumulator
        if self.flat:
            final = self.merge(pool)
        else:
            first = True
            while len(pool) > 1:
                size = int(rng.integers(2, min(4, len(pool)) + 1))
                if first:
                    idx = [0] + list(1 + rng.choice(len(pool) - 1, size - 1, replace=False))
                    first = False
                else:
                    idx = list(rng.choice(len(pool), size, replace=False))
                merged = self._prepare(self.merge([pool[i] for i in idx]), p=0.3)
                if late and rng.random() < 0.5:
                    merged = self._add_late(merged, late)
                pool = [item for i, item in enumerate(pool) if i not in idx]
                pool.insert(min(idx), merged)
            final = pool[0]
        while late:
            final = self._add_late(final, late)
        final = self._prepare(final, p=0.5)
        return self.extract_fn.extract_output(final[0])

    def check_watched(self) -> None:
        """Non-first accumulators must stay as they were after later merges and adds too."""
        for acc, snap, name in self.watched:
            if _snapshot(acc) != snap:
                raise AssertionError(
                    f'{type(self.merge_fn).__name__}: {name} was a non-first input of a merge '
                    f'and was changed afterwards, in place through objects the merged '
                    f'accumulator shares with it (by a later merge, add_input, compact or '
                    f'extract_output): {difference(pickle.loads(snap), acc, path=name)}'
                    f'\n  ' + self.describe())


# ----------------------------------------------------------------------------- the check

def _is_error(empty) -> bool:
    return isinstance(empty, type) and issubclass(empty, BaseException)


def _check_empty(fn, copy, equal, empty) -> None:
    coder = fn.get_accumulator_coder()

    def merge(f, accs):
        way = _Way([f], [], 0, 0)
        way.log = [f'the empty input: a merge of {len(accs)} empty accumulator(s)']
        merged, _ = way.merge([(a, f'e{i}') for i, a in enumerate(accs)])
        return merged

    ways = {
        'extract_output(create_accumulator())':
            lambda: fn.extract_output(fn.create_accumulator()),
        'apply([])': lambda: fn.apply([]),
        'a merge of one empty accumulator':
            lambda: fn.extract_output(merge(fn, [fn.create_accumulator()])),
        'a merge of three empty accumulators':
            lambda: fn.extract_output(merge(fn, [fn.create_accumulator() for _ in range(3)])),
        'an empty accumulator compacted, over the wire, merged by the pickled CombineFn':
            lambda: copy.extract_output(merge(copy, [
                copy.create_accumulator(),
                coder.decode(coder.encode(pickle.loads(_snapshot(
                    fn.compact(fn.create_accumulator())))))])),
    }
    outputs = {}
    for what, run in ways.items():
        if _is_error(empty):
            try:
                run()
            except empty as e:
                outputs[what] = (type(e), str(e))
                continue
            raise AssertionError(f'the empty input ({what}) does not raise {empty.__name__}')
        outputs[what] = run()
    first_what, first = next(iter(outputs.items()))
    for what, out in outputs.items():
        if _is_error(empty):
            if out != first:
                raise AssertionError(f'the empty input raises {out} ({what}) but {first} '
                                     f'({first_what})')
            continue
        try:
            ok = empty(out)
        except AssertionError as e:
            raise AssertionError(f'the empty input ({what}) is not the documented empty '
                                 f'output: {e}') from None
        if ok is False:
            raise AssertionError(f'the empty input ({what}) is not the documented empty '
                                 f'output: {out!r}')
        _check_output(equal, first, out, f'the empty input ({what}) differs from '
                                         f'{first_what}')


def check_combine_fn(fn: beam.CombineFn, inputs: Sequence, equal: Callable[[Any, Any], Any],
                     empty: Callable[[Any], Any] | type, *, n_splits: int = 16,
                     seed: int = 0) -> None:
    """Check that every way of combining ``inputs`` with ``fn`` agrees (see the module doc).

    Parameters
    ----------
    fn : the CombineFn
    inputs : the elements, as the pipeline feeds them (at least one)
    equal : ``equal(expected, got)`` on two outputs; raises AssertionError or
        returns False when they differ (exact for counts, a tight tolerance for
        float sums, whose order of additions differs)
    empty : the documented output of no input: a check ``empty(output)`` that
        raises AssertionError or returns False when it is not; or the exception
        class the empty input raises
    n_splits : seeded ways of splitting and merging
    seed : int

    Raises AssertionError describing the first broken rule and the way that broke it.
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError('check_combine_fn needs at least one input')
    copy = pickler.loads(pickler.dumps(fn))
    instances = [fn, copy]
    for f in instances:
        f.setup()
    try:
        snapshots = [_snapshot(x) for x in inputs]

        def check_elements(when):
            for i, (x, snap) in enumerate(zip(inputs, snapshots)):
                if _snapshot(x) != snap:
                    raise AssertionError(
                        f'{type(fn).__name__}.add_input changed element {i} ({when}); Beam: '
                        f'"the element to add, should not be mutated": '
                        f'{difference(pickle.loads(snap), x, path=f"element {i}")}')

        acc = fn.create_accumulator()
        for x in inputs:
            acc = fn.add_input(acc, x)
        reference = fn.extract_output(acc)
        check_elements('adding every input into one accumulator')
        _check_output(equal, reference, fn.apply(inputs), 'apply(inputs) differs from adding '
                      'every input into one accumulator')
        _check_output(equal, reference, copy.apply(inputs), 'the pickled CombineFn differs')
        _check_empty(fn, copy, equal, empty)
        for split in range(n_splits):
            way = _Way(instances, inputs, split, seed)
            out = way.run()
            way.check_watched()
            _check_output(equal, reference, out,
                          'the output differs from adding every input into one accumulator\n  '
                          + way.describe() + '\n ')
        check_elements('after every way')
    finally:
        for f in instances:
            f.teardown()
