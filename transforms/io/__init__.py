"""Reading and writing point clouds and tables as pyarrow RecordBatches, with dead letters.

It stands on :mod:`beamml.transforms.core` (BeammlError and the dead-letter records in
``core.errors``, the JSON policy, documents, storage objects, Arrow type tests).

Modules, from the bottom up:

- ``casts``: casts of a column to a type that refuse, never change, a value (to_type).
- ``layout``: the Layout of an input, format names, input matching.
- ``ids``: the id rules (read_ids): int64 or strings, one type for the whole input.
- ``rows``: RowBatch (and RawRecords, the bytes a row was read from), the vectorised row
  checks (RowReasons), to_points.
- ``parquetio``, ``csvio``, ``jsonio``, ``npyio``: one reader per format, file -> RowBatches.
- ``inspection``: inspect_input, the Layout decided from the head of the first file.
- ``sources``: read planning, ReadPoints, ReadTable, read_table_files.
- ``sinks``: shard naming, JSON lines / CSV preparation, ShardWriter, WriteTable,
  WriteDeadLetters.
- ``coder``: RecordBatchCoder, registered for ``pyarrow.RecordBatch`` on import.

Every refused row becomes a dead letter ``{"file", "row", "line", "reason",
"record"}`` on the ``errors`` output, and the counters ``beamml/records_read``,
``records_ok`` and ``records_refused`` keep ``read == ok + refused``.
"""
from beamml.transforms.io.coder import RecordBatchCoder
from beamml.transforms.io.inspection import inspect_input
from beamml.transforms.io.layout import INPUT_FORMATS, Layout, match_input
from beamml.transforms.io.rows import (BATCH_ROWS, RowBatch, RowReasons, features_matrix,
                                       points_batch, points_matrix, to_points)
from beamml.transforms.io.sinks import (OUTPUT_FORMATS, ROW_GROUP_ROWS, ShardWriter,
                                        WriteDeadLetters, WriteTable, shard_prefix, to_json_lines)
from beamml.transforms.io.sources import (SPLIT_ROWS, ReadPoints, ReadTable, plan_reads,
                                          read_file_batches, read_table_files)

__all__ = [
    'INPUT_FORMATS', 'OUTPUT_FORMATS', 'BATCH_ROWS', 'SPLIT_ROWS', 'ROW_GROUP_ROWS',
    'Layout', 'inspect_input', 'match_input', 'read_file_batches', 'to_points',
    'points_batch', 'points_matrix', 'features_matrix', 'ReadPoints', 'ReadTable', 'WriteTable',
    'WriteDeadLetters', 'ShardWriter', 'shard_prefix', 'to_json_lines', 'read_table_files',
    'plan_reads', 'RecordBatchCoder', 'RowBatch', 'RowReasons',
]
