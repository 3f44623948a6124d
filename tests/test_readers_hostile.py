"""Hostile input to the readers: invalid UTF-8, binary files, physical lines, header-only
input, ids beyond int64, another dimension in a later file, a later file missing a column,
ids of every type, a byte order mark, long lines, inputs that are not regular files."""
from __future__ import annotations

import decimal
import glob
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import inspect_input, read_file_batches, read_table_files
from beamml.transforms.io.rows import table_checks
from inprocess import run_beamml

BAD_A = b'id,a,b\n1,2,3\n2,\xff4,5\n3,6,7\n'
BAD_ID = b'id,a,b\n1,2,3\n\xff2,4,5\n3,6,7\n'


def _file(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _table_read(pattern, **kw):
    """What ReadTable does for each file: the reader, then table_checks."""
    paths, layout = inspect_input(pattern, need_features=False, **kw)
    rows, dead = [], []
    for path in paths:
        for item in read_file_batches(path, layout):
            if isinstance(item, dict):
                dead.append(item)
                continue
            out, dl = table_checks(item, layout, path, False)
            dead.extend(dl)
            if out is not None:
                rows.extend(out.to_pylist())
    return rows, dead


def _cli(argv, tmp_path):
    argv = [a.replace('{dir}', str(tmp_path)) for a in argv]
    if argv[0] != 'evaluate':
        argv += ['--max_refused_fraction', '1']
    if argv[0] == 'kmeans':
        argv += ['--model', str(tmp_path / 'model')]
    else:
        argv += ['--output', str(tmp_path / 'out' / 'r')]
    out = run_beamml(*argv)
    # as the terminal gets it (a lone surrogate, which no terminal could get, fails here)
    return out.returncode, out.stdout, out.stderr.encode('utf-8')


def _one_line_error(rc, err: bytes) -> str:
    text = err.decode('ascii')   # never a raw byte on the terminal
    assert rc == 2, text[-2000:]
    assert 'Traceback' not in text and 'Exception ignored' not in text, text[-2000:]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(ln.isprintable() for ln in lines), text
    assert sum('error' in ln for ln in lines) == 1 and 'error' in lines[-1], text
    return lines[-1]


# ------------------------------------------------------------ 1. invalid UTF-8 in a value

@pytest.mark.parametrize('kw', [{}, {'feature_columns': ['a', 'b']}])
def test_csv_invalid_utf8_value_refuses_the_row_and_keeps_the_column(tmp_path, kw):
    path = _file(tmp_path, 'u.csv', BAD_A)
    _, layout = inspect_input(path, **kw)
    assert layout.feature_columns == ('a', 'b') and layout.id_type == 'int64'
    table, dead = read_table_files(path, **kw)
    assert table.column('id').to_pylist() == [1, 3]
    assert table.column('features').to_pylist() == [[2.0, 3.0], [6.0, 7.0]]
    (d,) = dead
    assert (d['file'], d['row'], d['line']) == (path, 1, 3)
    assert d['reason'] == 'invalid UTF-8 at byte 2'
    assert d['record'] == '2,\\xff4,5'


def test_csv_invalid_utf8_in_the_id(tmp_path):
    path = _file(tmp_path, 'u.csv', BAD_ID)
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 3]
    assert [(d['row'], d['line'], d['reason'], d['record']) for d in dead] == [
        (1, 3, 'invalid UTF-8 at byte 0', '\\xff2,4,5')]


@pytest.mark.parametrize('data', [BAD_A, BAD_ID])
def test_csv_invalid_utf8_in_a_table_read_refuses_the_row_not_the_file(tmp_path, data):
    path = _file(tmp_path, 'u.csv', data)
    for kw in ({}, {'id_column': 'id'}):
        rows, dead = _table_read(path, **kw)
        assert [r['id'] for r in rows] == [1, 3]
        assert [(d['row'], d['line']) for d in dead] == [(1, 3)]
        assert 'invalid UTF-8' in dead[0]['reason'] and '\\xff' in dead[0]['record']
        assert all(isinstance(v, (int, float, str)) for r in rows for v in r.values())


def test_csv_invalid_utf8_in_a_later_block_and_a_row_of_too_few_fields(tmp_path):
    # pyarrow's invalid-row handler must never see bytes that are not UTF-8 (it
    # prints "Exception ignored ... UnicodeDecodeError" and gives up on the file).
    n = 50_000
    body = b''.join(b'%d,%d,%d\n' % (i, i, i) for i in range(n))
    path = _file(tmp_path, 'big.csv', b'id,a,b\n' + body + b'7\xfe\n' + b'8,\xc3(,1\n9,9,9\n')
    import beamml.transforms.io.csvio as csvio
    old = csvio._BLOCK_BYTES
    csvio._BLOCK_BYTES = 1 << 16
    try:
        table, dead = read_table_files(path)
    finally:
        csvio._BLOCK_BYTES = old
    assert table.num_rows == n + 1
    assert [(d['row'], d['line'], d['reason'], d['record']) for d in dead] == [
        (n, n + 2, 'invalid UTF-8 at byte 1', '7\\xfe'),
        (n + 1, n + 3, 'invalid UTF-8 at byte 2', '8,\\xc3(,1')]


