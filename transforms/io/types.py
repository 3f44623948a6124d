"""Arrow type tests and the text grammar of numbers, shared by every reader and log parser."""
from __future__ import annotations

import pyarrow as pa

__all__ = ['NUMBER_RE', 'INT_RE', 'SOURCE_COLUMNS', 'is_string_type', 'is_numeric_type',
           'is_list_type']

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
