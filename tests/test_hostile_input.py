"""Hostile input: no input crashes the process, no row is lost silently."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beamml.transforms.io import read_table_files
from inprocess import run_beamml

CRASHER = b'{"id":"a","features":[1,2]}\n42\nnull\n'


def test_json_lines_that_are_not_objects_do_not_crash_the_process(tmp_path):
    """Once a SIGSEGV inside pyarrow (a payload whose first line is `null`): a new
    process, so that a crash fails this test instead of killing the suite."""
    path = tmp_path / 'bad.jsonl'
    path.write_bytes(CRASHER)
    code = ('import sys, json; from beamml.transforms.io import read_table_files; '
            't, dead = read_table_files(sys.argv[1]); '
            'print(json.dumps([t.num_rows, [(d["line"], d["reason"]) for d in dead]]))')
    out = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    n, dead = json.loads(out.stdout)
    assert n == 1
    assert dead == [[2, 'invalid JSON line: line is not a JSON object'],
                    [3, 'invalid JSON line: line is not a JSON object']]


@pytest.mark.parametrize('lines, bad', [
    ([b'null', b'{"id":"a","features":[1,2]}'], {1: 'line is not a JSON object'}),
    ([b'{"id":"a","features":[1,2]}', b'null', b'{"id":"b","features":[3,4]}'],
     {2: 'line is not a JSON object'}),
    ([b'{"id":"a","features":[1,2]}', b'[1,2]', b'"x"', b'true', b'7'],
     {2: 'not a JSON object', 3: 'not a JSON object', 4: 'not a JSON object',
      5: 'not a JSON object'}),
    ([b'{"id":"a","features":[1,2]}', b'{"id":"b\xff","features":[3,4]}'],
     {2: 'invalid UTF-8'}),
])
def test_each_bad_json_line_is_a_dead_letter(lines, bad, tmp_path):
    path = tmp_path / 'x.jsonl'
    path.write_bytes(b'\n'.join(lines) + b'\n')
    table, dead = read_table_files(str(path))
    assert {d['line']: d['reason'] for d in dead}.keys() == bad.keys()
    for d in dead:
        assert bad[d['line']] in d['reason'] and d['file'] == str(path)
        assert d['row'] == d['line'] - 1
    assert table.num_rows + len(dead) == len(lines)   # read == ok + refused
    if any(b'\xff' in ln for ln in lines):
        (d,) = dead
        assert '\\xff' in d['record']   # the byte shown escaped


# ------------------------------------------------------------------ the CLI table
def _npy(shape) -> bytes:
    import io

    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.arange(np.prod(shape), dtype=np.float64).reshape(shape))
    return buf.getvalue()


def _model_json(d: int) -> bytes:
    from beamml.transforms.model import CentroidModel
    return CentroidModel([[0.0] * d, [1.0] * d], version='v1').to_json().encode()


def _parquet(columns: dict) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table({k: pa.array(v, getattr(pa, t)()) for k, (t, v) in columns.items()}),
                   buf)
    return buf.getvalue()


# Not a text file: every byte value, in a fixed shuffled order (no randomness in tests).
GARBAGE = bytes((i * 151 + 17) % 256 for i in range(3000))
LOGS = b'truth,prediction\n1,0\n0,0\n'
ALL = ['--max_refused_fraction', '1']   # count the refused rows instead of failing
# (files, argv after `beamml`, exit code, pattern: the last stderr line for exit 2,
#  the record summary on stdout for exit 0). One row per case of issue 8, sections 1-2.
CLI_CASES = [
    # --- 1. crashes and silent losses: refused rows are counted, the run goes on
    ({'c.jsonl': CRASHER}, ['norms', '--input', '{dir}/c.jsonl'], 2,
     r'2 of 3 records \(66\.67%\) were refused, above --max_refused_fraction=0\.01; '
     r'nothing was committed to \S+/out; see \S+/\.beamml-refused-out-\S+/out-errors-\*\.jsonl$'),
    ({'c.jsonl': CRASHER}, ['norms', '--input', '{dir}/c.jsonl', *ALL], 0,
     r'records_read=3 records_ok=1 records_refused=2'),
    ({'c.jsonl': CRASHER}, ['index_ids', '--input', '{dir}/c.jsonl', '--id_column', 'id', *ALL],
     0, r'records_read=3 records_ok=1 records_refused=2'),
    ({'c.jsonl': CRASHER, 'm/v1/model.json': _model_json(2), 'm/LATEST': b'v1\n'},
     ['assign', '--input', '{dir}/c.jsonl', '--model', '{dir}/m', *ALL], 0,
     r'records_read=3 records_ok=1 records_refused=2'),
    ({'c.jsonl': CRASHER + b'{"id":"b","features":[3,4]}\n'},
     ['kmeans', '--input', '{dir}/c.jsonl', '--k', '1', '--model', '{dir}/km', *ALL], 0,
     r'records_read=4 records_ok=2 records_refused=2'),
    ({'l.jsonl': b'{"truth":1,"prediction":1}\n42\nnull\n'},
     ['evaluate', '--input', '{dir}/l.jsonl', '--task', 'classification', *ALL], 0,
     r'records_read=3 records_ok=1 records_refused=2'),
    ({'u.csv': b'id,a,b\n1,2,3\n2,\xff4,5\n3,6,7\n'}, ['norms', '--input', '{dir}/u.csv', *ALL],
     0, r'records_read=3 records_ok=2 records_refused=1'),
    ({'u.jsonl': b'{"id":"a","features":[1,2]}\n{"id":"b\xff","features":[3,4]}\n'},
     ['norms', '--input', '{dir}/u.jsonl', *ALL], 0,
     r'records_read=2 records_ok=1 records_refused=1'),
    ({'bin.csv': GARBAGE}, ['norms', '--input', '{dir}/bin.csv'], 2,
     r'bin\.csv is not a .*'),
    ({'n1.npy': _npy((4, 3)), 'n2.npy': _npy((2, 5))}, ['norms', '--input', '{dir}/n*.npy', *ALL],
     0, r'records_read=6 records_ok=4 records_refused=2'),
    ({'n1.npy': _npy((4, 3)), 'n2.npy': _npy((2, 5))},
     ['norms', '--input', '{dir}/n*.npy', '--order', 'l2', *ALL], 0,
     r'records_read=6 records_ok=4 records_refused=2'),
    ({'n1.npy': _npy((4, 3)), 'n2.npy': _npy((2, 5))},
     ['kmeans', '--input', '{dir}/n*.npy', '--k', '2', '--model', '{dir}/km', *ALL], 0,
     r'records_read=6 records_ok=4 records_refused=2'),
    ({'l.jsonl': b'{"truth":1,"prediction":1}\n{bad\n{"truth":0}\n{"truth":1,"prediction":0}\n'},
     ['evaluate', '--input', '{dir}/l.jsonl', '--task', 'classification', *ALL], 0,
     r'records_read=4 records_ok=2 records_refused=2'),
    ({'l.jsonl': b'{"truth":1,"prediction":1}\n{bad\n{"truth":0}\n'},
     ['evaluate', '--input', '{dir}/l.jsonl', '--task', 'classification', *ALL], 0,
     r'records_read=3 records_ok=1 records_refused=2'),
    ({'h.csv': b'id,a,b\n'}, ['norms', '--input', '{dir}/h.csv'], 2, r'no data rows'),
    ({'h.csv': b'truth,prediction\n'},
     ['evaluate', '--input', '{dir}/h.csv', '--task', 'classification'], 2, r'no data rows'),
    ({'h.csv': b'id,a\n'}, ['index_ids', '--input', '{dir}/h.csv', '--id_column', 'id'], 2,
     r'no data rows'),
    ({'a.csv': b'id,a\n1,2\n', 'b.csv': b'id,a\n'}, ['norms', '--input', '{dir}/[ab].csv'], 0,
     r'records_read=1 records_ok=1 records_refused=0'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', 'nan'], 2,
     r'--max_refused_fraction'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', '-0.1'], 2,
     r'--max_refused_fraction'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', '1.5'], 2,
     r'--max_refused_fraction'),
    ({'p.csv': b'id,a\n1,2\n'}, ['norms', '--input', '{dir}/p.csv', '--streaming'], 2,
     r'runs in batch only: --streaming is not supported'),
    # --- 2. one line, exit 2
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--output', '{dir}/p.csv/out'], 2,
     r'^beamml norms: error: --output .*p\.csv/out: .*p\.csv is a file, not a folder$'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['index_ids', '--input', '{dir}/p.csv', '--id_column', 'id',
      '--output', '{dir}/p.csv/deeper/out'], 2,
     r'--output .*: .*p\.csv is a file, not a folder$'),
    ({'l.csv': LOGS}, ['evaluate', '--input', '{dir}/l.csv', '--task', 'classification',
                       '--output', '{dir}/l.csv/eval/'], 2,
     r'--output .*l\.csv/eval/: .*l\.csv is a file, not a folder$'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--output', '/proc/beamml-no-such/out'], 2,
     r'--output /proc/beamml-no-such/out: cannot create the folder /proc/beamml-no-such'),
    ({'p.csv': b'id,a\n1,2\n2,3\n'},
     ['kmeans', '--input', '{dir}/p.csv', '--k', '1', '--model', '{dir}/p.csv/m'], 2,
     r'--model .*p\.csv/m: .*p\.csv is a file, not a folder$'),
    ({'l.csv': b'truth,prediction,q_id,predicted_rank,truth_relevance\n1,0,1,0,1\n'},
     ['evaluate', '--input', '{dir}/l.csv', '--task', 'ranking', '--query_buckets', '0'], 2,
     r'--query_buckets'),
    ({'dup.csv': b'id,a,a\n1,2,3\n'}, ['norms', '--input', '{dir}/dup.csv'], 2,
     r"names column 'a' more than once"),
    ({'f.csv': b'id,x0,x1\n1,2,3\n'},
     ['norms', '--input', '{dir}/f.csv', '--feature_columns', 'id,x0'], 2,
     r"the id column 'id' cannot also be a feature column \(--feature_columns\)"),
    ({'a.csv': b'id,x0,x1\n1,2,3\n', 'b.csv': b'id,x0\n2,3\n'},
     ['norms', '--input', '{dir}/[ab].csv'], 2, r'b\.csv.*x1'),
    ({'i1.csv': b'id,a\n1,2\n', 'i2.csv': b'id,a\n99999999999999999999,2\n3,4\n'},
     ['index_ids', '--input', '{dir}/i*.csv', '--id_column', 'id', *ALL], 0,
     r'records_read=3 records_ok=2 records_refused=1'),
    # --- issue 18: types that change silently, inputs that are not files
    ({'u.parquet': _parquet({'id': ('uint64', [1, 2 ** 63, 2 ** 64 - 1]), 'x': ('float64',
                                                                              [1., 2., 3.])})},
     ['norms', '--input', '{dir}/u.parquet', *ALL], 0,
     r'records_read=3 records_ok=1 records_refused=2'),
    ({'b.jsonl': b'\xef\xbb\xbf{"id":1,"x":1.0}\n{"id":2,"x":2.0}\n'},
     ['norms', '--input', '{dir}/b.jsonl', *ALL], 0,
     r'records_read=2 records_ok=2 records_refused=0'),
    ({}, ['norms', '--input', '/dev/zero', '--input_format', 'csv'], 2,
     r'input file /dev/zero is not a regular file \(a character device\)$'),
]


def _case_id(case):
    files, argv, code, pattern = case
    return f'{argv[0]}:{"+".join(sorted(files))}:{code}:{pattern[:24]}'


@pytest.mark.parametrize('files, argv, code, pattern', CLI_CASES,
                         ids=[_case_id(c) for c in CLI_CASES])
def test_cli_table(files, argv, code, pattern, tmp_path):
    """Each case: the exit code, no traceback, and one line saying what happened."""
    import re
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    argv = [a.replace('{dir}', str(tmp_path)) for a in argv]
    if '--output' not in argv and argv[0] != 'kmeans':   # kmeans writes into --model
        argv += ['--output', str(tmp_path / 'out')]
    out = run_beamml(*argv)
    err = out.stderr.strip()
    assert out.returncode == code, (out.returncode, err[-2000:])
    assert 'Traceback' not in err and 'Exception ignored' not in err, err[-2000:]
    # nothing of the input reaches the terminal raw: no invalid UTF-8 (a lone surrogate
    # would not encode), no control characters
    assert not [c for c in out.stderr if ord(c) < 32 and c not in '\n\t'], err[-2000:]
    out.stderr.encode('utf-8')
    if code == 2:
        last = err.splitlines()[-1]
        assert re.search(pattern, last), last
        assert sum(1 for ln in err.splitlines() if 'error' in ln) == 1, err
    else:
        assert re.search(pattern, out.stdout), (out.stdout, err[-2000:])


_beamml = run_beamml


def test_missing_output_bucket_is_one_line_before_the_run(gcs_bucket, tmp_path):
    (tmp_path / 'p.csv').write_bytes(b'id,a\n1,2\n')
    missing = gcs_bucket + '-missing'
    for argv in (['norms', '--output', f'{missing}/out/n'],
                 ['kmeans', '--k', '1', '--model', f'{missing}/models']):
        out = _beamml(argv[0], '--input', tmp_path / 'p.csv', *argv[1:])
        err = out.stderr.strip()
        assert out.returncode == 2 and 'Traceback' not in err, err[-2000:]
        assert err.splitlines()[-1].endswith(
            f'the bucket {missing} does not exist'), err
        assert 'records_read' not in out.stdout   # found before anything ran


def test_a_rerun_removes_the_shards_of_an_earlier_run(tmp_path):
    """Unsorted and sorted: `PREFIX-*` holds this run's shards only, and the run says
    what it removed; the same shard count twice removes nothing (Beam skips a final
    file that already holds the same bytes: it is still this run's)."""
    import glob
    (tmp_path / 'p.csv').write_bytes(b'id,a\n' + b''.join(b'%d,%d\n' % (i, i) for i in range(9)))
    prefix = tmp_path / 'out' / 'n'

    def run(*flags):
        out = _beamml('norms', '--input', tmp_path / 'p.csv', '--output', prefix,
                      '--overwrite', *flags)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr, sorted(os.path.basename(p) for p in glob.glob(f'{prefix}-*'))

    import os
    run('--num_shards', '3')
    log, files = run('--num_shards', '2')
    assert files == ['n-00000-of-00002.parquet', 'n-00001-of-00002.parquet', 'n-_SUCCESS',
                     'n-errors-00000-of-00001.jsonl']
    assert 'removed 3 file(s) of an earlier run' in log and 'n-00002-of-00003' in log
    log, files = run('--num_shards', '2')
    assert 'removed' not in log and len(files) == 4
    log, files = run('--num_shards', '1', '--output_format', 'csv')
    assert files == ['n-00000-of-00001.csv', 'n-_SUCCESS', 'n-errors-00000-of-00001.jsonl']
    log, files = run('--order', 'l2', '--num_shards', '2')
    assert files == ['n-00000-of-00002.parquet', 'n-00001-of-00002.parquet', 'n-_SUCCESS',
                     'n-errors-00000-of-00001.jsonl']
    assert 'n-00000-of-00001.csv' in log


def test_failed_kmeans_leaves_no_version_and_names_its_dead_letters(tmp_path):
    import glob
    import json
    import os
    models = tmp_path / 'models'
    (tmp_path / 'many.csv').write_bytes(b'id,a,b\n1,2,3\n2,x,5\n3,6,7\n4,1,1\n')
    (tmp_path / 'one.csv').write_bytes(b'id,a,b\n1,2,3\n2,x,5\n')
    (tmp_path / 'good.csv').write_bytes(b'id,a,b\n1,2,3\n')
    cases = [  # (file, k, flags, pattern of the message, refused rows kept)
        ('many.csv', 2, [], r'1 of 4 records \(25\.00%\) were refused, above '
         r'--max_refused_fraction=0\.01; see (\S+); no model version was written$', 1),
        ('one.csv', 2, ['--max_refused_fraction', '1'],
         r'k=2 is greater than the number of distinct points \(1 among 1 rows\); use a '
         r'smaller k; no model version was written; 1 of 2 records were refused, '
         r'see (\S+)$', 1),
        ('good.csv', 2, [], r'k=2 is greater than the number of distinct points '
         r'\(1 among 1 rows\); use a smaller k; no model version was written$', 0),
    ]
    import re
    for name, k, flags, pattern, n_refused in cases:
        out = _beamml('kmeans', '--input', tmp_path / name, '--k', k,
                      '--model', models, *flags)
        err = out.stderr.strip()
        assert out.returncode == 2 and 'Traceback' not in err, err[-2000:]
        m = re.search(pattern, err.splitlines()[-1])
        assert m, err
        if n_refused:
            letters = [json.loads(ln) for f in glob.glob(m.group(1)) for ln in open(f)]
            assert len(letters) == n_refused and letters[0]['line'] == 3
            assert f'{models}/_failed/' in m.group(1)
    # no version folder, no LATEST, nothing of Beam's temporary files
    assert sorted(os.listdir(models)) == ['_failed']
    assert not [p for p in glob.glob(f'{models}/**', recursive=True) if 'beam-temp' in p]
    out = _beamml('kmeans', '--input', tmp_path / 'many.csv', '--k', 2, '--model', models,
                  '--max_refused_fraction', '0.5', '--random_state', 0)
    assert out.returncode == 0, out.stderr[-2000:]
    from beamml.transforms.model import CentroidModel, list_versions
    (version,) = list_versions(str(models))
    assert CentroidModel.load(str(models)).version == version


def test_rows_refused_by_assign_name_their_file_row_and_line(tmp_path):
    """NaN let through by --allow_nan cannot be assigned: the dead letter still says
    where the row came from (it once had file, row and line null)."""
    import json
    from beamml.pipelines import assign
    (tmp_path / 'p.csv').write_bytes(b'id,a,b\n1,0,0\n2,nan,1\n3,1,1\n4,1,inf\n')
    (tmp_path / 'q.jsonl').write_bytes(b'{"id":"5","features":[0,0]}\n'
                                       b'{"id":"6","features":["NaN",0]}\n')
    (tmp_path / 'm' / 'v1').mkdir(parents=True)
    (tmp_path / 'm' / 'v1' / 'model.json').write_bytes(_model_json(2))
    (tmp_path / 'm' / 'LATEST').write_text('v1\n')
    for name, expected in (('p.csv', [(1, 3), (3, 5)]), ('q.jsonl', [(1, 2)])):
        assign.run(['--input', str(tmp_path / name), '--model', str(tmp_path / 'm'),
                    '--allow_nan', '--output', str(tmp_path / f'{name}-out'),
                    '--max_refused_fraction', '1'])
        letters = [json.loads(ln) for ln in open(
            next((tmp_path).glob(f'{name}-out-errors-*.jsonl')))]
        assert sorted((d['row'], d['line']) for d in letters) == expected, letters
        assert {d['file'] for d in letters} == {str(tmp_path / name)}
        assert all(d['reason'].startswith('cannot assign') for d in letters)
        import pyarrow.parquet as pq
        t = pq.read_table(str(next(tmp_path.glob(f'{name}-out-0*.parquet'))))
        assert t.column_names == ['id', 'cluster', 'distance', 'model_version']


# ------------------------------------------------------------------ found by the fuzz suite
def test_a_json_id_that_is_a_list_or_an_object_is_a_dead_letter(tmp_path):
    path = tmp_path / 'x.jsonl'
    path.write_bytes(b'{"id":"a","features":[1,2]}\n{"id":["b"],"features":[1,2]}\n'
                     b'{"id":{"x":1},"features":[1,2]}\n')
    table, dead = read_table_files(str(path))
    assert table.column('id').to_pylist() == ['a']
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (1, 2, 'id is not a string (a JSON list)'), (2, 3, 'id is not a string (a JSON object)')]