def test_index_ids_cli_refuses_the_row_with_invalid_utf8(tmp_path):
    _file(tmp_path, 'u.csv', BAD_A)
    rc, out, err = _cli(['index_ids', '--input', '{dir}/u.csv', '--id_column', 'id'], tmp_path)
    assert rc == 0, err.decode('utf-8', 'replace')[-2000:]
    (errors,) = glob.glob(str(tmp_path / 'out' / 'r-errors-*.jsonl'))
    dead = [json.loads(ln) for ln in open(errors)]
    assert [(d['row'], d['line'], d['record']) for d in dead] == [(1, 3, '2,\\xff4,5')]


# ------------------------------------------------------------ 2. binary files

def test_binary_garbage_named_csv_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    data = b'\xff' + data  # the header cannot be UTF-8 by chance
    _file(tmp_path, 'bin.csv', data)
    rc, _, err = _cli(['norms', '--input', '{dir}/bin.csv'], tmp_path)
    line = _one_line_error(rc, err)
    assert re.search(r'bin\.csv is not a text CSV file \(invalid UTF-8 in its header at '
                     r'byte 0\)$', line), line


@pytest.mark.parametrize('data, why', [
    (b'\xff\xfei\x00d\x00,\x00a\x00\n\x001\x00,\x002\x00\n\x00', 'invalid UTF-8 in its header'),
    ('id,a\n1,2\n'.encode('utf-16-le'), 'NUL bytes in its header'),
    (b'id,\x1b[31ma\n1,2\n', 'control byte 0x1b in its header'),
])
def test_a_csv_that_is_not_text_is_refused_with_the_file_named(tmp_path, data, why):
    path = _file(tmp_path, 'w.csv', data)
    with pytest.raises(BeammlError) as e:
        inspect_input(path)
    msg = str(e.value)
    assert msg.startswith(f'{path} is not a text CSV file (') and why in msg, msg
    assert msg.isprintable() and '\n' not in msg


def test_a_later_binary_csv_of_a_glob_is_one_line_naming_it(tmp_path):
    _file(tmp_path, 'd/a.csv', b'id,a,b\n1,2,3\n')
    _file(tmp_path, 'd/b.csv', b'\x00\xff\x1b' * 500)
    rc, _, err = _cli(['norms', '--input', '{dir}/d/*.csv'], tmp_path)
    line = _one_line_error(rc, err)
    assert 'b.csv is not a text CSV file (invalid UTF-8 in its header at byte 1)' in line, line


def test_csv_rows_of_binary_after_a_text_header_are_dead_letters(tmp_path):
    # pyarrow's handler of a row of the wrong number of fields must never see bytes
    # that are not UTF-8: each such row is refused, its bytes escaped
    path = _file(tmp_path, 'h.csv', b'id,a,b\n\xfa\xfb\n1,2,3\n\xfc,\xfd\n\x00\x01,1,2\n')
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == ['1', '\x00\x01']   # text, so a text id
    assert [(d['row'], d['line'], d['reason'], d['record']) for d in dead] == [
        (0, 2, 'invalid UTF-8 at byte 0', '\\xfa\\xfb'),
        (2, 4, 'invalid UTF-8 at byte 0', '\\xfc,\\xfd')]


@pytest.mark.parametrize('name, data', [
    ('t.parquet', 'parquet-truncated'),
    ('g.parquet', b'PAR1' + b'\xff\x00' * 200),
    ('g.npy', b'\x93NUMPY\x01\x00\x10\x00' + b'\xff' * 16 + b'\x00' * 100),
    ('r.npy', bytes(range(256)) * 4),
])
def test_garbage_parquet_and_npy_are_one_line_naming_the_file(tmp_path, name, data):
    if data == 'parquet-truncated':
        full = tmp_path / 'full.parquet'
        pq.write_table(pa.table({'id': list(range(100)), 'a': [1.0] * 100}), str(full))
        data = full.read_bytes()[:-30]
    _file(tmp_path, name, data)
    rc, _, err = _cli(['norms', '--input', '{dir}/' + name], tmp_path)
    line = _one_line_error(rc, err)
    assert name in line, line


def test_npy_truncated_body_is_one_line(tmp_path):
    path = tmp_path / 'cut.npy'
    np.save(str(path), np.ones((100, 3)))
    path.write_bytes(path.read_bytes()[:-100])
    rc, _, err = _cli(['norms', '--input', str(path)], tmp_path)
    line = _one_line_error(rc, err)
    assert 'cut.npy' in line and 'truncated' in line, line


# ------------------------------------------------------------ 3. physical lines

@pytest.mark.parametrize('eol', [b'\n', b'\r\n'])
def test_csv_dead_letters_carry_the_physical_line(tmp_path, eol):
    data = b'id,a,b\n1,2,3\n\n2,4,x\n3,"6\n",7\n4,y,1\n'.replace(b'\n', eol)
    path = _file(tmp_path, 'l.csv', data)
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 3]
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (1, 4, "value in 'b' is not a number"), (3, 7, "value in 'a' is not a number")]


