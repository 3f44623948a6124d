"""Hostile input: no input crashes the process, no row is lost silently."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beamml.transforms.io import read_table_files

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


# ------------------------------------------------------------------ one line, exit 2
CLI_CASES = [
    # (files, argv after the pipeline name, expected message pattern)
    ({'dup.csv': b'id,a,a\n1,2,3\n'}, ['norms', '--input', '{dir}/dup.csv'],
     r"names column 'a' more than once"),
    ({'f.csv': b'id,x0,x1\n1,2,3\n'},
     ['norms', '--input', '{dir}/f.csv', '--feature_columns', 'id,x0'],
     r"the id column 'id' cannot also be a feature column \(--feature_columns\)"),
    ({'l.csv': b'truth,prediction,q_id,predicted_rank,truth_relevance\n1,0,1,0,1\n'},
     ['evaluate', '--input', '{dir}/l.csv', '--task', 'ranking', '--query_buckets', '0'],
     r'--query_buckets'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', 'nan'],
     r'--max_refused_fraction'),
]


@pytest.mark.parametrize('files, argv, pattern', CLI_CASES,
                         ids=[c[1][0] + ':' + c[2][:30] for c in CLI_CASES])
def test_cli_errors_are_one_line_with_exit_2(files, argv, pattern, tmp_path):
    import re
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    argv = [a.replace('{dir}', str(tmp_path)) for a in argv]
    argv += ['--output', str(tmp_path / 'out')]
    out = subprocess.run([sys.executable, '-m', 'beamml'] + argv, capture_output=True,
                         text=True, timeout=120)
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err[-2000:])
    assert 'Traceback' not in err
    last = err.splitlines()[-1]
    assert re.search(pattern, last), last
    assert sum(1 for ln in err.splitlines() if 'error' in ln) == 1, err
