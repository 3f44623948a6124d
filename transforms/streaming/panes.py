"""Writing a windowed PCollection: one file per window and pane, named by its bounds.

``WritePanes(prefix, suffix, write)`` groups each window's pane on one key and writes
it whole to ``<prefix>-<window start>-<window end>-pane-<i>-<timing><suffix>``.

A pane file is never replaced. A second writer of the same window and pane (a run
restarted on the same subscription after a crash: the messages it had not acknowledged
come again, and its pane 0 of that window holds them only; a retried bundle) writes
beside the first, under ``...-pane-<i>-<timing>-2<suffix>`` (then ``-3``, ...), and logs
a WARNING naming both. Each name is taken by one atomic create-if-absent step: locally
the pane is written to a temporary file that is then hard-linked to the name (``link``
fails when the name exists; on a file system without hard links an empty file is created
with ``O_EXCL`` and the temporary file renamed over it), on Cloud Storage it is uploaded
with ``ifGenerationMatch=0`` (the pane is built in memory first: it is in memory already,
the GroupByKey's list). Another file system (no create-if-absent in Beam's FileSystems)
looks, then renames: two writers of one pane in the same instant could still meet there.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import uuid

import apache_beam as beam
import pyarrow as pa

from beamml.transforms.core.documents import dumps, to_jsonable
from beamml.transforms.streaming.windows import iso, iso_times, pane_timing, window_bounds

LOG = logging.getLogger('beamml')

__all__ = ['WritePanes', 'window_fields', 'pane_file_name', 'write_new_file', 'write_tables',
           'write_json_lines', 'write_dead_letter_lines']

#: the most files of one window and pane (the first and those written beside it): a
#: bound against a file system that refuses every name, not one a stream meets
MAX_FILES_OF_A_PANE = 1000


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


def pane_file_name(prefix: str, window, pane, suffix: str, copy: int = 1) -> str:
    """``PREFIX-<start>-<end>-pane-<i>-<timing>SUFFIX`` (no window bounds in the global
    window): a file per window and pane, so a late pane never overwrites the on-time one.
    The ``copy``-th file of the same window and pane (``copy`` >= 2: a second writer,
    such as a run restarted after a crash) ends ``-<copy>SUFFIX``."""
    parts = [prefix]
    start, end = window_bounds(window)
    if start is not None:
        parts += [iso(start), iso(end)]
    parts.append(f'pane-{pane.index}')
    if start is not None:
        parts.append(pane_timing(pane))
    if copy > 1:
        parts.append(str(copy))
    return '-'.join(parts) + suffix


def write_new_file(name_of, write):
    """Write a file under the first of ``name_of(1)``, ``name_of(2)``, ... that does not
    exist, never replacing one: ``write(fh)`` writes the bytes once (its result is
    returned), then each name is taken by one create-if-absent step (see the module).
    Returns ``(write's result, the path written)``."""
    first = name_of(1)
    if first.startswith('gs://'):
        return _upload_new(name_of, write)
    from apache_beam.io.filesystems import FileSystems
    temp = f'{first}.tmp-{uuid.uuid4().hex[:8]}'
    take = _link_new if '://' not in first else _rename_if_absent
    try:
        with FileSystems.create(temp) as fh:
            result = write(fh)
        for copy in range(1, MAX_FILES_OF_A_PANE + 1):
            path = name_of(copy)
            if take(temp, path):
                return result, path
    finally:
        _remove_quietly(temp)
    raise OSError(f'{first}: {MAX_FILES_OF_A_PANE} files of this pane exist already')


def _upload_new(name_of, write):
    """Cloud Storage: the bytes built in memory, uploaded with ``ifGenerationMatch=0``."""
    from beamml.transforms.core.objects import create_exclusive
    buffer = io.BytesIO()
    result = write(_Unclosed(buffer))
    data = buffer.getvalue()
    for copy in range(1, MAX_FILES_OF_A_PANE + 1):
        path = name_of(copy)
        if create_exclusive(path, data, content_type='application/octet-stream'):
            return result, path
    raise OSError(f'{name_of(1)}: {MAX_FILES_OF_A_PANE} files of this pane exist already')


def _link_new(temp: str, path: str) -> bool:
    """A local file: ``temp`` linked to ``path`` unless ``path`` exists (one atomic step);
    False when it does."""
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:   # a file system without hard links
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    try:   # the name taken empty (O_EXCL), then the bytes renamed over this run's own file
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    os.replace(temp, path)
    return True


def _rename_if_absent(temp: str, path: str) -> bool:
    """Another file system: a look, then a rename (not one atomic step)."""
    from apache_beam.io.filesystems import FileSystems
    if FileSystems.exists(path):
        return False
    FileSystems.rename([temp], [path])
    return True


def _remove_quietly(temp: str) -> None:
    """The temporary file, if still there (renamed already, or never made: nothing to do).
    Never raises: the error of a write that failed is the one to report, and a pane
    written is written (a temporary file left is named in a WARNING)."""
    from apache_beam.io.filesystems import FileSystems
    try:
        if '://' not in temp:
            os.remove(temp)
        elif FileSystems.exists(temp):
            FileSystems.delete([temp])
    except (FileNotFoundError, NotADirectoryError):
        pass
    except Exception as e:   # noqa: BLE001 - see above
        LOG.warning('stream: could not remove the temporary file %s: %s', temp, e)


def _one_shard(element):
    return 0, element


class _WritePaneFn(beam.DoFn):
    """Writes the elements of one pane into one new file (never replacing one:
    :func:`write_new_file`), and yields its path. ``write(fh, elements)`` writes them and
    returns how many records it wrote (an int, or ``(n, late)`` for dead letters): the log
    line of the pane says it (``stream: window [start, end) pane 0 on_time: 500 rows ->
    PATH``); a pane written beside an earlier file of the same window and pane is a
    WARNING naming both."""

    def __init__(self, prefix: str, suffix: str, write, what: str = 'records'):
        self.prefix, self.suffix, self.write, self.what = prefix, suffix, write, what

    def process(self, element, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        _, elements = element
        elements = list(elements)
        n, path = write_new_file(
            lambda copy: pane_file_name(self.prefix, window, pane, self.suffix, copy),
            lambda fh: self.write(fh, elements))
        first = pane_file_name(self.prefix, window, pane, self.suffix)
        if path == first:
            LOG.info('stream: %s: %s -> %s', _pane_words(window, pane),
                     _count_words(n, self.what), path)
        else:
            LOG.warning('stream: %s: %s -> %s, beside %s, which exists already (an earlier '
                        'run\'s or attempt\'s file of this pane: kept as it is)',
                        _pane_words(window, pane), _count_words(n, self.what), path, first)
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
