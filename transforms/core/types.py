"""Arrow type tests and the text grammar of numbers, shared by every reader and log parser."""
from __future__ import annotations

import pyarrow as pa

__all__ = ['NUMBER_RE', 'INT_RE', 'SOURCE_COLUMNS', 'is_string_type', 'is_numeric_type',
           'is_list_type', 'is_nested_type', 'is_temporal_type', 'value_type', 'decoded', 'kind']

#: a decimal or scientific number, ``inf``/``infinity``/``nan`` (match case-insensitively)
NUMBER_RE = r'^\s*[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|infinity|nan)\s*$'
#: an integer, optionally signed
INT_RE = r'^\s*[-+]?\d+\s*$'
#: columns a table reader adds on request: the source file, the data row in it (0-based)
#: and its physical line (1-based; null for a binary format such as Parquet)
SOURCE_COLUMNS = ('_file', '_row', '_line')


def is_string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_numeric_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_nested_type(t: pa.DataType) -> bool:
    return pa.types.is_nested(value_type(t))


def is_temporal_type(t: pa.DataType) -> bool:
    return pa.types.is_temporal(t)


def value_type(t: pa.DataType) -> pa.DataType:
    """The type of the values: a dictionary's value type, else ``t``."""
    return t.value_type if pa.types.is_dictionary(t) else t


def decoded(arr) -> pa.Array:
    """One Array (chunks combined) with dictionary encoding undone: what the checks read."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def kind(t: pa.DataType) -> str:
    """What a value of type ``t`` is, in words: 'a number', 'text', 'a list', ..."""
    t = value_type(t)
    if is_list_type(t):
        return 'a list'
    if pa.types.is_struct(t):
        return 'an object'
    if pa.types.is_boolean(t):
        return 'a boolean'
    if is_numeric_type(t):
        return 'a number'
    if is_string_type(t):
        return 'text'
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return 'bytes'
    return f'a {t}'
