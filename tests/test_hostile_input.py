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
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', '-0.1'],
     r'--max_refused_fraction'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--max_refused_fraction', '1.5'],
     r'--max_refused_fraction'),
    # --output where nothing can be written: found before the run
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--output', '{dir}/p.csv/out'],
     r'^beamml norms: error: --output .*p\.csv/out: .*p\.csv is a file, not a folder$'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['index_ids', '--input', '{dir}/p.csv', '--id_column', 'id',
      '--output', '{dir}/p.csv/deeper/out'],
     r'--output .*: .*p\.csv is a file, not a folder$'),
    ({'l.csv': b'truth,prediction\n1,0\n'},
     ['evaluate', '--input', '{dir}/l.csv', '--task', 'classification',
      '--output', '{dir}/l.csv/eval/'],
     r'--output .*l\.csv/eval/: .*l\.csv is a file, not a folder$'),
    ({'p.csv': b'id,a\n1,2\n'},
     ['norms', '--input', '{dir}/p.csv', '--output', '/proc/beamml-no-such/out'],
     r'--output /proc/beamml-no-such/out: cannot create the folder /proc/beamml-no-such'),
    ({'p.csv': b'id,a\n1,2\n2,3\n'},
     ['kmeans', '--input', '{dir}/p.csv', '--k', '1', '--model_dir', '{dir}/p.csv/m'],
     r'--model_dir .*p\.csv/m: .*p\.csv is a file, not a folder$'),
]


@pytest.mark.parametrize('files, argv, pattern', CLI_CASES,
                         ids=[c[1][0] + ':' + c[2][:30] for c in CLI_CASES])
def test_cli_errors_are_one_line_with_exit_2(files, argv, pattern, tmp_path):
    import re
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    argv = [a.replace('{dir}', str(tmp_path)) for a in argv]
    if '--output' not in argv and '--model_dir' not in argv:
        argv += ['--output', str(tmp_path / 'out')]
    out = subprocess.run([sys.executable, '-m', 'beamml'] + argv, capture_output=True,
                         text=True, timeout=120)
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err[-2000:])
    assert 'Traceback' not in err
    last = err.splitlines()[-1]
    assert re.search(pattern, last), last
    assert sum(1 for ln in err.splitlines() if 'error' in ln) == 1, err


def _beamml(*argv, env=None):
    return subprocess.run([sys.executable, '-m', 'beamml', *map(str, argv)],
                          capture_output=True, text=True, timeout=180, env=env)


def test_missing_output_bucket_is_one_line_before_the_run(gcs_bucket, tmp_path):
    import os
    (tmp_path / 'p.csv').write_bytes(b'id,a\n1,2\n')
    missing = gcs_bucket + '-missing'
    for argv in (['norms', '--output', f'{missing}/out/n'],
                 ['kmeans', '--k', '1', '--model_dir', f'{missing}/models']):
        out = _beamml(argv[0], '--input', tmp_path / 'p.csv', *argv[1:], env=os.environ)
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
        out = _beamml('norms', '--input', tmp_path / 'p.csv', '--output', prefix, *flags)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr, sorted(os.path.basename(p) for p in glob.glob(f'{prefix}-*'))

    import os
    run('--num_shards', '3')
    log, files = run('--num_shards', '2')
    assert files == ['n-00000-of-00002.parquet', 'n-00001-of-00002.parquet',
                     'n-errors-00000-of-00001.jsonl']
    assert 'removed 3 shard(s) of an earlier run' in log and 'n-00002-of-00003' in log
    log, files = run('--num_shards', '2')
    assert 'removed' not in log and len(files) == 3
    log, files = run('--num_shards', '1', '--output_format', 'csv')
    assert files == ['n-00000-of-00001.csv', 'n-errors-00000-of-00001.jsonl']
    log, files = run('--sort', 'l2', '--num_shards', '2')
    assert files == ['n-00000-of-00002.parquet', 'n-00001-of-00002.parquet',
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
                      '--model_dir', models, *flags)
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
    out = _beamml('kmeans', '--input', tmp_path / 'many.csv', '--k', 2, '--model_dir', models,
                  '--max_refused_fraction', '0.5', '--random_state', 0)
    assert out.returncode == 0, out.stderr[-2000:]
    from beamml.transforms.model import CentroidModel, list_versions
    (version,) = list_versions(str(models))
    assert CentroidModel.load(str(models)).version == version
