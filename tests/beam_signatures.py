"""The suite's one change to Beam: answers about DoFns and options views, computed once.

Each time a pipeline is translated or a bundle processor is built, Beam asks every DoFn
for its state and timer specs (``userstate.get_dofn_specs``): for each of the ~28
methods of the DoFn it takes ``inspect.signature`` anew (``core.get_function_args_defaults``
→ ``decorators.get_signature``). A 50-row ``beamml assign`` in this process made 728 such
calls, 22,857 signatures, about half of its run time (cProfile, 2026-12-07). The
suite runs hundreds of small pipelines, so it pays this hundreds of times over for the
same functions.

:func:`install` makes ``apache_beam.transforms.core`` look a signature up once per
function: a plain function is its own key, a bound method the function it binds (the
signature of a bound method is its function's without the first parameter, whatever
the instance). Anything else (builtins, ``functools.partial``, callable objects) is
computed as before. A ``Signature`` is immutable, so sharing it changes no result;
tests/test_beam_signatures.py checks the cached answer equals Beam's own. The keys are
weak: a function that goes away takes its entry with it.

:func:`install` also makes ``userstate.get_dofn_specs`` (the state and timer specs of a
DoFn, asked ~600 times per small pipeline: when the graph is translated, when each
bundle processor is built, for each DoFn) answer once per DoFn *class*: the answer is
read from the methods ``dir(dofn)`` finds, which are the class's, except bound methods
kept on the instance (``CallableWrapperDoFn`` keeps the user's callable), so their
functions are part of the key (a bound method's signature is its function's, whatever
the instance). A class with a ``property`` of its own (``DoFn``'s say whether
``process_batch`` is defined: not methods) or a ``__getattr__``, whose methods could
depend on the instance, is computed as before, as is an answer that raises (a DoFn
with duplicate parameters). Each call gets sets of its own. cProfile of
tests/test_index.py (2026-12-07): 12,313 calls, 11.3 s of its 66 s.

:func:`install` also keeps the source text Beam reads (``inspect.getsourcelines``)
when it makes a ``ParDo`` (``core._get_function_body_without_inners``: does ``process``
both ``yield`` and ``return``?) once per function: 1,619 reads, 1.2 s of the same file.

:func:`install` also keeps the views of a ``PipelineOptions`` (``options.view_as(cls)``):
Beam asks for ``TypeOptions`` at each transform it applies and each type it infers, and
each view builds an argparse parser and parses the flags again (~1 ms; 3,129 views in one
K-means test of tests/test_kmeans_ninit.py). A view holds nothing of its own: it reads
and writes the ``_all_options`` of the object it came from, so the same view is handed
out again while the object's flags and options are the same objects (per object and
class, weakly). The product's commands do this themselves (``BeamOptions``,
pipelines/_platform/cli.py); this serves the pipelines the tests build on Beam's own
``PipelineOptions`` (the library's tests), and tests/test_beam_options.py measures
``BeamOptions`` against Beam without it.

The product does not do this (beamml never patches Beam in a user's process): this is a
property of the test processes only, like the storage emulator's patches in conftest.py.
Processes the suite starts (the CLI runs, the docs' shell blocks) run Beam unchanged.
"""
from __future__ import annotations

import types
import weakref

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct import transform_evaluator
from apache_beam.transforms import core, userstate
from apache_beam.typehints import decorators

_BOUND: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_PLAIN: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def get_signature(func):
    """``decorators.get_signature(func)``, remembered per function."""
    if isinstance(func, types.MethodType) and isinstance(func.__func__, types.FunctionType):
        cache, key = _BOUND, func.__func__
    elif isinstance(func, types.FunctionType):
        cache, key = _PLAIN, func
    else:
        return decorators.get_signature(func)
    try:
        return cache[key]
    except KeyError:
        signature = cache[key] = decorators.get_signature(func)
        return signature


_BEAMS_SPECS = userstate.get_dofn_specs
_SPECS: dict = {}
_CLASS_CACHEABLE: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def _cacheable(cls) -> bool:
    try:
        return _CLASS_CACHEABLE[cls]
    except KeyError:
        ok = not hasattr(cls, '__getattr__') and not any(
            isinstance(p, property) and p is not getattr(core.DoFn, name, None)
            for name, p in ((n, getattr(cls, n, None)) for n in dir(cls)))
        _CLASS_CACHEABLE[cls] = ok
        return ok


def get_dofn_specs(dofn):
    """``userstate.get_dofn_specs(dofn)``, remembered per class (and the bound methods the
    instance keeps)."""
    cls = type(dofn)
    if not _cacheable(cls):
        return _BEAMS_SPECS(dofn)
    own = getattr(dofn, '__dict__', None) or {}
    key = (cls,) + tuple(sorted((name, value.__func__) for name, value in own.items()
                                if isinstance(value, types.MethodType)))
    try:
        states, timers = _SPECS[key]
    except KeyError:
        states, timers = _BEAMS_SPECS(dofn)
        _SPECS[key] = frozenset(states), frozenset(timers)
        return states, timers
    except TypeError:   # an unhashable part of the key
        return _BEAMS_SPECS(dofn)
    return set(states), set(timers)


_BEAMS_BODY = core._get_function_body_without_inners
_BODIES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def function_body(func):
    """``core._get_function_body_without_inners(func)`` (a text read from the source
    file), remembered per function (a bound method: the function it binds)."""
    key = getattr(func, '__func__', func)
    if not isinstance(key, types.FunctionType):
        return _BEAMS_BODY(func)
    try:
        return _BODIES[key]
    except KeyError:
        body = _BODIES[key] = _BEAMS_BODY(func)
        return body


_BEAMS_VIEW_AS = PipelineOptions.view_as
_VIEWS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def view_as(self, cls):
    """``PipelineOptions.view_as``, the view remembered per object and class while the
    object's ``_flags`` and ``_all_options`` are the ones the view was made from."""
    try:
        views = _VIEWS.setdefault(self, {})
    except TypeError:   # not weakly referable
        return _BEAMS_VIEW_AS(self, cls)
    view = views.get(cls)
    if (view is None or view.__dict__.get('_flags') is not self.__dict__.get('_flags')
            or view.__dict__.get('_all_options') is not self.__dict__.get('_all_options')):
        view = views[cls] = _BEAMS_VIEW_AS(self, cls)
    return view


def install() -> None:
    """Make Beam's DoFn introspection (``core.get_function_args_defaults``,
    ``userstate.get_dofn_specs``, ``core._get_function_body_without_inners``) and
    ``PipelineOptions.view_as`` use the caches."""
    core.get_signature = get_signature
    userstate.get_dofn_specs = transform_evaluator.get_dofn_specs = get_dofn_specs
    core._get_function_body_without_inners = function_body
    PipelineOptions.view_as = view_as


def uninstall() -> None:
    core.get_signature = decorators.get_signature
    userstate.get_dofn_specs = transform_evaluator.get_dofn_specs = _BEAMS_SPECS
    core._get_function_body_without_inners = _BEAMS_BODY
    PipelineOptions.view_as = _BEAMS_VIEW_AS
