"""The one JSON policy for everything beamml writes.

Numpy scalars and arrays become Python numbers and lists, and non-finite floats become
the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (what BigQuery's JSON loader
accepts for a FLOAT64, and what beamml's own readers accept back), never ``null``, which
is kept for a missing value.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ['NON_FINITE', 'NON_FINITE_TEXT', 'json_float', 'to_jsonable', 'dumps']

#: how a non-finite float is written in JSON, and read back
NON_FINITE = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}
#: how a JSON lines table writes text spelled like a non-finite float: its first
#: character escaped (the same string to any JSON parser), so that beamml's JSON
#: lines reader, which reads those words as floats, reads it back as text
NON_FINITE_TEXT = {w: '"\\u%04x%s"' % (ord(w[0]), w[1:]) for w in NON_FINITE}


def json_float(x: float) -> float | str:
    """``x`` itself when finite, else ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    x = float(x)
    if math.isfinite(x):
        return x
    return 'NaN' if math.isnan(x) else ('Infinity' if x > 0 else '-Infinity')


def to_jsonable(o: Any) -> Any:
    """A JSON-ready copy of ``o`` under the policy above (dict keys become strings,
    bytes are decoded with undecodable bytes shown as ``\\xNN``)."""
    if o is None or isinstance(o, (str, bool)):
        return o
    if isinstance(o, (float, np.floating)):
        return json_float(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        return to_jsonable(o.tolist())
    if isinstance(o, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).decode('utf-8', 'backslashreplace')
    return str(o)


def dumps(doc: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`to_jsonable` (so never a bare ``NaN`` token)."""
    return json.dumps(to_jsonable(doc), allow_nan=False, **kwargs)