def test_json_lines_after_a_whitespace_only_first_line(tmp_path):
    path = tmp_path / 'x.jsonl'
    path.write_bytes(b'  \n{"x0":1}\n{"x0":"NaN"}\n{"x0":2}\n{"x')
    table, dead = read_table_files(str(path))
    assert table.num_rows == 2
    assert [(d['row'], d['line']) for d in dead] == [(1, 3), (3, 5)]


def test_a_truncated_fortran_npy_is_one_line(tmp_path):
    import io

    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(np.ones((5, 3))))
    (tmp_path / 'f.npy').write_bytes(buf.getvalue()[:-10])
    from beamml.transforms.core.errors import BeammlError
    with pytest.raises(BeammlError, match=r'f\.npy: truncated \.npy file \(expected 5 rows\)'):
        read_table_files(str(tmp_path / 'f.npy'))


def test_index_ids_takes_a_later_file_of_empty_or_null_lists(tmp_path):
    import pyarrow.parquet as pq
    from beamml.pipelines import index_ids
    (tmp_path / 'a.jsonl').write_bytes(b'{"id":1,"features":[1.5,2]}\n')
    (tmp_path / 'b.jsonl').write_bytes(b'{"id":2,"features":[]}\n{"id":3,"features":null}\n')
    index_ids.run(['--input', str(tmp_path / '*.jsonl'), '--id_column', 'id',
                   '--output', str(tmp_path / 'res' / 'out')])   # (its dead letters: .jsonl)
    (path,) = tmp_path.glob('res/out-encoded-*.parquet')
    assert pq.read_table(str(path)).to_pylist() == [
        {'id': 1, 'features': [1.5, 2.0], 'idx': 0}, {'id': 2, 'features': [], 'idx': 1},
        {'id': 3, 'features': None, 'idx': 2}]


