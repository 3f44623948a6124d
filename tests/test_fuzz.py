"""Property-based fuzzing of the readers and of every pipeline's graph (Hypothesis).

Each example writes input files that mix good rows with malformed ones
(tests/fuzz_strategies.py knows what must become of every row), reads them in a
worker subprocess (a crash inside pyarrow fails the example instead of killing
pytest) and checks:

* the only exception is a one-line BeammlError, and only where the case allows one;
* records read == records ok + records refused == the rows written;
* every good row comes out exactly once, with its id and feature values;
* every refused row is a dead letter naming its file, data row, physical line
  (CSV / JSON lines; the CSV header is line 1) and a reason.

Budget: plain ``pytest`` runs a fixed number of derandomized examples (about a
minute on two cores). ``BEAMML_FUZZ_EXAMPLES=N`` (``make fuzz``) runs N random
examples per reader property and N // 40 per pipeline property.
"""
from __future__ import annotations

import glob
import json
import math
import os
import select
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from fuzz_ids import ID_CASES, PARQUET_ID_TYPES
from fuzz_strategies import CASES, Case, expected_id, write_case

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = int(os.environ.get('BEAMML_FUZZ_EXAMPLES', '0') or 0)
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])
if EXAMPLES:
    READER_SETTINGS = settings(max_examples=EXAMPLES, **_COMMON)
    PIPELINE_SETTINGS = settings(max_examples=max(2, EXAMPLES // 40), **_COMMON)
    PER_TYPE_SETTINGS = settings(max_examples=max(6, EXAMPLES // len(PARQUET_ID_TYPES)),
                                 **_COMMON)
else:   # `make test`: the same examples every run, within the time budget; a failure
    # is reported as found (shrinking it can take minutes: `make fuzz` shrinks)
    _CI = dict(derandomize=True, phases=[Phase.explicit, Phase.generate], **_COMMON)
    READER_SETTINGS = settings(max_examples=100, **_CI)
    PIPELINE_SETTINGS = settings(max_examples=3, **_CI)
    PER_TYPE_SETTINGS = settings(max_examples=6, **_CI)


# ----------------------------------------------------------------------------- worker

class Worker:
    """One long-lived ``python tests/fuzz_strategies.py``: a request per line, an
    answer per line. A crash or a hang fails the example and the next call starts
    a new worker."""

    def __init__(self):
        self.proc = None
        self.log = tempfile.NamedTemporaryFile(prefix='beamml-fuzz-worker-', suffix='.log',
                                               delete=False)

    def _start(self):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in env.get(
            'PYTHONPATH', '').split(os.pathsep) if p])
        env.setdefault('NO_GCE_CHECK', 'true')
        self.log.seek(0)
        self.log.truncate()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'fuzz_strategies.py')], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=ROOT)

    def _tail(self) -> str:
        self.log.flush()
        with open(self.log.name, 'rb') as f:
            return f.read()[-3000:].decode('utf-8', 'replace')

    def call(self, request: dict, timeout: float = 180) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write((json.dumps(request) + '\n').encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b''
        if not line:
            if not ready:
                self.proc.kill()
            rc = self.proc.wait()
            self.proc = None
            raise AssertionError(f'the reader process {"hung" if not ready else "crashed"} '
                                 f'(exit status {rc}) on {request}\n{self._tail()}')
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture(scope='module')
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp('fuzz')


_COUNTER = [0]


def _folder(scratch) -> str:
    _COUNTER[0] += 1
    return str(scratch / f'case{_COUNTER[0]}')


# ----------------------------------------------------------------------------- oracle

def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _key(case: Case, value):
    """Ids compared as text when the id type is allowed to fall back to strings."""
    if case.id_mode == 'int' and not case.int_ids and value is not None:
        return str(value)
    return value


def _rows(case: Case):
    return {(f.name, r.row): (f, r) for f in case.files for r in f.rows}


def _by_id(case: Case):
    out = {}
    for f in case.files:
        for r in f.rows:
            if r.id is not None or case.id_mode == 'none':
                out.setdefault(_key(case, expected_id(case, f, r)), (f, r))
    return out


def check_dead(case: Case, dead: list, attr: str, where: str) -> set:
    """Each dead letter names a row the oracle refuses (or leaves open), with its
    file, data row, physical line and a reason; returns the (file, row) refused."""
    rows = _rows(case)
    seen = set()
    for file, row, line, reason in dead:
        assert isinstance(reason, str) and reason.strip(), (where, 'no reason', file, row)
        assert file is not None and row is not None, (where, 'dead letter without a place',
                                                      file, row, reason)
        key = (os.path.basename(file), row)
        assert key not in seen, (where, 'refused twice', key, reason)
        seen.add(key)
        assert key in rows, (where, 'a dead letter for a row that was never written',
                             key, line, reason)
        f, r = rows[key]
        assert getattr(r, attr) in ('refused', 'either'), (
            where, f'a {r.kind} row refused', key, reason)
        want_line = r.line if case.fmt in ('csv', 'jsonl') else None
        assert line == want_line, (where, f'{r.kind} row {row} of {f.name}: line {line}, '
                                   f'expected physical line {want_line}', reason)
    return seen


def check_points(case: Case, got: dict, where: str) -> None:
    ids, feats = got['ids'], got['features']
    assert len(ids) == len(feats)
    if case.int_ids and ids:
        assert all(isinstance(i, int) for i in ids), (where, 'int ids read as', ids[:3])
    by_id = _by_id(case)
    out = set()
    for i, x in zip(ids, feats):
        k = _key(case, i)
        assert k not in out, (where, 'a row came out twice', i)
        out.add(k)
        assert k in by_id, (where, 'an id that was never written came out', i)
        f, r = by_id[k]
        assert r.expect in ('ok', 'either'), (where, f'a {r.kind} row came out',
                                              f.name, r.row, i)
        if r.values is not None:
            vals = [float.fromhex(v) for v in x]
            assert len(vals) == len(r.values) and all(map(_same, vals, r.values)), (
                where, f'row {r.row} of {f.name} came out with {vals}, written {r.values}')
    refused = check_dead(case, got['dead'], 'expect', where)
    came_out = {(by_id[k][0].name, by_id[k][1].row) for k in out}
    for f in case.files:
        for r in f.rows:
            key = (f.name, r.row)
            if r.expect == 'ok':
                assert key in came_out, (where, f'good {r.kind} row {r.row} of {f.name} '
                                         f'(line {r.line}) is missing', key in refused)
            elif r.expect == 'refused':
                assert key in refused, (where, f'{r.kind} row {r.row} of {f.name} '
                                        f'(line {r.line}) was not refused')
            assert not (key in came_out and key in refused), (where, 'out and refused', key)
    n = sum(len(f.rows) for f in case.files)
    assert len(ids) + len(got['dead']) == n, (where, f'{len(ids)} ok + {len(got["dead"])} '
                                              f'refused != {n} rows written')


def check_table(case: Case, got: dict, where: str) -> None:
    rows = _rows(case)
    out = set()
    for file, row, rid in got['ids']:
        key = (os.path.basename(file), row)
        assert key not in out, (where, 'a row came out twice', key)
        out.add(key)
        assert key in rows, (where, 'a row that was never written came out', key)
        f, r = rows[key]
        assert r.table in ('ok', 'either'), (where, f'a {r.kind} row came out', key)
        if r.id is not None and r.kind != 'big_int_id':   # text: see the report's question
            assert str(rid) == str(r.id), (where, 'id', key, rid, r.id)
    refused = check_dead(case, got['dead'], 'table', where)
    for key, (f, r) in rows.items():
        if r.table == 'ok':
            assert key in out, (where, f'{r.kind} row {key} (line {r.line}) is missing')
        elif r.table == 'refused':
            assert key in refused, (where, f'{r.kind} row {key} (line {r.line}) not refused')


def check_counts(case: Case, got: dict, where: str) -> None:
    n = sum(len(f.rows) for f in case.files)
    assert got['read'] == got['ok'] + got['refused'], (where, got['read'], got['ok'],
                                                       got['refused'])
    assert got['read'] == n, (where, f'records_read {got["read"]}, {n} rows written')


def check_error(case: Case, res: dict) -> bool:
    """True when the answer is an acceptable BeammlError; fails on anything else."""
    if 'exception' in res:
        raise AssertionError(f'not a BeammlError: {res["exception"]}\n{res["traceback"]}')
    if 'beamml_error' in res:
        msg = res['beamml_error']
        assert '\n' not in msg.strip(), f'a BeammlError of several lines: {msg!r}'
        assert 'bug in beamml' not in msg, msg
        if 'has no numeric column to use as features' in msg and \
                'feature_columns' not in case.kwargs:
            return True   # the head's values are mostly not numbers: say which to use
        if not any(f.rows for f in case.files):   # the whole input has no data row
            assert 'no data rows' in msg or case.may_error, msg
            return True
        assert case.may_error, f'BeammlError on input that should read: {msg}'
        return True
    return False


def run_reader_case(worker, scratch, case: Case) -> None:
    pattern = write_case(case, _folder(scratch))
    res = worker.call({'op': 'read', 'pattern': pattern, 'kwargs': case.kwargs,
                       'batch_rows': case.batch_rows, 'split_rows': case.split_rows})
    if check_error(case, res):
        return
    got = res['ok']
    check_points(case, got['whole'], 'read_table_files')
    check_points(case, got['points'], 'ReadPoints per file')
    check_counts(case, got['points'], 'ReadPoints per file')
    check_table(case, got['table'], 'ReadTable per file')
    check_counts(case, got['table'], 'ReadTable per file')


# ----------------------------------------------------------------------- reader tests

@READER_SETTINGS
@given(case=CASES['csv']())
def test_fuzz_csv_reader(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@READER_SETTINGS
@given(case=CASES['jsonl']())
def test_fuzz_jsonl_reader(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@READER_SETTINGS
@given(case=CASES['parquet']())
def test_fuzz_parquet_reader(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@READER_SETTINGS
@given(case=CASES['npy']())
def test_fuzz_npy_reader(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@pytest.mark.parametrize('first_type', PARQUET_ID_TYPES)
@PER_TYPE_SETTINGS
@given(data=st.data())
def test_fuzz_parquet_ids_of_every_type(worker, scratch, first_type, data):
    """Ids of every Arrow type (ints of every width, uint64 beyond int64, floats with
    NaN / inf / fractions, booleans, strings, dictionaries, bytes, nulls, dates,
    decimals, lists) in the first file, and of that or another type in later files: each
    good row comes out once with its id unchanged, every other row is a dead letter."""
    run_reader_case(worker, scratch, data.draw(ID_CASES['parquet'](first_type)))


@READER_SETTINGS
@given(case=ID_CASES['jsonl']())
def test_fuzz_jsonl_ids_of_every_kind(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@READER_SETTINGS
@given(case=ID_CASES['csv']())
def test_fuzz_csv_id_spellings(worker, scratch, case):
    run_reader_case(worker, scratch, case)


@READER_SETTINGS
@given(case=st.sampled_from(sorted(CASES)).flatmap(lambda fmt: CASES[fmt]()),
       damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                       min_size=1, max_size=4), cut=st.none() | st.floats(0, 1))
def test_fuzz_damaged_bytes_never_crash(worker, scratch, case, damage, cut):
    """Bytes overwritten or cut anywhere (headers, footers, pages): the reader may
    refuse rows or the file with a BeammlError, but never crashes or raises another
    exception, and what it reads it counts (read == ok + refused)."""
    for f in case.files:
        data = bytearray(f.data)
        for where, byte in damage:
            data[int(where * len(data))] = byte
        if cut is not None:
            data = data[:max(1, int(cut * len(data)))]
        f.data = bytes(data)
    pattern = write_case(case, _folder(scratch))
    res = worker.call({'op': 'read', 'pattern': pattern, 'kwargs': case.kwargs,
                       'batch_rows': case.batch_rows, 'split_rows': case.split_rows})
    if 'exception' in res:
        raise AssertionError(f'not a BeammlError: {res["exception"]}\n{res["traceback"]}')
    if 'beamml_error' in res:
        assert '\n' not in res['beamml_error'].strip(), res['beamml_error']
        return
    for mode in ('points', 'table'):
        got = res['ok'][mode]
        assert got['read'] == got['ok'] + got['refused'], (mode, got)
        for file, row, line, reason in got['dead']:
            assert file and row is not None and reason, (mode, file, row, reason)


# ---------------------------------------------------------------------- pipeline tests

def _argv(case: Case, pattern: str, *, allow_nan: bool = True) -> list[str]:
    argv = ['--input', pattern, '--max_refused_fraction', '1']
    kw = case.kwargs
    if kw.get('feature_columns'):
        argv += ['--feature_columns', ','.join(kw['feature_columns'])]
    if kw.get('id_column'):
        argv += ['--id_column', kw['id_column']]
    if kw.get('dimension'):
        argv += ['--dimension', str(kw['dimension'])]
    if kw.get('allow_nan') and allow_nan:
        argv += ['--allow_nan']
    return argv


def _dead_letters(pattern: str) -> list:
    out = []
    for p in sorted(glob.glob(pattern)):
        with open(p, encoding='utf-8') as f:
            out += [json.loads(ln) for ln in f if ln.strip()]
    return [[d['file'], d['row'], d['line'], d['reason']] for d in out]


def _parquet_rows(pattern: str) -> list[dict]:
    rows = []
    for p in sorted(glob.glob(pattern)):
        rows += pq.read_table(p).to_pylist()
    return rows


def _ok_rows(case: Case):
    return [(f, r) for f in case.files for r in f.rows if r.expect == 'ok']


def _pipeline_case(worker, scratch, case: Case, pipeline: str, argv: list[str]):
    folder = _folder(scratch)
    pattern = write_case(case, folder)
    out = os.path.join(folder, 'out', 'o')
    res = worker.call({'op': 'pipeline', 'pipeline': pipeline,
                       'argv': [a.replace('{input}', pattern).replace('{out}', out)
                                for a in argv]})
    return res, out, pattern


def _check_run_counts(case: Case, res: dict, n_out: int | None = None):
    counts = res['ok']['counts']
    assert counts is not None
    n = sum(len(f.rows) for f in case.files)
    assert counts['records_read'] == counts['records_ok'] + counts['records_refused'], counts
    assert counts['records_read'] == n, (counts, n)
    if n_out is not None:
        assert counts['records_ok'] == n_out, (counts, n_out)


def _point_cases():
    return st.sampled_from(sorted(CASES)).flatmap(lambda fmt: CASES[fmt](small=True,
                                                                          max_rows=5))


def _values_by_id(case: Case, rows: list[dict]):
    by_id = _by_id(case)
    got = {}
    for row in rows:
        k = _key(case, row['id'])
        assert k not in got, ('a row came out twice', row['id'])
        assert k in by_id, ('an id that was never written came out', row['id'])
        f, r = by_id[k]
        assert r.expect in ('ok', 'either'), (f'a {r.kind} row came out', f.name, r.row)
        got[k] = (r, row)
    for f, r in _ok_rows(case):
        assert _key(case, expected_id(case, f, r)) in got, (
            f'good {r.kind} row {r.row} of {f.name} is missing')
    return got


@PIPELINE_SETTINGS
@given(case=_point_cases())
def test_fuzz_norms_pipeline(worker, scratch, case):
    res, out, _ = _pipeline_case(worker, scratch, case, 'norms',
                                 _argv(case, '{input}') + ['--output', '{out}'])
    if check_error(case, res):
        return
    rows = _parquet_rows(out + '-?????-of-?????.parquet')
    for r, row in _values_by_id(case, rows).values():
        if r.values is None:
            continue
        x = np.asarray(r.values)
        with np.errstate(invalid='ignore', over='ignore'):
            want = {'l0': int(np.count_nonzero(x)), 'l1': np.abs(x).sum(),
                    # a NaN makes every norm NaN (numpy's rule; C's hypot(inf, nan) is inf)
                    'l2': math.nan if np.isnan(x).any() else math.hypot(*x),
                    'linf': np.abs(x).max()}
        for k, v in want.items():
            assert np.allclose(row[k], v, rtol=1e-9, equal_nan=True), (k, row, r.values)
    check_dead(case, _dead_letters(out + '-errors-*.jsonl'), 'expect', 'norms')
    _check_run_counts(case, res, len(rows))


@PIPELINE_SETTINGS
@given(case=_point_cases())
def test_fuzz_assign_pipeline(worker, scratch, case):
    from beamml.transforms.model import CentroidModel
    C = np.random.default_rng(len(case.files)).normal(size=(2, case.dimension))
    folder = _folder(scratch)
    CentroidModel(C).save(os.path.join(folder, 'model'))
    for f in case.files:   # NaN or inf let through by --allow_nan: assign cannot place it
        for r in f.rows:
            if r.kind == 'non_finite' and r.expect == 'ok':
                r.expect, r.values = 'refused', None
    res, out, _ = _pipeline_case(worker, scratch, case, 'assign', _argv(case, '{input}') + [
        '--model', os.path.join(folder, 'model'), '--output', '{out}'])
    if check_error(case, res):
        return
    rows = _parquet_rows(out + '-?????-of-?????.parquet')
    for r, row in _values_by_id(case, rows).values():
        if r.values is None or not np.isfinite(r.values).all():
            continue
        dist = np.linalg.norm(C - np.asarray(r.values), axis=1)
        assert np.isclose(row['distance'], dist.min(), rtol=1e-9, atol=1e-12), (row, dist)
        assert np.isclose(dist[row['cluster']], dist.min(), rtol=1e-9, atol=1e-12)
    check_dead(case, _dead_letters(out + '-errors-*.jsonl'), 'expect', 'assign')
    _check_run_counts(case, res, len(rows))


@PIPELINE_SETTINGS
@given(case=_point_cases())
def test_fuzz_kmeans_pipeline(worker, scratch, case):
    case.kwargs.pop('allow_nan', None)   # K-means refuses --allow_nan (a BeammlError)
    for f in case.files:
        for r in f.rows:
            if r.kind == 'non_finite' and r.expect == 'ok':
                r.expect, r.values = 'refused', None
    folder = _folder(scratch)
    res, _, _ = _pipeline_case(worker, scratch, case, 'kmeans', _argv(case, '{input}') + [
        '--k', '1', '--max_iter', '2', '--random_state', '0',
        '--model', os.path.join(folder, 'models')])
    n_ok = len(_ok_rows(case))
    if 'beamml_error' in res and n_ok == 0 and (
            'no valid point' in res['beamml_error'] or not any(
                r.expect == 'either' for f in case.files for r in f.rows)):
        return   # no point to train on (the 'either' rows were refused): a one-line error
    if check_error(case, res):
        return
    (training,) = glob.glob(os.path.join(folder, 'models', '*', 'training.json'))
    with open(training) as f:
        n_samples = json.load(f)['n_samples']
    n_either = sum(r.expect == 'either' for f in case.files for r in f.rows)
    assert n_ok <= n_samples <= n_ok + n_either, (n_samples, n_ok)
    check_dead(case, _dead_letters(os.path.join(folder, 'models', '*',
                                                'training-errors-*.jsonl')), 'expect',
               'kmeans')
    _check_run_counts(case, res, n_samples)


@PIPELINE_SETTINGS
@given(case=st.sampled_from(['csv', 'jsonl', 'parquet']).flatmap(
    lambda fmt: CASES[fmt](small=True, max_rows=5)))
def test_fuzz_index_ids_pipeline(worker, scratch, case):
    assume(case.id_mode != 'none')
    if case.fmt == 'csv':   # each column keeps the type the head of the first file gives
        # it (pyarrow's inference: a text column, or an int one that refuses 0.5): which
        # values fit is the head's call, checked in test_index.py; ids and structure here
        for f in case.files:
            for r in f.rows:
                r.table = 'either' if r.table == 'ok' else r.table
    res, out, _ = _pipeline_case(worker, scratch, case, 'index_ids', [
        '--input', '{input}', '--id_column', 'id', '--output', '{out}',
        '--max_refused_fraction', '1'])
    if check_error(case, res):
        return
    id2idx = _parquet_rows(out + '-id2idx-?????-of-?????.parquet')
    encoded = _parquet_rows(out + '-encoded-?????-of-?????.parquet')
    must = {_key(case, r.id) for f in case.files for r in f.rows if r.table == 'ok'}
    may = {_key(case, r.id) for f in case.files for r in f.rows if r.table == 'either'}
    got = [_key(case, d['id']) for d in id2idx]
    assert len(set(got)) == len(got), ('an id numbered twice', got)
    assert must <= set(got) <= must | may | {None}, (sorted(map(repr, must)),
                                                     sorted(map(repr, got)))
    assert sorted(d['idx'] for d in id2idx) == list(range(len(got)))
    if not may:   # first_seen: idx by first appearance, files in name order
        order = [_key(case, r.id) for f in case.files for r in f.rows if r.table == 'ok']
        assert [d['id'] for d in sorted(id2idx, key=lambda d: d['idx'])] == [
            _key(case, i) for i in order] or [
            _key(case, d['id']) for d in sorted(id2idx, key=lambda d: d['idx'])] == order
    check_dead(case, _dead_letters(out + '-errors-*.jsonl'), 'table', 'index_ids')
    _check_run_counts(case, res, len(encoded))


@PIPELINE_SETTINGS
@given(case=st.sampled_from(sorted(ID_CASES)).flatmap(lambda fmt: ID_CASES[fmt]()))
def test_fuzz_index_ids_ids_of_every_type(worker, scratch, case):
    """``beamml index_ids`` on ids of every type: id2idx numbers exactly the good ids,
    with their values and type unchanged; every other row is a dead letter."""
    res, out, _ = _pipeline_case(worker, scratch, case, 'index_ids', [
        '--input', '{input}', '--id_column', 'id', '--output', '{out}',
        '--max_refused_fraction', '1'])
    if check_error(case, res):
        return
    id2idx = _parquet_rows(out + '-id2idx-?????-of-?????.parquet')
    encoded = _parquet_rows(out + '-encoded-?????-of-?????.parquet')
    must = [r.id for f in case.files for r in f.rows if r.table == 'ok']
    may = [r.id for f in case.files for r in f.rows if r.table == 'either']
    got = [d['id'] for d in sorted(id2idx, key=lambda d: d['idx'])]
    assert all(type(g) is (int if case.int_ids else str) for g in got), got
    assert set(must) <= set(got) <= set(must) | set(may), (must, got)
    assert len(got) == len(set(got)) and sorted(d['idx'] for d in id2idx) == list(
        range(len(got)))
    if not may:   # first_seen: files in name order, rows in file order
        assert got == must
    assert sorted(map(repr, (d['id'] for d in encoded))) == sorted(map(repr, got))
    check_dead(case, _dead_letters(out + '-errors-*.jsonl'), 'table', 'index_ids')
    _check_run_counts(case, res, len(encoded))


LABELS = {'good': [0, 1], 'bad': ['maybe', 2, -1, 'yes?'], 'missing': [None]}


@st.composite
def evaluate_logs(draw):
    """Classification logs: (format, file bytes, [(truth, prediction) or None for a
    refused row]) with labels 0/1, values that are not labels, nulls and missing keys."""
    import io

    import pyarrow as pa
    fmt = draw(st.sampled_from(['csv', 'jsonl', 'parquet']))
    n = draw(st.integers(1, 8))
    rows, expect = [], []
    for _ in range(n):
        kind_t = draw(st.sampled_from(['good'] * 4 + ['bad', 'missing']))
        kind_p = draw(st.sampled_from(['good'] * 4 + ['bad', 'missing']))
        t = draw(st.sampled_from(LABELS[kind_t]))
        p = draw(st.sampled_from(LABELS[kind_p]))
        drop = fmt == 'jsonl' and draw(st.integers(0, 3)) == 0 and (
            kind_t == 'missing' or kind_p == 'missing')
        rows.append((t, p, drop))
        expect.append((t, p) if kind_t == kind_p == 'good' else None)
    if fmt == 'parquet':
        buf = io.BytesIO()
        pq.write_table(pa.table({'truth': [str(t) if t is not None else None
                                           for t, _, _ in rows],
                                 'prediction': [str(p) if p is not None else None
                                                for _, p, _ in rows]}), buf)
        data = buf.getvalue()
    elif fmt == 'csv':
        data = ('truth,prediction\n' + ''.join(
            f'{"" if t is None else t},{"" if p is None else p}\n' for t, p, _ in rows)).encode()
    else:
        lines = []
        for t, p, drop in rows:
            obj = {'truth': t, 'prediction': p}
            if drop:
                obj = {k: v for k, v in obj.items() if v is not None}
            lines.append(json.dumps(obj))
        data = ('\n'.join(lines) + '\n').encode()
    return fmt, data, expect


@PIPELINE_SETTINGS
@given(logs=evaluate_logs())
def test_fuzz_evaluate_pipeline(worker, scratch, logs):
    fmt, data, expect = logs
    folder = _folder(scratch)
    os.makedirs(folder)
    path = os.path.join(folder, f'logs.{fmt}')
    with open(path, 'wb') as f:
        f.write(data)
    out = os.path.join(folder, 'eval')
    res = worker.call({'op': 'pipeline', 'pipeline': 'evaluate', 'argv': [
        '--input', path, '--task', 'classification', '--output', out,
        '--max_refused_fraction', '1']})
    case = Case(fmt, [], {}, 'none', 0)
    if fmt == 'jsonl':   # a key that no line holds is a missing column: a one-line error
        keys = set().union(*(json.loads(ln) for ln in data.splitlines() if ln.strip()))
        if keys != {'truth', 'prediction'}:
            case.may_error = 'a column no line holds'
    if check_error(case, res):
        return
    with open(os.path.join(out, 'metrics.json')) as f:
        doc = json.load(f)
    good = [e for e in expect if e is not None]
    assert doc['counts'] == {'records_read': len(expect), 'records_ok': len(good),
                             'records_refused': len(expect) - len(good)}, (doc['counts'], expect)
    conf = doc['overall']['confusion']
    assert conf == {'tp': sum(t == p == 1 for t, p in good), 'fp': sum(t == 0 and p == 1
                                                                       for t, p in good),
                    'tn': sum(t == p == 0 for t, p in good), 'fn': sum(t == 1 and p == 0
                                                                       for t, p in good)}