def test_csv_lines_of_every_row_of_a_batch(tmp_path):
    data = (b'\n\nid,a\n1,2\n\n\n2,"x\ny\nz"\n3,4\r\n\r\n4,5\r5,6\n'
            b'6,7,8\n7,"a""b\nc"\n8,"say ""hi""",\n9,ab"c\n10,"1"x"\n11,1')
    path = _file(tmp_path, 'm.csv', data)
    _, layout = inspect_input(path, need_features=False)
    items = list(read_file_batches(path, layout))
    lines, rows = [], []
    for it in items:
        if isinstance(it, dict):
            lines.append(it['line'])
            rows.append(it['row'])
        else:
            lines.extend(it.lines.tolist())
            rows.extend(it.rows.tolist())
    # a record's line is where it starts; a lone \r ends a line as pyarrow reads it;
    # a quote inside an unquoted field is a character (rows 8 and 9)
    assert sorted(zip(rows, lines)) == [(0, 4), (1, 7), (2, 10), (3, 12), (4, 13), (5, 14),
                                        (6, 15), (7, 17), (8, 18), (9, 19), (10, 20)]


def test_csv_lines_across_blocks_with_quoted_newlines(tmp_path):
    import beamml.transforms.io.csvio as csvio
    n = 3000
    body = b''.join(b'%d,"v\n%d",%d\n' % (i, i, i) for i in range(n))
    path = _file(tmp_path, 'q.csv', b'id,s,a\n' + body + b'x,"bad",1\n')
    old = csvio._BLOCK_BYTES
    csvio._BLOCK_BYTES = 1000
    try:
        table, dead = read_table_files(path, feature_columns=['a'], id_column='s')
    finally:
        csvio._BLOCK_BYTES = old
    assert table.num_rows == n + 1 and dead == []
    _, layout = inspect_input(path, need_features=False)
    csvio._BLOCK_BYTES = 1000
    try:
        items = [it for it in read_file_batches(path, layout)]
    finally:
        csvio._BLOCK_BYTES = old
    lines = np.concatenate([it.lines for it in items])
    np.testing.assert_array_equal(lines, np.arange(n + 1) * 2 + 2)


# ------------------------------------------------------------ 4. no data rows

@pytest.mark.parametrize('files', [
    {'h.csv': b'id,a,b\n'},
    {'h1.csv': b'id,a,b\n', 'h2.csv': b'id,a,b\r\n\r\n'},
    {'e.jsonl': b'\n\n'},
    {'z.parquet': 'empty-parquet'},
    {'z.npy': 'empty-npy'},
])
def test_input_without_data_rows_is_one_error(tmp_path, files):
    for name, data in files.items():
        if data == 'empty-parquet':
            pq.write_table(pa.table({'id': pa.array([], pa.int64()),
                                     'a': pa.array([], pa.float64())}), str(tmp_path / name))
        elif data == 'empty-npy':
            np.save(str(tmp_path / name), np.zeros((0, 3)))
        else:
            _file(tmp_path, name, data)
    pattern = str(tmp_path / '*')
    n = len(files)
    for need in (True, False):
        with pytest.raises(BeammlError) as e:
            inspect_input(pattern, need_features=need)
        assert str(e.value) == f'{pattern}: no data rows ({n} file(s), header only / empty)'


@pytest.mark.parametrize('argv', [
    ['norms', '--input', '{dir}/h.csv'],
    ['index_ids', '--input', '{dir}/h.csv', '--id_column', 'id'],
    ['evaluate', '--input', '{dir}/h.csv', '--task', 'classification'],
])
def test_header_only_cli_says_no_data_rows(tmp_path, argv):
    _file(tmp_path, 'h.csv', b'id,a,b\n')
    rc, _, err = _cli(argv, tmp_path)
    line = _one_line_error(rc, err)
    assert line.endswith('h.csv: no data rows (1 file(s), header only / empty)'), line


def test_header_only_first_file_takes_the_layout_from_the_next(tmp_path):
    _file(tmp_path, 'd/a.csv', b'id,a,b\n')
    _file(tmp_path, 'd/b.csv', b'id,a,b\n1,2,3\n2,4,5\n')
    (tmp_path / 'n').mkdir()
    np.save(str(tmp_path / 'n' / 'a.npy'), np.zeros((0, 4)))
    np.save(str(tmp_path / 'n' / 'b.npy'), np.ones((2, 4)))
    paths, layout = inspect_input(str(tmp_path / 'd' / '*.csv'))
    assert len(paths) == 2 and layout.feature_columns == ('a', 'b')
    assert layout.id_type == 'int64'
    table, dead = read_table_files(str(tmp_path / 'd' / '*.csv'))
    assert table.column('id').to_pylist() == [1, 2] and dead == []
    table, dead = read_table_files(str(tmp_path / 'n' / '*.npy'))
    assert table.num_rows == 2 and dead == []


# ------------------------------------------------------------ 5. ids beyond int64