def test_index_ids_takes_a_block_whose_list_column_is_a_number_then_null(tmp_path):
    """A JSON block (after a bad line) where the list column holds a number and a null:
    the number is a dead letter and the null stays, typed as the column's lists."""
    import pyarrow.parquet as pq
    from beamml.pipelines import index_ids
    (tmp_path / 'x.jsonl').write_bytes(
        b'{"id": 1, "features": [0, 1e-08], "note": "B\xff"}\r\n{"id":2,"features":[1.5,2]}\r\n'
        b'{"id":3,"features":null}\r\n{"id": 4, "features": 5}\r\n')
    index_ids.run(['--input', str(tmp_path / 'x.jsonl'), '--id_column', 'id',
                   '--output', str(tmp_path / 'out'), '--max_refused_fraction', '1'])
    (path,) = tmp_path.glob('out-encoded-*.parquet')
    assert pq.read_table(str(path)).to_pylist() == [
        {'id': 2, 'features': [1.5, 2.0], 'idx': 0}, {'id': 3, 'features': None, 'idx': 1}]
    (errors,) = tmp_path.glob('out-errors-*.jsonl')
    reasons = sorted(json.loads(line)['reason'] for line in errors.read_text().splitlines())
    assert reasons[0].startswith('invalid JSON line: invalid UTF-8')
    assert reasons[1] == "value in 'features' is a number, the column holds a list"


