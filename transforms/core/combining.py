"""What every CombineFn of beamml shares: the merge into the first accumulator.

Beam's rule for ``CombineFn.merge_accumulators``: only the first accumulator may be
modified (the others may be shared or reused by the runner). Imports nothing of beamml.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

__all__ = ['merge_into_first']


def merge_into_first(accumulators: Iterable[Any],
                     merge: Callable[[Any, Any], Any] | None = None) -> Any:
    """Merge every accumulator into the first one, in place, and return the first.

    ``merge(first, other)`` merges one accumulator into ``first`` in place (what it
    returns is ignored); by default ``first.merge(other)``. ``other`` is never changed.
    """
    accumulators = iter(accumulators)
    first = next(accumulators)
    for other in accumulators:
        if merge is None:
            first.merge(other)
        else:
            merge(first, other)
    return first
