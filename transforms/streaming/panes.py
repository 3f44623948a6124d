"""Writing a windowed PCollection: one file per window and pane, named by its bounds.

``WritePanes(prefix, suffix, write)`` groups each window's pane on one key and writes
it whole to ``<prefix>-<window start>-<window end>-pane-<i>-<timing><suffix>`` (a pane
of a window that has not closed yet is written under a temporary name first).
"""
from __future__ import annotations

import logging
import uuid

import apache_beam as beam
import pyarrow as pa

from beamml.transforms.core.documents import dumps, to_jsonable
from beamml.transforms.streaming.windows import iso, iso_times, pane_timing, window_bounds

LOG = logging.getLogger('beamml')

__all__ = ['WritePanes', 'window_fields', 'pane_file_name', 'write_tables', 'write_json_lines',
           'write_dead_letter_lines']


def window_fields(window, pane) -> dict:
    """``window_start``, ``window_end`` (ISO-8601 UTC) and ``timing`` of a pane."""
    start, end = window_bounds(window)
    return {'window_start': None if start is None else iso(start),
            'window_end': None if end is None else iso(end), 'timing': pane_timing(pane)}


# ----------------------------------------------------------------------------- sinks

class _Unclosed:
    """A file handle whose close() only flushes (fileio.WriteToFiles closes the file)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        return self._fh.write(data)

    def close(self):
        self._fh.flush()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _folder_and_prefix(prefix: str) -> tuple[str, str]:
    from apache_beam.io.filesystems import FileSystems
    folder, name = FileSystems.split(prefix)
    return folder, name or 'part'


def pane_file_name(prefix: str, window, pane, suffix: str) -> str:
    """``PREFIX-<start>-<end>-pane-<i>-<timing>SUFFIX`` (no window bounds in the global
    window): a file per window and pane, so a late pane never overwrites the on-time one."""
    parts = [prefix]
    start, end = window_bounds(window)
    if start is not None:
        parts += [iso(start), iso(end)]
    parts.append(f'pane-{pane.index}')
    if start is not None:
        parts.append(pane_timing(pane))
    return '-'.join(parts) + suffix


def _one_shard(element):
    return 0, element


class _WritePaneFn(beam.DoFn):
    """Writes the elements of one pane into one file (a temporary name, then renamed),
    and yields its path. ``write(fh, elements)`` writes them and returns how many
    records it wrote (an int, or ``(n, late)`` for dead letters): the log line of the pane
    says it (``stream: window [start, end) pane 0 on_time: 500 rows -> PATH``)."""

    def __init__(self, prefix: str, suffix: str, write, what: str = 'records'):
        self.prefix, self.suffix, self.write, self.what = prefix, suffix, write, what

    def process(self, element, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        from apache_beam.io.filesystems import FileSystems
        _, elements = element
        path = pane_file_name(self.prefix, window, pane, self.suffix)
        temp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
        with FileSystems.create(temp) as fh:
            n = self.write(fh, list(elements))
        FileSystems.rename([temp], [path])
        LOG.info('stream: %s: %s -> %s', _pane_words(window, pane), _count_words(n, self.what),
                 path)
        yield path


def _pane_words(window, pane) -> str:
    start, end = window_bounds(window)
    where = 'global window' if start is None else f'window [{iso(start)}, {iso(end)})'
    return f'{where} pane {pane.index} {pane_timing(pane)}'


def _count_words(n, what: str) -> str:
    if isinstance(n, tuple):   # dead letters: (all, late)
        return f'{n[0]} {what} (late: {n[1]})'
    return f'{n} {what}' if n is not None else what


def write_tables(fmt: str, schema: pa.Schema):
    def write(fh, batches):
        from beamml.transforms.io.sinks import ShardWriter
        out_schema = schema
        if fmt in ('jsonl', 'csv'):   # times as text, spelled as in the file names
            out_schema = iso_times(pa.RecordBatch.from_pylist([], schema)).schema
        writer = ShardWriter(_Unclosed(fh), fmt, out_schema)
        n = 0
        for batch in batches:
            batch = batch.select(schema.names)
            writer.write(iso_times(batch) if fmt in ('jsonl', 'csv') else batch)
            n += batch.num_rows
        writer.close()
        return n
    return write


def write_json_lines(fh, records) -> int:
    fh.write(b''.join(dumps(to_jsonable(r)).encode('utf-8') + b'\n' for r in records))
    return len(records)


def write_dead_letter_lines(fh, letters) -> tuple[int, int]:
    """Dead letters as JSON lines; ``(how many, how many late)`` (the loop over them that
    writes them counts the late ones: no pass of its own)."""
    late = sum(1 for d in letters if str(d.get('reason', '')).startswith('late'))
    return write_json_lines(fh, letters), late


class WritePanes(beam.PTransform):
    """Windowed elements -> one file per window and pane under ``prefix`` (see
    :func:`pane_file_name`); outputs the paths written."""

    def __init__(self, prefix: str, suffix: str, write, label: str | None = None, *,
                 what: str = 'records'):
        super().__init__(label)
        self.prefix, self.suffix, self.write, self.what = prefix, suffix, write, what

    def expand(self, pcoll):
        return (pcoll
                | 'OneShard' >> beam.Map(_one_shard)
                | 'Pane' >> beam.GroupByKey()
                | 'WriteFile' >> beam.ParDo(_WritePaneFn(self.prefix, self.suffix,
                                                         self.write, self.what)))