def test_blank_values_do_not_make_a_number_column_text(tmp_path):
    (tmp_path / 'x.csv').write_bytes(b'x0\n0\n""\n   \n\n')
    table, dead = read_table_files(str(tmp_path / 'x.csv'))
    assert table.num_rows == 1 and [d['line'] for d in dead] == [3, 4]


def test_a_json_id_beyond_int64_in_a_string_id_column_is_refused_not_rounded(tmp_path):
    # the head's ids are numbers (a list is refused whatever the id type): integer ids
    (tmp_path / 'x.jsonl').write_bytes(
        b'{"id": 0, "x0": 0.0}\n{"id": [1], "x0": 0.0}\n{"id": 10000003, "x0": 0.0}\n'
        b'{"id": -9223372036854775809, "x0": 0.0}\n')
    table, dead = read_table_files(str(tmp_path / 'x.jsonl'))
    assert table.column('id').to_pylist() == [0, 10000003]
    assert [(d['line'], d['reason'], d['record']['id']) for d in dead] == [
        (2, 'id is not an integer (a JSON list)', [1]),
        (4, 'id is out of the int64 range', -9223372036854775809)]   # the record: exact
    # a string among them: string ids, and a number is refused, neither rounded nor text
    (tmp_path / 'y.jsonl').write_bytes(
        b'{"id": "a", "x0": 0.0}\n{"id": -9223372036854775809, "x0": 0.0}\n'
        b'{"id": 7, "x0": 0.0}\n')
    table, dead = read_table_files(str(tmp_path / 'y.jsonl'))
    assert table.column('id').to_pylist() == ['a']
    assert [(d['line'], d['reason'], d['record']['id']) for d in dead] == [
        (2, 'id is a number, the id column holds strings', -9223372036854775809),
        (3, 'id is a number, the id column holds strings', 7)]