def test_csv_id_beyond_int64_in_a_later_file_is_a_dead_letter(tmp_path):
    _file(tmp_path, 'd/i1.csv', b'id,a\n1,2\n')
    p2 = _file(tmp_path, 'd/i2.csv', b'id,a\n99999999999999999999,2\n5,3\n'
               b'-9223372036854775808,1\n9223372036854775808,1\n0009223372036854775807,1\n')
    pattern = str(tmp_path / 'd' / 'i*.csv')
    rows, dead = _table_read(pattern, id_column='id')
    # (the rows of a block read again as text keep their text: ids checked, not cast)
    assert [int(r['id']) for r in rows] == [1, 5, -9223372036854775808, 9223372036854775807]
    assert [(d['file'], d['row'], d['line'], d['reason']) for d in dead] == [
        (p2, 0, 2, 'id is out of the int64 range'), (p2, 3, 5, 'id is out of the int64 range')]
    table, dead = read_table_files(pattern)
    assert table.column('id').to_pylist() == [1, 5, -9223372036854775808, 9223372036854775807]
    assert [d['reason'] for d in dead] == ['id is out of the int64 range'] * 2


def test_csv_id_beyond_int64_in_the_first_file(tmp_path):
    path = _file(tmp_path, 'i.csv', b'id,a\n1,2\n99999999999999999999,2\n3,4\n')
    _, layout = inspect_input(path)
    assert layout.id_type == 'int64'
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 3]
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (1, 3, 'id is out of the int64 range')]


@pytest.mark.parametrize('first', [b'{"id": 1, "a": 2}\n', b''])
def test_jsonl_id_beyond_int64_costs_its_line_only(tmp_path, first):
    # pyarrow reads a block with such an id as float64: the ids that are exact
    # integers are kept, the others refused
    path = _file(tmp_path, 'j.jsonl', first + b'{"id": 99999999999999999999, "a": 3}\n'
                 b'{"id": 4, "a": 5}\n{"id": -7, "a": 8}\n')
    _, layout = inspect_input(path)
    assert layout.id_type == 'int64'
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == ([1] if first else []) + [4, -7]
    k = 1 if first else 0
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (k, k + 1, 'id is out of the int64 range')]


def test_jsonl_a_fractional_id_after_the_head_costs_its_line_only(tmp_path, monkeypatch):
    import beamml.transforms.io.jsonio as jsonio
    monkeypatch.setattr(jsonio, '_HEAD_LINES', 2)
    path = _file(tmp_path, 'j.jsonl', b'{"id": 1, "a": 2}\n{"id": 2, "a": 2}\n'
                 b'{"id": 1.5, "a": 3}\n{"id": 4, "a": 5}\n{"id": 9007199254740993, "a": 1}\n')
    _, layout = inspect_input(path)
    assert layout.id_type == 'int64'
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 2, 4]
    assert [(d['row'], d['reason']) for d in dead] == [
        (2, 'id is not an integer (a number with a fraction)'),
        (4, 'id is not exactly an integer (read as a float)')]


def test_index_ids_cli_id_beyond_int64_in_a_later_file(tmp_path):
    _file(tmp_path, 'd/i1.csv', b'id,a\n1,2\n')
    _file(tmp_path, 'd/i2.csv', b'id,a\n99999999999999999999,2\n')
    rc, out, err = _cli(['index_ids', '--input', '{dir}/d/i*.csv', '--id_column', 'id'],
                        tmp_path)
    assert rc == 0, err.decode('utf-8', 'replace')[-2000:]
    (errors,) = glob.glob(str(tmp_path / 'out' / 'r-errors-*.jsonl'))
    dead = [json.loads(ln) for ln in open(errors)]
    assert [(d['row'], d['reason']) for d in dead] == [(0, 'id is out of the int64 range')]


def test_any_arrow_error_of_the_typed_csv_read_falls_back_to_text(tmp_path, monkeypatch):
    import beamml.transforms.io.csvio as csvio
    path = _file(tmp_path, 'a.csv', b'id,a\n1,2\n2,3\n')
    real = csvio.pcsv.read_csv

    def flaky(source, *a, convert_options=None, **kw):
        types = convert_options.column_types if convert_options else {}
        if any(t != pa.string() for t in types.values()):
            raise pa.ArrowInvalid('Failed to parse string: something else')
        return real(source, *a, convert_options=convert_options, **kw)
    monkeypatch.setattr(csvio.pcsv, 'read_csv', flaky)
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 2] and dead == []


# ------------------------------------------------------------ 6. another dimension

def test_npy_glob_with_another_dimension(tmp_path):
    d = tmp_path / 'd'
    d.mkdir()
    np.save(str(d / 'n1.npy'), np.ones((4, 3)))
    np.save(str(d / 'n2.npy'), np.ones((2, 5)))
    table, dead = read_table_files(str(d / '*.npy'))
    assert table.num_rows == 4
    assert [(d_['file'].rsplit('/', 1)[1], d_['row'], d_['line'], d_['reason'])
            for d_ in dead] == [('n2.npy', 0, None, 'dimension 5, expected 3'),
                                ('n2.npy', 1, None, 'dimension 5, expected 3')]


