"""The suite's one change to Beam: ``inspect.signature`` of a DoFn's methods, computed once.

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

The product does not do this (beamml never patches Beam in a user's process): this is a
property of the test processes only, like the storage emulator's patches in conftest.py.
Processes the suite starts (the CLI runs, the docs' shell blocks) run Beam unchanged.
"""
from __future__ import annotations

import types
import weakref

from apache_beam.transforms import core
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


def install() -> None:
    """Make Beam's DoFn introspection (``core.get_function_args_defaults``) use the cache."""
    core.get_signature = get_signature


def uninstall() -> None:
    core.get_signature = decorators.get_signature