def test_damaged_parquet_pages_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from beamml.transforms.core.errors import BeammlError
    path = tmp_path / 'x.parquet'
    pq.write_table(pa.table({'id': list(range(10000)), 'x0': [0.5] * 10000}), str(path),
                   compression='none', row_group_size=5000)   # the head reads group 0 only
    start = pq.ParquetFile(str(path)).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 64] = bytes(64)   # the second row group's pages; the footer is intact
    path.write_bytes(bytes(data))
    with pytest.raises(BeammlError, match=r'x\.parquet is not a readable parquet file '
                                          r"\(a damaged page in its data\): [^\n]+$"):
        read_table_files(str(path))


def test_a_json_value_of_another_kind_refuses_its_row_not_the_table_run(tmp_path):
    import json
    from beamml.pipelines import index_ids
    (tmp_path / 'x.jsonl').write_bytes(b'{"id": 0, "features": [0.0]}\n'
                                       b'{"id": 1, "features": 5}\n{"id": 2, "features": [1]}\n')
    index_ids.run(['--input', str(tmp_path / 'x.jsonl'), '--id_column', 'id',
                   '--output', str(tmp_path / 'out'), '--max_refused_fraction', '1'])
    (errors,) = tmp_path.glob('out-errors-*.jsonl')
    assert [(d['line'], d['reason']) for d in map(json.loads, open(errors))] == [
        (2, "value in 'features' is a number, the column holds a list")]


