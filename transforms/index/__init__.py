"""Dense id index: number the distinct ids of a table 0..n-1 (id2idx) and re-encode rows with it.

Ids are int64 or strings, numbered ``first_seen`` (by first appearance, files in
path order and rows in file order) or ``sorted`` (ascending id).

Modules:

* :mod:`~beamml.transforms.index.kernels`: Beam-free kernels on pyarrow / numpy
  arrays (normalise_ids, source_keys, first_keys, number_ids, dense_index, id2idx_schema);
* :mod:`~beamml.transforms.index.lookup`: :class:`IdIndex` (id <-> idx, vectorised,
  no Beam) and :func:`read_id2idx`;
* :mod:`~beamml.transforms.index.schemas`: one type per column across input files
  (input_types, conform_to_input, promote_types, conform_batch);
* :mod:`~beamml.transforms.index.transforms`: the Beam adapters (MinKeyPerIdFn,
  UnifySchemasFn, ConformToInputFn) and composites (BuildIdIndex, EncodeIds, IndexIds).
"""
from beamml.transforms.index.kernels import (ORDERS, ROW_BITS, dense_index, first_keys,
                                             id2idx_schema, normalise_ids, number_ids, source_keys)
from beamml.transforms.index.lookup import IdIndex, read_id2idx
from beamml.transforms.index.schemas import (conform_batch, conform_to_input, input_types,
                                             promote_types)
from beamml.transforms.index.transforms import (BuildIdIndex, ConformToInputFn, EncodeIds, IndexIds,
                                                MinKeyPerIdFn, UnifySchemasFn, table_batches)

__all__ = [
    'ORDERS', 'ROW_BITS', 'source_keys', 'first_keys', 'number_ids', 'dense_index',
    'id2idx_schema', 'normalise_ids', 'promote_types', 'conform_batch', 'input_types',
    'conform_to_input', 'read_id2idx', 'IdIndex', 'MinKeyPerIdFn', 'UnifySchemasFn',
    'ConformToInputFn', 'BuildIdIndex', 'EncodeIds', 'IndexIds', 'table_batches',
]