def test_parquet_and_jsonl_with_another_dimension_in_a_later_file(tmp_path):
    pq.write_table(pa.table({'features': pa.array([[1.0, 2.0, 3.0]] * 2,
                                                  pa.list_(pa.float64(), 3))}),
                   str(tmp_path / 'p1.parquet'))
    pq.write_table(pa.table({'features': pa.array([[1.0] * 5], pa.list_(pa.float64(), 5))}),
                   str(tmp_path / 'p2.parquet'))
    table, dead = read_table_files(str(tmp_path / 'p*.parquet'))
    assert table.num_rows == 2 and [d['reason'] for d in dead] == ['dimension 5, expected 3']
    _file(tmp_path, 'j1.jsonl', b'{"features": [1, 2, 3]}\n')
    _file(tmp_path, 'j2.jsonl', b'{"features": [1, 2, 3, 4, 5]}\n')
    table, dead = read_table_files(str(tmp_path / 'j*.jsonl'))
    assert table.num_rows == 1 and [(d['row'], d['line'], d['reason']) for d in dead] == [
        (0, 1, 'dimension 5, expected 3')]


@pytest.mark.parametrize('argv', [['norms', '--order', 'l2'], ['kmeans', '--k', '2']])
def test_npy_another_dimension_cli_does_not_crash(tmp_path, argv):
    d = tmp_path / 'd'
    d.mkdir()
    np.save(str(d / 'n1.npy'), np.arange(12.0).reshape(4, 3))
    np.save(str(d / 'n2.npy'), np.ones((2, 5)))
    rc, out, err = _cli([argv[0], '--input', '{dir}/d/*.npy'] + argv[1:], tmp_path)
    assert rc == 0, err.decode('utf-8', 'replace')[-3000:]
    (errors,) = (glob.glob(str(tmp_path / 'out' / 'r-errors-*.jsonl'))
                 or glob.glob(str(tmp_path / 'model' / '*' / 'training-errors-*.jsonl')))
    assert [json.loads(ln)['reason'] for ln in open(errors)] == ['dimension 5, expected 3'] * 2


# ------------------------------------------------------------ 7. a later file lacks a column

def test_a_later_csv_missing_a_feature_column_is_one_line(tmp_path):
    _file(tmp_path, 'd/a.csv', b'id,a,b\n1,2,3\n')
    _file(tmp_path, 'd/b.csv', b'id,a\n2,3\n')
    rc, _, err = _cli(['norms', '--input', '{dir}/d/*.csv'], tmp_path)
    line = _one_line_error(rc, err)
    assert re.search(r"b\.csv has no column 'b'; its columns are id, a", line), line


# ------------------------------------------------------------ 8. ids: integers or strings
# (issue 18, section 3: never changed). The oracle is the rule, written out value by value.

def _both_reads(pattern, **kw):
    """(ids, dead letters as (file, row, reason)) of ReadPoints' read and of ReadTable's:
    they must agree."""
    table, dead = read_table_files(pattern, **kw)
    rows, tdead = _table_read(pattern, id_column='id')
    got = (table.column('id').to_pylist(),
           [(d['file'].rsplit('/', 1)[1], d['row'], d['reason']) for d in dead])
    assert [r['id'] for r in rows] == got[0]
    assert [(d['file'].rsplit('/', 1)[1], d['row'], d['reason']) for d in tdead] == got[1]
    return got


_NAN, _INF = float('nan'), float('inf')
FRACTION = 'id is not an integer (a number with a fraction)'
OUT = 'id is out of the int64 range'
# (arrow column of the first file, ids that come out, reasons of the others by row)
PARQUET_IDS = {
    'int8': (pa.array([1, -2, None], pa.int8()), [1, -2], {2: 'missing id'}),
    'uint32': (pa.array([4294967295], pa.uint32()), [4294967295], {}),
    'uint64': (pa.array([1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1], pa.uint64()),
               [1, 2 ** 63 - 1], {2: OUT, 3: OUT}),
    'float16': (pa.array(np.array([1.0, 2.5, np.nan, np.inf], np.float16)), [1],
                {1: FRACTION, 2: 'id is not an integer (NaN)',
                 3: 'id is not an integer (infinite)'}),
    'float64': (pa.array([1.0, -7.0, 1.5, _NAN, -_INF, 2.0 ** 53, 1e300]), [1, -7],
                {2: FRACTION, 3: 'id is not an integer (NaN)',
                 4: 'id is not an integer (infinite)',
                 5: 'id is not exactly an integer (read as a float)', 6: OUT}),
    'decimal': (pa.array([decimal.Decimal('3.00'), decimal.Decimal('3.50')],
                         pa.decimal128(10, 2)), [3], {1: FRACTION}),
    'decimal38': (pa.array([decimal.Decimal(5), decimal.Decimal(2 ** 63)],
                           pa.decimal128(38, 0)), [5], {1: OUT}),
    'bool': (pa.array([True, False]), [], {0: 'id is a boolean', 1: 'id is a boolean'}),
    'string': (pa.array(['a', ' ', '']), ['a'], {1: 'empty id', 2: 'empty id'}),
    'large_string': (pa.array(['a', 'b'], pa.large_string()), ['a', 'b'], {}),
    'dictionary': (pa.array(['a', 'b', 'a']).dictionary_encode(), ['a', 'b', 'a'], {}),
    'binary': (pa.array([b'a']), [], {0: 'id is bytes, not an integer or a string'}),
    'null': (pa.nulls(2), [], {0: 'missing id', 1: 'missing id'}),
    'date': (pa.array([1], pa.date32()), [],
             {0: 'id is a date32[day], not an integer or a string'}),
    'timestamp': (pa.array([1], pa.timestamp('ms')), [],
                  {0: 'id is a timestamp[ms], not an integer or a string'}),
    'list': (pa.array([[1]]), [], {0: 'id is not a string (a list)'}),
}