def test_index_ids_takes_a_json_list_whose_first_item_is_null(tmp_path):
    """pyarrow 25 infers [null, 4.5] as an invalid list (an item lost; a traceback when
    Beam decodes the batch); and an object where the column holds lists (or the reverse)
    refuses its row, not the run ('list in one file and struct in another')."""
    import pyarrow.parquet as pq
    from beamml.pipelines import index_ids
    (tmp_path / 'a.jsonl').write_bytes(b'{"id":1,"o":{"k":1},"f":[null, 4.5]}\n')
    (tmp_path / 'b.jsonl').write_bytes(b'{"id":2,"o":{"k":2},"f":{"a":1}}\n'
                                       b'{"id":3,"o":[1],"f":[null, null, 1.5]}\n'
                                       b'{"id":4,"o":{"k":3},"f":[2.5, null]}\n')
    # the output lies beside the input folder: its errors file (JSONL) is one the input
    # pattern would match, and a run refuses an input that can read its own output
    index_ids.run(['--input', str(tmp_path / '*.jsonl'), '--id_column', 'id',
                   '--output', str(tmp_path / 'res' / 'out'), '--max_refused_fraction', '1'])
    (path,) = (tmp_path / 'res').glob('out-encoded-*.parquet')
    assert sorted((r['id'], r['f']) for r in pq.read_table(str(path)).to_pylist()) == [
        (1, [None, 4.5]), (4, [2.5, None])]
    (errors,) = (tmp_path / 'res').glob('out-errors-*.jsonl')
    assert sorted((d['file'][-7:], d['row'], d['reason'])
                  for d in map(json.loads, open(errors))) == [
        ('b.jsonl', 0, "value in 'f' is an object, the column holds a list"),
        ('b.jsonl', 1, "value in 'o' is a list, the column holds an object")]
