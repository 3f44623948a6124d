"""What a flag's value may be, declared once as its argparse ``type=``.

Each object here is an argparse type (a callable that turns the text into a value or
raises ``argparse.ArgumentTypeError`` with a one-line reason) and carries ``regex``, what
a valid value looks like, which the Flex templates' metadata uses
(:func:`beamml.pipelines._platform.templates.regexes`). A refused value is one line:
``beamml kmeans: error: argument --k: '0' is not an integer >= 1 (see beamml kmeans
--help)``, exit 2. Relations between flags (``--window_period`` <= ``--window_size``)
are checked after parsing, by the command.
"""
from __future__ import annotations

import argparse
import math

__all__ = ['Integer', 'Number', 'positive_int', 'non_negative_int', 'positive_seconds',
           'seconds', 'fraction', 'positive_number']

_UNSIGNED_INT = r'^[0-9]+$'
_POSITIVE_INT = r'^0*[1-9][0-9]*$'
_INT = r'^-?[0-9]+$'
_UNSIGNED_NUMBER = r'^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
#: a number > 0: the mantissa has a non-zero digit (Java's regexes, Dataflow's, look ahead)
_POSITIVE_NUMBER = r'^(?=[0-9.]*[1-9])([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
_NUMBER = r'^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
_FRACTION = r'^(0(\.[0-9]*)?|\.[0-9]+|1(\.0*)?)$'


class Integer:
    """An integer >= ``minimum`` (argparse type)."""

    def __init__(self, minimum: int | None = None):
        self.minimum = minimum
        self.regex = (_INT if minimum is None or minimum < 0 else
                      _UNSIGNED_INT if minimum == 0 else _POSITIVE_INT)
        self.__name__ = f'an integer >= {minimum}' if minimum is not None else 'an integer'

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f'{text!r} is not {self.__name__}') from None
        if self.minimum is not None and value < self.minimum:
            raise argparse.ArgumentTypeError(f'{text!r} is not {self.__name__}')
        return value

    def __repr__(self) -> str:
        return f'Integer(minimum={self.minimum})'


class Number:
    """A finite number with optional bounds (argparse type): ``minimum`` (``> minimum``
    when ``exclusive``) and ``maximum`` (inclusive); ``unit`` words the reason."""

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *,
                 exclusive: bool = False, unit: str = 'a number', regex: str | None = None,
                 words: str | None = None):
        self.minimum, self.maximum, self.exclusive, self.unit = minimum, maximum, exclusive, unit
        self.regex = regex or (_POSITIVE_NUMBER if minimum == 0 and exclusive else
                               _UNSIGNED_NUMBER if minimum is not None and minimum >= 0
                               else _NUMBER)
        bounds = []
        if minimum is not None:
            bounds.append(f'{">" if exclusive else ">="} {minimum:g}')
        if maximum is not None:
            bounds.append(f'<= {maximum:g}')
        self.__name__ = words or unit + (' ' + ' and '.join(bounds) if bounds else '')

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f'{text!r} is not {self.__name__}') from None
        ok = math.isfinite(value)
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.exclusive else value >= self.minimum
        if ok and self.maximum is not None:
            ok = value <= self.maximum
        if not ok:
            raise argparse.ArgumentTypeError(f'{text!r} is not {self.__name__}')
        return value

    def __repr__(self) -> str:
        return f'Number({self.__name__!r})'


#: an integer >= 1 (counts: k, shards, batch sizes, iterations)
positive_int = Integer(1)
#: an integer >= 0
non_negative_int = Integer(0)
#: a number > 0
positive_number = Number(0, exclusive=True)
#: a duration in seconds >= 0
seconds = Number(0, unit='a number of seconds')
#: a duration in seconds > 0
positive_seconds = Number(0, exclusive=True, unit='a number of seconds')
#: a number in [0, 1]
fraction = Number(0, 1, regex=_FRACTION, words='a fraction between 0 and 1')
