"""TREC text files: run files (``q_id Q0 doc_id rank score tag``) and qrels
(``q_id iteration doc_id relevance``), read block by block into canonical batches.

Fields are separated by any run of blanks (spaces, tabs), as trec_eval reads them; a
blank line is skipped. A line with another number of fields, a score that is not a
finite number, a rank that is not an integer >= 0 (trec_eval orders a run by score and
ignores the rank, but it must be one) or a relevance that is not a finite number is a
dead letter (file, line, reason, the line as read). Lines are split with pyarrow's
string kernels over a whole block (no loop per line); a block with a byte sequence that
is not UTF-8 falls back to decoding its lines one by one to name the bad ones.
"""
from __future__ import annotations

import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from beamml.transforms.core.errors import ERRORS, RecordCounters
from beamml.transforms.core.objects import open_file
from beamml.transforms.io import RowReasons, match_input
from beamml.transforms.metrics.parsing import _np, parse_rank, parse_relevance

__all__ = ['RUN_FIELDS', 'QRELS_FIELDS', 'parse_trec_lines', 'read_trec_file', 'ReadTrecFiles']

RUN_FIELDS = ('q_id', 'Q0', 'doc_id', 'rank', 'score', 'tag')
QRELS_FIELDS = ('q_id', 'iteration', 'doc_id', 'relevance')
BLOCK_BYTES = 32 << 20


def _utf8(line: bytes) -> bool:
    try:
        line.decode('utf-8')
        return True
    except UnicodeDecodeError:
        return False