@pytest.mark.parametrize('name', sorted(PARQUET_IDS))
def test_parquet_ids_of_every_arrow_type(tmp_path, name):
    ids, good, reasons = PARQUET_IDS[name]
    pq.write_table(pa.table({'id': ids, 'x0': np.arange(len(ids), dtype=float)}),
                   str(tmp_path / 'a.parquet'))
    got, dead = _both_reads(str(tmp_path / 'a.parquet'))
    assert got == good and all(type(g) is type(w) for g, w in zip(got, good))
    assert dead == [('a.parquet', r, why) for r, why in sorted(reasons.items())]


def test_parquet_ids_of_another_type_in_a_later_file_are_refused_not_cast(tmp_path):
    pq.write_table(pa.table({'id': [1, 2], 'x0': [0.0, 0.0]}), str(tmp_path / 'a.parquet'))
    pq.write_table(pa.table({'id': ['7', 'x'], 'x0': [0.0, 0.0]}), str(tmp_path / 'b.parquet'))
    pq.write_table(pa.table({'id': pa.array([3], pa.int16()), 'x0': [0.0]}),
                   str(tmp_path / 'c.parquet'))
    assert _both_reads(str(tmp_path / '*.parquet')) == ([1, 2, 3], [
        ('b.parquet', 0, 'id is a string, the id column holds integers'),
        ('b.parquet', 1, 'id is not an integer')])
    pq.write_table(pa.table({'id': ['u'], 'x0': [0.0]}), str(tmp_path / 's1.parquet'))
    pq.write_table(pa.table({'id': [1], 'x0': [0.0]}), str(tmp_path / 's2.parquet'))
    assert _both_reads(str(tmp_path / 's*.parquet')) == (['u'], [
        ('s2.parquet', 0, 'id is a number, the id column holds strings')])


def test_parquet_uint64_ids_above_int64_are_dead_letters_not_a_traceback(tmp_path):
    pq.write_table(pa.table({'id': pa.array([1, 2 ** 63, 2 ** 64 - 1], pa.uint64()),
                             'x0': [1.0, 2.0, 3.0]}), str(tmp_path / 'u.parquet'))
    for argv in (['norms'], ['index_ids', '--id_column', 'id']):
        where = tmp_path / argv[0]
        rc, out, err = _cli([argv[0], '--input', str(tmp_path / 'u.parquet')] + argv[1:], where)
        assert rc == 0 and b'Traceback' not in err, err.decode('utf-8', 'replace')[-3000:]
        assert 'records_read=3 records_ok=1 records_refused=2' in out
        (errors,) = glob.glob(str(where / 'out' / 'r-errors-*.jsonl'))
        dead = [json.loads(ln) for ln in open(errors)]
        assert [(d['row'], d['reason'], d['record']['id']) for d in dead] == [
            (1, OUT, 2 ** 63), (2, OUT, 2 ** 64 - 1)]


def test_jsonl_ids_of_every_kind(tmp_path):
    # the head's ids are numbers (booleans, lists and nulls aside): integer ids
    _file(tmp_path, 'a.jsonl', b'{"id": 1, "x0": 0}\n{"id": 2.0, "x0": 0}\n{"id": 1.5, "x0": 0}\n'
          b'{"id": NaN, "x0": 0}\n{"id": true, "x0": 0}\n{"id": null, "x0": 0}\n'
          b'{"id": [1], "x0": 0}\n{"id": 9223372036854775808, "x0": 0}\n{"id": 1e300, "x0": 0}\n')
    _file(tmp_path, 'b.jsonl', b'{"id": "7", "x0": 0}\n{"id": "x", "x0": 0}\n{"id": 3, "x0": 0}\n')
    _, layout = inspect_input(str(tmp_path / '*.jsonl'))
    assert layout.id_type == 'int64'
    assert _both_reads(str(tmp_path / '*.jsonl')) == ([1, 2, 3], [
        ('a.jsonl', 2, FRACTION), ('a.jsonl', 3, 'id is not an integer (NaN)'),
        ('a.jsonl', 4, 'id is a boolean'), ('a.jsonl', 5, 'missing id'),
        ('a.jsonl', 6, 'id is not an integer (a JSON list)'), ('a.jsonl', 7, OUT),
        ('a.jsonl', 8, OUT),
        ('b.jsonl', 0, 'id is a string, the id column holds integers'),
        ('b.jsonl', 1, 'id is not an integer')])
    # a string among the head's ids: string ids, and no number becomes one
    _file(tmp_path, 's.jsonl', b'{"id": "a", "x0": 0}\n{"id": 1, "x0": 0}\n{"id": 1.5, "x0": 0}\n'
          b'{"id": true, "x0": 0}\n{"id": "NaN", "x0": 0}\n{"id": "2020-01-01", "x0": 0}\n')
    number = 'id is a number, the id column holds strings'
    assert _both_reads(str(tmp_path / 's.jsonl')) == (['a', 'NaN', '2020-01-01'], [
        ('s.jsonl', 1, number), ('s.jsonl', 2, number), ('s.jsonl', 3, 'id is a boolean')])


