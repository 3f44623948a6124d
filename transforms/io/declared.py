"""The Layout of an input declared by its parameters alone, without reading a file.

:func:`~beamml.transforms.io.inspection.inspect_input` decides a Layout from the head of
the first file; when no file may be read (a Dataflow dry run, which touches no storage,
or a watched pattern that matches nothing yet), the parameters say it instead:

* the format: ``input_format``, else the pattern's extension (``*.parquet``);
* points: ``feature_columns`` (scalar columns, one number each; in Parquet and JSON
  lines one column with ``dimension`` is a list column of that length), or, in
  Parquet and JSON lines, the list column ``features`` of ``dimension`` values; a
  ``.npy`` array is ``dimension`` wide; a CSV input names its ``feature_columns``
  (they are in its header);
* the ids: ``id_column`` (``id_type``: ``'string'``, the default, or ``'int64'``);
  without one, ids are ``<file name>:<row>`` (strings);
* tables (``points=False``): the format and the id column only.

What the parameters do not say is one BeammlError naming every parameter to give.
"""
from __future__ import annotations

from typing import Sequence

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.inspection import check_feature_roles, check_weight_column
from beamml.transforms.io.layout import INPUT_FORMATS, Layout, format_of

__all__ = ['declared_layout']


def _parts(names: list[str]) -> str:
    if len(names) < 3:
        return ' and '.join(names)
    return ', '.join(names[:-1]) + ', and ' + names[-1]


def declared_layout(file_pattern: str, *, points: bool = True, input_format: str | None = None,
                    id_column: str | None = None,
                    feature_columns: Sequence[str] | None = None,
                    dimension: int | None = None, weight_column: str | None = None,
                    id_type: str | None = None, list_features: bool | None = None,
                    require_id: bool = False, why: str | None = None) -> Layout:
    """The Layout the parameters declare (see the module's docstring).

    ``list_features`` says whether one feature column holds a list per row (default: it
    does in Parquet and JSON lines when ``dimension`` is given, and a CSV column never
    does). ``require_id``: an id column must be named (no ``<file name>:<row>`` ids).
    ``why`` starts the message of what is missing (default: the file is not read).
    """
    why = why or f'the layout of {file_pattern} must come from the parameters'
    fmt = input_format
    if fmt is None:
        try:
            fmt = format_of(file_pattern, None)
        except BeammlError:
            fmt = None
    elif fmt not in INPUT_FORMATS:
        format_of(file_pattern, fmt)   # the unknown-format error
    if id_type not in (None, 'int64', 'string'):
        raise BeammlError(f"id_type must be 'int64' or 'string', got {id_type!r}",
                          parameters=('id_type',))
    if dimension is not None and dimension < 1:
        raise BeammlError(f'dimension must be >= 1, got {dimension}', parameters=('dimension',))
    feature_columns = tuple(c.strip() for c in feature_columns) if feature_columns else ()
    if fmt == 'csv' and list_features:
        raise BeammlError('a CSV column holds one number per row, not a list',
                          parameters=('feature_columns',))
    missing, names = [], []
    if fmt is None:
        missing.append('input_format')
        names.append('input_format')
    if fmt == 'npy' and dimension is None:   # tables of .npy are points too
        missing.append('dimension')
        names.append('dimension')
    elif points and fmt is not None:
        if fmt == 'csv' and not feature_columns:
            missing.append('feature_columns')
            names.append('feature_columns')
        elif fmt != 'npy' and dimension is None and (
                not feature_columns or (len(feature_columns) == 1 and list_features is not False
                                        and fmt != 'csv')):
            missing.append('dimension (the number of features)' if not feature_columns else
                           f'dimension (the length of the lists in {feature_columns[0]!r})')
            names.append('dimension')
    if require_id and fmt != 'npy' and not id_column:
        missing.append('id_column')
        names.append('id_column')
    if missing:
        raise BeammlError(f'{why}: pass {_parts(missing)}', parameters=tuple(names))
    if fmt == 'npy':
        if id_column:
            raise BeammlError('.npy input has no columns; drop id_column '
                              '(ids are <file name>:<row>)', parameters=('id_column',))
        if weight_column:
            raise BeammlError('.npy input has no columns, so no weight column; drop '
                              'weight_column', parameters=('weight_column',))
        return Layout('npy', ('features',), None, 'string', ('features',), True, dimension)
    id_type = (id_type or 'string') if id_column else 'string'
    weight_column = check_weight_column(weight_column, points)
    if weight_column is not None and weight_column == id_column:
        raise BeammlError(f'the id column {id_column!r} cannot also be the weight column '
                          '(weight_column)', parameters=('weight_column', 'id_column'))
    if not points:
        return Layout(fmt, (id_column,) if id_column else (), id_column, id_type, (), False, 0)
    check_feature_roles(id_column, weight_column, feature_columns)
    if not feature_columns:   # JSON lines or Parquet: a list column 'features'
        feature_columns, is_list, d = ('features',), True, dimension
    elif len(feature_columns) == 1 and fmt != 'csv' and list_features is not False:
        is_list, d = True, dimension
    else:
        if list_features:
            raise BeammlError(f'feature columns {", ".join(feature_columns)}: one list column '
                              'is given alone', parameters=('feature_columns',))
        is_list, d = False, len(feature_columns)
        if dimension is not None and dimension != d:
            raise BeammlError(f'{d} feature columns ({", ".join(feature_columns)}) but '
                              f'dimension is {dimension}', parameters=('dimension',))
    columns = ((id_column,) if id_column else ()) + feature_columns + \
        ((weight_column,) if weight_column else ())
    return Layout(fmt, columns, id_column, id_type, feature_columns, is_list, int(d),
                  None, weight_column=weight_column)