def _lines(data: bytes) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(the non-blank lines of ``data`` as a string array, their 0-based line numbers,
    whether each is not UTF-8: its text then has U+FFFD for the bad bytes)."""
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(ends) or ends[-1] != len(buf) - 1:
        ends = np.append(ends, len(buf))
    starts = np.r_[0, ends[:-1] + 1]
    offsets = np.empty(len(starts) + 1, np.int64)
    offsets[:-1], offsets[-1] = starts, len(buf)
    # each line ends before its newline: a zero-copy array of lines with their newlines,
    # then the blanks at both ends (the newline, a \r) trimmed
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts),
                                           [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    not_utf8 = np.zeros(len(starts), bool)
    try:
        text = arr.cast(pa.large_string())
    except pa.ArrowInvalid:   # not UTF-8 somewhere: the lines one by one (a rare block)
        raw = arr.to_pylist()
        not_utf8 = ~np.fromiter(map(_utf8, raw), bool, len(raw))
        text = pa.array([b.decode('utf-8', 'replace') for b in raw], pa.large_string())
    text = pc.utf8_trim_whitespace(text)
    number = np.arange(len(starts), dtype=np.int64)
    keep = _np(pc.not_equal(text, ''))
    if not keep.all():
        text, number, not_utf8 = text.filter(pa.array(keep)), number[keep], not_utf8[keep]
    return text, number, not_utf8


def parse_trec_lines(text: pa.Array, kind: str, not_utf8: np.ndarray | None = None,
                     ) -> tuple[dict[str, pa.Array], RowReasons]:
    """Split lines of a run (``kind='run'``) or qrels file into typed columns (a line
    ``not_utf8`` is refused).

    Returns ``({q_id, doc_id, score, rank} or {q_id, doc_id, relevance}, reasons)``;
    the values of refused rows are placeholders.
    """
    fields = RUN_FIELDS if kind == 'run' else QRELS_FIELDS
    n = len(text)
    split = pc.utf8_split_whitespace(text)
    count = _np(pc.list_value_length(split))
    why = RowReasons(n)
    if not_utf8 is not None:
        why.mark(not_utf8, 'the line is not UTF-8 text')
    why.mark(count != len(fields), f'a TREC {kind} line has {len(fields)} fields '
                                   f'({" ".join(fields)})')
    ok = count == len(fields)
    # lists of the wrong length padded so every field index exists
    safe = split if ok.all() else pc.if_else(
        pa.array(ok), split, pa.scalar([''] * len(fields), split.type))

    def field(name):
        return pc.list_element(safe, fields.index(name)).cast(pa.string())
    out = {'q_id': field('q_id'), 'doc_id': field('doc_id')}
    if kind == 'run':
        rank, missing, bad = parse_rank(field('rank'))
        why.mark(ok & (missing | bad), 'rank is not an integer >= 0')
        score, missing, bad = parse_relevance(field('score'))
        # parse_relevance also reads true/false: a score must be a number
        word = _np(pc.match_substring_regex(field('score'), '^[A-Za-z]'))
        why.mark(ok & (missing | bad | word), 'score is not a finite number')
        out.update(rank=pa.array(rank), score=pa.array(score))
    else:
        rel, missing, bad = parse_relevance(field('relevance'))
        word = _np(pc.match_substring_regex(field('relevance'), '^[A-Za-z]'))
        why.mark(ok & (missing | bad | word), 'relevance is not a finite number')
        out['relevance'] = pa.array(rel)
    return out, why


_SPACES = re.compile(b'  +')
_TO_SPACE = bytes.maketrans(b'\t\r\v\f', b'    ')


def _fast_block(block: bytes, kind: str):
    """(typed columns, reasons, number of lines) of a block read by pyarrow's CSV reader
    after its blanks are made single spaces, or None when the block needs the general
    path (a blank line, a line with another number of fields, a value the typed reader
    does not take, not UTF-8)."""
    fields = RUN_FIELDS if kind == 'run' else QRELS_FIELDS
    data = block.translate(_TO_SPACE)
    if b'  ' in data:
        data = _SPACES.sub(b' ', data)
    if b'\n ' in data or b' \n' in data:
        data = data.replace(b'\n ', b'\n').replace(b' \n', b'\n')
    if data.startswith(b' '):
        data = data[1:]
    if data.endswith(b' '):
        data = data[:-1]
    if not data or data.startswith(b'\n') or b'\n\n' in data:
        return None
    types = {'q_id': pa.string(), 'doc_id': pa.string(), 'Q0': pa.string(),
             'tag': pa.string(), 'iteration': pa.string(), 'rank': pa.int64(),
             'score': pa.float64(), 'relevance': pa.float64()}
    bad = []
    try:
        t = pcsv.read_csv(pa.py_buffer(data), read_options=pcsv.ReadOptions(
            column_names=list(fields), block_size=1 << 26),
            parse_options=pcsv.ParseOptions(delimiter=' ', quote_char=False,
                                            invalid_row_handler=lambda r: bad.append(r) or
                                            'skip'),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                                quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    n = data.count(b'\n') + (0 if data.endswith(b'\n') else 1)
    if bad or t.num_rows != n or any(t.column(c).null_count for c in t.column_names):
        return None
    why = RowReasons(n)
    out = {'q_id': t.column('q_id').combine_chunks(), 'doc_id': t.column('doc_id').combine_chunks()}
    if kind == 'run':
        rank = _np(t.column('rank').combine_chunks())
        score = _np(t.column('score').combine_chunks())
        why.mark(rank < 0, 'rank is not an integer >= 0')
        why.mark(~np.isfinite(score), 'score is not a finite number')
        out.update(rank=pa.array(rank), score=pa.array(np.where(np.isfinite(score), score, 0.0)))
    else:
        rel = _np(t.column('relevance').combine_chunks())
        why.mark(~np.isfinite(rel), 'relevance is not a finite number')
        out['relevance'] = pa.array(np.where(np.isfinite(rel), rel, 0.0))
    return out, why, n


def read_trec_file(path: str, kind: str, block_bytes: int = BLOCK_BYTES):
    """Yield (canonical batch with ``_file, _row, _line``, dead letters, lines read) per
    block of a TREC run or qrels file."""
    row = line0 = 0
    rest = b''
    with open_file(path) as f:
        while True:
            chunk = f.read(block_bytes)
            data = rest + chunk
            if not data:
                break
            cut = data.rfind(b'\n') + 1 if chunk else len(data)
            if cut == 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            fast = _fast_block(block, kind)
            if fast is not None:   # the usual file: pyarrow's CSV reader, one line a row
                cols, why, n = fast
                lines = np.arange(line0 + 1, line0 + n + 1, dtype=np.int64)
                text = None
            else:
                text, number, not_utf8 = _lines(block)
                lines = number + line0 + 1           # 1-based physical lines
                cols, why = parse_trec_lines(text, kind, not_utf8)
                n = len(text)
            line0 += block.count(b'\n') + (0 if block.endswith(b'\n') else 1)
            rows = np.arange(row, row + n, dtype=np.int64)
            row += n
            dead = []
            if why.refused.any():
                if text is None:   # the lines as read, of the refused rows only
                    text = _lines(block)[0]
                dead = why.dead_letters(pa.table({'line': text}), path, rows, lines)
                for d in dead:
                    d['record'] = d['record']['line']
            keep = np.flatnonzero(~why.refused)
            cols.update(_file=pa.repeat(pa.scalar(path, pa.string()), n), _row=pa.array(rows),
                        _line=pa.array(lines))
            batch = pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))
            if len(keep) < n:
                batch = batch.take(pa.array(keep))
            yield batch, dead, n
            if not chunk:
                break


class _ReadTrecFn(beam.DoFn):
    def __init__(self, kind: str):
        self.kind = kind
        self.counters = RecordCounters()

    def process(self, path: str):
        for batch, dead, n in read_trec_file(path, self.kind):
            self.counters.read.inc(n)
            self.counters.ok.inc(batch.num_rows)
            self.counters.refused.inc(len(dead))
            for d in dead:
                yield beam.pvalue.TaggedOutput(ERRORS, d)
            if batch.num_rows:
                yield batch


class ReadTrecFiles(beam.PTransform):
    """The files of a pattern, TREC run (``kind='run'``) or qrels: ``batches`` (columns
    ``q_id, doc_id, rank, score`` or ``q_id, doc_id, relevance``, strings and numbers,
    plus ``_file, _row, _line``) and ``errors`` (dead letters; counted as records read and
    refused). The pattern is matched when the transform is made (``paths`` given: not
    matched, e.g. for a dry run)."""

    def __init__(self, file_pattern: str, kind: str = 'run', paths=None,
                 label: str | None = None):
        super().__init__(label)
        if kind not in ('run', 'qrels'):
            raise ValueError(f"kind must be 'run' or 'qrels', got {kind!r}")
        self.kind = kind
        self.paths = (list(paths) if paths is not None
                      else [p for p, _ in match_input(file_pattern)])

    def expand(self, pbegin):
        return (pbegin
                | 'TrecPaths' >> beam.Create(self.paths, reshuffle=False)
                | 'SpreadTrecFiles' >> beam.Reshuffle()
                | 'ReadTrecLines' >> beam.ParDo(_ReadTrecFn(self.kind))
                .with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='batches'))
