"""Table schemas across input files: the one type a column is written as, and batches cast to it.

A column of the first file keeps the type its head has (:func:`input_types`) for the
whole input: :func:`conform_to_input` reads each batch's column as that type (a CSV
block read as text, a later Parquet file of int32, a JSON block of floats) and
refuses, never changes, a value that is not of it. A column the first file does not
have is typed by the files that do: :func:`promote_types` decides the type they meet
as, :func:`add_schema` / :func:`unified_schema` fold every batch's schema into the one
schema (the maths of :class:`~beamml.transforms.index.transforms.UnifySchemasFn`), and
:func:`conform_batch` casts a batch to it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.casts import to_type
from beamml.transforms.core.types import SOURCE_COLUMNS, is_nested_type, is_string_type, value_type

__all__ = ['input_types', 'conform_to_input', 'promote_types', 'add_schema',
           'unified_schema', 'schema_without_source', 'conform_batch']


def input_types(layout) -> dict[str, pa.DataType]:
    """{column: the type it keeps for the whole input}: the first file's head's (the
    values of a dictionary; a CSV column empty there is text), but the id column (ids
    have rules of their own) and a column whose type the head leaves open (all null)
    or that holds lists or objects (lists of numbers and of others meet in
    :func:`promote_types`)."""
    types = {}
    for field in layout.head_schema or ():
        t = value_type(field.type)
        if pa.types.is_null(t) and layout.input_format == 'csv':
            t = pa.string()
        if field.name != layout.id_column and not pa.types.is_null(t) and \
                not is_nested_type(t):
            types[field.name] = t
    return types


def conform_to_input(batch: pa.RecordBatch, types: Mapping[str, pa.DataType], text: bool,
                     why) -> pa.RecordBatch:
    """``batch`` with each column of ``types`` as that type (:func:`~beamml.transforms.io.
    casts.to_type`); a value that is not of it is null and its row marked in ``why`` (a
    RowReasons): ``value in 'v' is not an integer``, ``value in 'v' is a number, the
    column holds text``. ``text``: a string column holds the text of a CSV file (``"7"``
    is 7 in an integer column). A column of lists or objects is left (where the input
    has scalars, the JSON lines reader refused its values; files of other formats that
    disagree so are a BeammlError of promote_types)."""
    for i, field in enumerate(batch.schema):
        want = types.get(field.name)
        if want is None or field.type.equals(want) or is_nested_type(field.type):
            continue
        values, refusals = to_type(batch.column(i), want,
                                   text=text and is_string_type(value_type(field.type)))
        for mask, reason in refusals:
            if mask.any():
                why.mark(mask, f'value in {field.name!r} {reason}')
        batch = batch.set_column(i, field.name, values)
    return batch


def promote_types(a: pa.DataType, b: pa.DataType, name: str = '') -> pa.DataType:
    """The type two files' versions of a column are written as.

    Equal types stay; null gives way; integers widen to int64, integers and
    floats to float64; lists meet as a list of their items' promoted type; anything
    else scalar meets as string. Other nested types that differ are an error.
    """
    if pa.types.is_dictionary(a):
        a = a.value_type
    if pa.types.is_dictionary(b):
        b = b.value_type
    if a.equals(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    num = (pa.types.is_integer, pa.types.is_floating)
    if any(f(a) for f in num) and any(f(b) for f in num):
        return pa.float64()
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(f(a) for f in lists) and any(f(b) for f in lists):
        # lists of another item type (a file whose lists are all empty: list<null>) or
        # length meet as a list of the promoted item type
        return pa.list_(promote_types(a.value_type, b.value_type, name))
    if pa.types.is_nested(a) or pa.types.is_nested(b):
        raise BeammlError(f'column {name!r} is {a} in one input file and {b} in another; '
                          'make the files agree')
    return pa.string()


def add_schema(types: dict[str, pa.DataType], schema: pa.Schema) -> dict[str, pa.DataType]:
    """Fold ``schema`` into ``types`` (column name -> type so far) with :func:`promote_types`;
    updates ``types`` in place and returns it."""
    for field in schema:
        types[field.name] = (promote_types(types[field.name], field.type, field.name)
                             if field.name in types else field.type)
    return types


def unified_schema(types: dict[str, pa.DataType], columns: Sequence[str] = ()) -> pa.Schema:
    """The schema of ``types``: columns in ``columns`` order (the first file's), then any
    others by name."""
    names = [c for c in columns if c in types]
    names += sorted(set(types) - set(names))
    return pa.schema([(n, types[n]) for n in names])


def schema_without_source(batch: pa.RecordBatch) -> pa.Schema:
    """The batch's schema without the reader's source columns (``_file``, ``_row``, ``_line``)."""
    return pa.schema([f for f in batch.schema if f.name not in SOURCE_COLUMNS])


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly the schema's columns and types (missing columns are null)."""
    arrays = []
    names = batch.schema.names
    for field in schema:
        if field.name in names:
            col = batch.column(field.name)
            if pa.types.is_dictionary(col.type) and not pa.types.is_dictionary(field.type):
                col = col.dictionary_decode()
            if not col.type.equals(field.type):
                col = pc.cast(col, field.type)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