def test_csv_ids_are_their_text(tmp_path):
    # integers in the head: integer ids; any other text later is refused, not made one
    _file(tmp_path, 'a.csv', b'id,x0\n1,0\n007,0\n -3 ,0\n')
    _file(tmp_path, 'b.csv', b'id,x0\n1.0,0\ntrue,0\nx,0\n,0\n4,0\n')
    assert _both_reads(str(tmp_path / '*.csv')) == ([1, 7, -3, 4], [
        ('b.csv', 0, 'id is not an integer'), ('b.csv', 1, 'id is not an integer'),
        ('b.csv', 2, 'id is not an integer'), ('b.csv', 3, 'missing id')])
    # text that is not all integers: the ids are the text as written
    _file(tmp_path, 't.csv', b'id,x0\n1.0,0\n2,0\ntrue,0\n')
    assert _both_reads(str(tmp_path / 't.csv')) == (['1.0', '2', 'true'], [])


def test_dictionary_encoded_ids_and_features(tmp_path):
    from beamml.transforms.io import Layout, RowBatch, to_points
    pq.write_table(pa.table({'id': pa.array(['a', 'b', 'a']).dictionary_encode(),
                             'x0': [1.0, 2.0, 3.0]}), str(tmp_path / 'd.parquet'))
    table, dead = read_table_files(str(tmp_path / 'd.parquet'))
    assert table.column('id').to_pylist() == ['a', 'b', 'a'] and dead == []
    # a dictionary-encoded feature column (an Arrow batch, e.g. a Pub/Sub message)
    layout = Layout('parquet', ('id', 'x0', 'f'), 'id', 'string', ('x0', 'f'), False, 2)
    batch = pa.RecordBatch.from_arrays(
        [pa.array(['p', 'q']), pa.array([1.5, 2.5]).dictionary_encode(),
         pa.array(['3', 'x']).dictionary_encode()], names=['id', 'x0', 'f'])
    out, dead = to_points(RowBatch(batch, np.arange(2), None), layout, 'm')
    assert out.column('features').to_pylist() == [[1.5, 3.0]]
    assert [d['reason'] for d in dead] == ["value in 'f' is not a number"]


def test_a_csv_integer_id_with_a_plus_sign_in_a_text_block(tmp_path):
    # '+5' is an integer (INT_RE) but not to pyarrow's cast: a traceback before
    _file(tmp_path, 'p1.csv', b'id,x0\n1,1\n')
    _file(tmp_path, 'p2.csv', b'id,x0\n+5,2\nz,3\n')
    assert _both_reads(str(tmp_path / 'p*.csv')) == ([1, 5], [
        ('p2.csv', 1, 'id is not an integer')])


# ------------------------------------------------------------ 9. text as read, any length

def test_a_jsonl_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = _file(tmp_path, 'b.jsonl', b'\xef\xbb\xbf{"id": 1, "x0": 1.0}\n{"id": 2, "x0": 2.0}\n')
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == [1, 2] and dead == []
    path = _file(tmp_path, 'c.jsonl', b'\xef\xbb\xbf{"id": 1, "x0": 1.0}\n{"id": 2, "x0": "a"}\n')
    _, dead = read_table_files(path)
    assert [(d['row'], d['line']) for d in dead] == [(1, 2)]


def test_a_10_mb_json_line_and_a_12_mb_csv_header_are_read(tmp_path):
    big = 'a' * 10_000_000
    for first in (True, False):   # the head (the layout) and the reader
        lines = [json.dumps({'id': 1, 'x0': 1.0, 'note': big}), json.dumps({'id': 2, 'x0': 2.0})]
        path = _file(tmp_path, f'j{first}.jsonl',
                     ('\n'.join(lines if first else lines[::-1]) + '\n').encode())
        table, dead = read_table_files(path)
        assert sorted(table.column('id').to_pylist()) == [1, 2] and dead == []
        rows, dead = _table_read(path)
        assert sorted(len(r['note'] or '') for r in rows) == [0, 10_000_000] and dead == []
    name = 'n' * 12_000_000
    path = _file(tmp_path, 'h.csv', f'id,x0,{name}\n1,2.5,3\n2,3.5,4\n'.encode())
    table, dead = read_table_files(path, feature_columns=['x0'])
    assert table.column('features').to_pylist() == [[2.5], [3.5]] and dead == []
    rows, dead = _table_read(path)
    assert [r[name] for r in rows] == [3, 4]


