"""What goes wrong and how it is counted: BeammlError, dead-letter records, record counters."""
from __future__ import annotations

import re
from typing import Any, Sequence

from apache_beam.metrics import Metrics

from beamml.transforms.core.jsonable import to_jsonable

__all__ = ['BeammlError', 'COUNTER_NAMESPACE', 'ERRORS', 'RecordCounters', 'dead_letter',
           'first_line', 'ZERO_VECTOR']

#: the namespace of beamml's Beam counters
COUNTER_NAMESPACE = 'beamml'
#: the tag of every source's and step's dead-letter output
ERRORS = 'errors'
#: the reason a zero vector is refused where cosine distance is undefined for it
ZERO_VECTOR = 'zero vector: cosine distance is undefined'


class BeammlError(ValueError):
    """An error in the user's input or parameters; its message says what to do.

    A transform names its own parameters (``dimension``), never command-line
    flags; ``parameters`` lists the names the message uses, so that the command
    line can word them as its flags (:meth:`for_cli`: ``--dimension``).
    """

    def __init__(self, message: str = '', *, parameters: Sequence[str] = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)

    def __reduce__(self):  # pickles (from a worker) with its parameters
        return (_beamml_error, (type(self), str(self), self.parameters))

    def for_cli(self) -> str:
        """The message with each named parameter written as its flag (a word of a path
        such as ``gs://b/dimension/x.npy`` is left alone)."""
        text = str(self)
        for name in self.parameters:
            text = re.sub(rf'(?<![\w\-/.:]){re.escape(name)}(?![\w/]|\.\w)', '--' + name, text)
        return text


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none:
    what a one-line error quotes of an underlying error."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _beamml_error(cls, message, parameters):
    return cls(message, parameters=parameters)


def dead_letter(path: str | None, row: int | None, line: int | None, reason: str,
                record: Any) -> dict:
    """A dead-letter record, the one shape every source and step uses::

        {"file": path, "row": data row (0 = first data row), "line": physical line
         (CSV / JSON lines, else None), "reason": why, "record": the raw row}

    ``record`` is made JSON-ready under beamml's one JSON policy
    (:func:`~beamml.transforms.core.documents.to_jsonable`).
    """
    return {'file': path, 'row': None if row is None else int(row),
            'line': None if line is None else int(line), 'reason': reason,
            'record': to_jsonable(record)}


class RecordCounters:
    """The Beam counters behind ``records_read == records_ok + records_refused``.

    Sources count every row they read as read and as ok or refused. A later step
    that refuses rows the source accepted calls :meth:`refuse_accepted`, which
    moves them from ok to refused, so the identity holds at the end of the run.
    """

    def __init__(self):
        self.read = Metrics.counter(COUNTER_NAMESPACE, 'records_read')
        self.ok = Metrics.counter(COUNTER_NAMESPACE, 'records_ok')
        self.refused = Metrics.counter(COUNTER_NAMESPACE, 'records_refused')

    def refuse_accepted(self, n: int) -> None:
        if n:
            self.ok.dec(n)
            self.refused.inc(n)
