"""Pane files are never replaced (issue 20): a second writer of a window's pane, such as a
run restarted on the same subscription after a crash, writes beside the first file.

The same short stream (rows in one event-time window, dead letters) is written twice into
one ``--output`` prefix, locally and on the Cloud Storage emulator: every file of the
first run is kept byte for byte, the second run's panes land beside them (``-2``), and the
log names both files. Then the create-if-absent steps on their own: a file system without
hard links, and one without any create-if-absent step (a look, then a rename).
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from beamml.pipelines._platform import streams
from beamml.transforms.core.errors import dead_letter
from beamml.transforms.io.rows import points_batch
from beamml.transforms.streaming import panes

WINDOW = '1970-01-01T00:00:00.000Z-1970-01-01T00:00:10.000Z'


def _points(ids):
    ids = np.asarray(ids)
    return points_batch(pa.array(ids), np.column_stack([ids * 1.0, ids + 0.5]))


def _stream(out: str, ids, refused) -> None:
    """One short stream into ``out``: a row per id in the window [0, 10) (pane 0, on
    time), and a dead letter per refused id (in windows of an hour of the time written)."""
    args = argparse.Namespace(output=out, output_format='jsonl', output_topic=None,
                              dead_letter_topic=None, window_size=3600.0)
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        rows = (p
                | 'Rows' >> _TestStream().advance_watermark_to(0)
                .add_elements([TimestampedValue(_points(ids), 1)])
                .advance_watermark_to_infinity()
                | 'Windows' >> beam.WindowInto(FixedWindows(10)))
        streams.write_rows(rows, args, _points(ids).schema)
        letters = p | 'Letters' >> beam.Create(
            [dead_letter('s', i, None, 'dimension 1, expected 2', {'id': i}) for i in refused])
        streams.write_dead_letters(letters, args)


def _files(prefix: str) -> dict[str, bytes]:
    """{path: bytes} of every file under the prefix's folder."""
    folder = prefix.rsplit('/', 1)[0]
    (found,) = FileSystems.match([folder + '/*'])
    out = {}
    for m in found.metadata_list:
        with FileSystems.open(m.path) as f:
            out[m.path] = f.read()
    return out


@pytest.mark.parametrize('where', ['local', 'gs'])
def test_a_restarted_run_writes_beside_the_earlier_panes_and_replaces_none(
        where, tmp_path, request, caplog):
    """As after a crash and a restart on the same subscription: the first run's pane 0
    of the window holds the rows of ids 1-3 (their messages acknowledged), the restarted
    run's pane 0 of that window holds the rows of the messages delivered again (id 3)
    only. The first file keeps its rows; the second lands beside it; dead letters too."""
    base = str(tmp_path) if where == 'local' else request.getfixturevalue('gcs_bucket')
    out = f'{base}/out/a'
    _stream(out, [1, 2, 3], refused=[7])
    first = _files(out)
    rows_file = f'{out}-{WINDOW}-pane-0-on_time.jsonl'
    assert rows_file in first and len(first) == 2, sorted(first)
    with caplog.at_level(logging.INFO, logger='beamml'):
        _stream(out, [3], refused=[8])
    after = _files(out)
    assert {p: after.get(p) for p in first} == first   # every earlier file byte for byte
    new = sorted(set(after) - set(first))
    beside = f'{out}-{WINDOW}-pane-0-on_time-2.jsonl'
    assert beside in new and len(new) == 2, new
    assert [json.loads(x)['id'] for x in after[beside].splitlines()] == [3]
    assert [json.loads(x)['id'] for x in after[rows_file].splitlines()] == [1, 2, 3]
    letters = [json.loads(x)['record']['id'] for p in after if '-errors-' in p
               for x in after[p].splitlines()]
    assert sorted(letters) == [7, 8]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f'-> {beside}, beside {rows_file}, which exists already' in w
               for w in warned), warned
    assert not [p for p in after if '.tmp-' in p]   # no temporary file left


def _write(text: bytes):
    def write(fh):
        fh.write(text)
        return len(text)
    return write


def test_without_hard_links_a_name_is_taken_empty_then_filled(tmp_path, monkeypatch):
    """A file system without hard links (EPERM from link): the name is created with
    O_EXCL and the bytes renamed over it; a taken name is still never replaced."""
    def no_links(src, dst):
        raise OSError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(panes.os, 'link', no_links)
    path = str(tmp_path / 'p')
    (tmp_path / 'p-1').write_bytes(b'earlier\n')
    n, written = panes.write_new_file(lambda c: f'{path}-{c}', _write(b'new\n'))
    assert (n, written) == (4, f'{path}-2')
    assert (tmp_path / 'p-1').read_bytes() == b'earlier\n'
    assert (tmp_path / 'p-2').read_bytes() == b'new\n'
    assert sorted(os.listdir(tmp_path)) == ['p-1', 'p-2']


def test_another_file_system_looks_then_renames(tmp_path):
    """A file system with no create-if-absent in Beam's FileSystems: each name is looked
    at, the first free one gets the bytes, the taken ones keep theirs."""
    path = str(tmp_path / 'q')
    (tmp_path / 'q-1').write_bytes(b'earlier\n')
    temp = f'{path}-1.tmp'
    with open(temp, 'wb') as f:
        f.write(b'new\n')
    assert not panes._rename_if_absent(temp, f'{path}-1')
    assert panes._rename_if_absent(temp, f'{path}-2')
    assert (tmp_path / 'q-1').read_bytes() == b'earlier\n'
    assert (tmp_path / 'q-2').read_bytes() == b'new\n'
    assert sorted(os.listdir(tmp_path)) == ['q-1', 'q-2']