def test_a_csv_number_beyond_float64_is_quoted_as_written(tmp_path):
    path = _file(tmp_path, 'o.csv', b'id,x0\n1,1.5\n2,1e400\n3,-1e999\n')
    _, dead = read_table_files(path)
    assert [(d['reason'], d['record']) for d in dead] == [
        ('infinite feature value', {'id': '2', 'x0': '1e400'}),
        ('infinite feature value', {'id': '3', 'x0': '-1e999'})]
    rc, out, err = _cli(['index_ids', '--input', path, '--id_column', 'id'], tmp_path)
    assert rc == 0, err.decode('utf-8', 'replace')[-3000:]
    (errors,) = glob.glob(str(tmp_path / 'out' / 'r-errors-*.jsonl'))
    assert [(d['row'], d['reason'], d['record']) for d in map(json.loads, open(errors))] == [
        (1, "value in 'x0' is out of the float64 range", {'id': 2, 'x0': '1e400'}),
        (2, "value in 'x0' is out of the float64 range", {'id': 3, 'x0': '-1e999'})]


# ------------------------------------------------------------ 10. inputs that are not files

def test_a_glob_with_no_folder_reads_the_current_folder(tmp_path):
    """Beam lists the folder before a pattern's first wildcard: for 'part*.csv' that is '',
    which held nothing (exit 4, "no file matches"); the current folder is meant."""
    _file(tmp_path, 'part-1.csv', b'id,x0\n1,2\n')
    _file(tmp_path, 'part-2.csv', b'id,x0\n2,3\n')
    for argv, says in (
            (['norms', '--output', 'res/n'], 'records_read=2 records_ok=2'),
            (['index_ids', '--id_column', 'id', '--output', 'res/i'],
             'records_read=2 records_ok=2'),
            (['kmeans', '--streaming', '--k', '1', '--dimension', '1', '--watch_interval', '0.2',
              '--stop_after', '4', '--window_size', '1', '--model', 'res/m'],
             'read ./part-2.csv: 1 rows accepted')):   # (a stream lists ./: it says so)
        out = run_beamml(argv[0], '--input', 'part*.csv', *argv[1:], cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert says in out.stdout + out.stderr, (argv, out.stdout, out.stderr[-3000:])
    # the files as the pattern spells them, in the run's record and in the dead letters
    _file(tmp_path, 'part-3.csv', b'id,x0\n3,nan\n')
    out = run_beamml('norms', '--input', 'part*.csv', '--output', 'res/n2',
                     '--max_refused_fraction', '1', cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (errors,) = (tmp_path / 'res').glob('n2-errors-*.jsonl')
    assert [json.loads(ln)['file'] for ln in open(errors)] == ['part-3.csv']
    done = json.loads((tmp_path / 'res' / 'n2-_SUCCESS').read_text())
    assert sorted(i['path'] for i in done['inputs']) == ['part-1.csv', 'part-2.csv', 'part-3.csv']


def test_dev_zero_and_a_fifo_are_not_regular_files(tmp_path):
    import os
    os.mkfifo(str(tmp_path / 'f.csv'))   # nothing writes to it: reading it would block
    for argv, what in ((['--input', '/dev/zero', '--input_format', 'csv'],
                        r'/dev/zero is not a regular file \(a character device\)'),
                       (['--input', '{dir}/f.csv'], r'f\.csv is not a regular file \(a FIFO\)'),
                       (['--input', '{dir}/*.csv'], r'f\.csv is not a regular file \(a FIFO\)')):
        rc, _, err = _cli(['norms'] + argv, tmp_path)
        line = _one_line_error(rc, err)
        assert re.search(what, line), line


def test_broken_symbolic_links_of_a_glob_are_named(tmp_path):
    import os
    _file(tmp_path, 'd/a.csv', b'id,x0\n1,2\n')
    os.symlink(str(tmp_path / 'd' / 'loop.csv'), str(tmp_path / 'd' / 'loop.csv'))
    rc, _, err = _cli(['norms', '--input', '{dir}/d/*.csv'], tmp_path)
    line = _one_line_error(rc, err)
    assert re.search(r'd/loop\.csv is a broken symbolic link', line), line
    os.remove(str(tmp_path / 'd' / 'loop.csv'))
    os.symlink(str(tmp_path / 'nowhere.csv'), str(tmp_path / 'd' / 'gone.csv'))
    rc, _, err = _cli(['norms', '--input', '{dir}/d/*.csv'], tmp_path)
    line = _one_line_error(rc, err)
    assert re.search(r'd/gone\.csv is a broken symbolic link', line), line
    with pytest.raises(BeammlError, match=r'd/gone\.csv is a broken symbolic link'):
        inspect_input(str(tmp_path / 'd' / 'gone.csv'))
    rc, _, err = _cli(['norms', '--input', '{dir}/d/gone.csv'], tmp_path)   # not "no input yet"
    line = _one_line_error(rc, err)
    assert re.search(r'd/gone\.csv is a broken symbolic link', line), line
    os.remove(str(tmp_path / 'd' / 'gone.csv'))
    rc, out, err = _cli(['norms', '--input', '{dir}/d/*.csv'], tmp_path)
    assert rc == 0 and 'records_read=1 records_ok=1' in out
