"""A run deletes or replaces only what a beamml run recorded as its own, and never reads
its own output back (issue 18, section 1), on local disk and on the storage emulator.

Each case of the issue is a test here: an output folder that holds the input or other
files, an output prefix whose names the input has, an input glob that would read the
previous output on a rerun; a complete destination whose input changed since; what a
killed run leaves (an empty temporary folder, a lock after its _SUCCESS); the message of
a lock taken twice. The property test at the end generates trees of files that beamml
did not write, inputs and outputs that overlap or not, and sequences of runs, reruns,
overwrites and kills, and checks that no such file ever changes and that no input row
is read twice.
"""
from __future__ import annotations

import datetime as dt
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from beamml.pipelines._platform import commit, runs
from beamml.pipelines.__main__ import main
from beamml.pipelines._platform.overlap import glob_matches, may_match_under
from faults import COMMIT_STAGES, kill_at
from inprocess import run_beamml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def said(err: str) -> str:
    """stderr without the progress log lines (HH:MM:SS beamml: ...)."""
    return '\n'.join(x for x in err.splitlines()
                     if not re.match(r'\d\d:\d\d:\d\d beamml: ', x)) + '\n'


def snapshot(folder) -> dict[str, bytes]:
    """{relative path: bytes} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, 'rb').read()
    return out


def _cli(args, env=None, cwd=None):
    """``beamml ARGS``: a process of its own when ``env`` is given (a fault point: the
    kill needs a process to kill), in this process otherwise (tests/inprocess.py)."""
    if env is None:
        return run_beamml(*args, cwd=cwd)
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, '-m', 'beamml', *args], capture_output=True,
                          text=True, env=e, timeout=300, cwd=cwd)


# ----------------------------------------------------------------------------- globs

def test_glob_prefix_questions_follow_beams_pattern_syntax():
    # * stays within a segment, ** crosses them, ? and [...] are one character
    assert may_match_under('d/*.csv', 'd/res-') and not may_match_under('d/*.csv', 'd/res/')
    assert may_match_under('d/**', 'd/res/') and may_match_under('d/', 'd/x')
    assert may_match_under('k/pts-*.csv', 'k/pts-') and not may_match_under('k/a.csv', 'k/pts-')
    assert not may_match_under('d/[!r]*', 'd/res-') and may_match_under('d/?es*', 'd/res-')
    assert glob_matches('d/[ab].csv', 'd/a.csv') and not glob_matches('d/*.csv', 'd/x/a.csv')
    # the same answers as Beam's own matcher on the names it would list
    from apache_beam.io.filesystem import FileSystem
    names = ['d/a.csv', 'd/res-0.csv', 'd/res/x.csv', 'd/sub/b.csv', 'e/.x', 'd/[.csv']
    for pattern in ['d/*.csv', 'd/**', 'd/res-*', 'd/?es*', 'd/[!a]*.csv', '*/*', 'd/[.csv',
                    'e/*', 'd/**/b.csv']:
        regex = re.compile(FileSystem.translate_pattern(pattern))
        for name in names:
            assert glob_matches(pattern, name) == bool(regex.match(name)), (pattern, name)


# ----------------------------------------------------------------------------- section 1

def test_an_output_folder_holding_the_input_and_other_files_is_refused(tmp_path, capsys,
                                                                          monkeypatch):
    """The issue's first case, word for word: before, exit 0 and a.csv, keep.txt gone."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('f/sub')
    open('f/a.csv', 'w').write('id,x0,x1\n1,1,2\n')
    open('f/keep.txt', 'w').write('keep\n')
    open('f/sub/also.txt', 'w').write('keep too\n')
    before = snapshot('.')
    assert main(['norms', '--input', 'f/*.csv', '--output', 'f/', '--output_format',
                 'csv']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1, err
    assert ('--input f/*.csv can match files of --output f/, which this run writes: a rerun '
            'would read them back as input; a run never reads its own output') in err
    assert snapshot('.') == before
    # an input elsewhere: the folder's own files are still not the run's to replace
    os.makedirs('in')
    open('in/b.csv', 'w').write('id,x0,x1\n2,3,4\n')
    before = snapshot('.')
    assert main(['norms', '--input', 'in/*.csv', '--output', 'f/']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1 and 'f/a.csv (and 2 more) was not written by a beamml run' in err
    assert '--allow_foreign_files' in err
    assert snapshot('.') == before


def test_an_output_prefix_never_deletes_inputs_named_like_it(tmp_path, capsys, monkeypatch):
    """`--input 'k/pts-*.csv' --output k/pts` deleted pts-1.csv and pts-2.csv."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('k')
    for i in (1, 2):
        open(f'k/pts-{i}.csv', 'w').write(f'id,x0,x1\n{i},1,2\n')
    before = snapshot('.')
    assert main(['norms', '--input', 'k/pts-*.csv', '--output', 'k/pts']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1
    assert '--input k/pts-*.csv can match files of --output k/pts (k/pts-*)' in err
    assert snapshot('.') == before
    # a literal input under the prefix is refused the same way
    assert main(['norms', '--input', 'k/pts-2.csv', '--output', 'k/pts']) == 2
    assert '--input k/pts-2.csv lies in --output k/pts (k/pts-*)' in capsys.readouterr().err
    assert snapshot('.') == before


def test_an_input_glob_that_matches_the_output_is_refused_before_the_first_run(
        tmp_path, capsys, monkeypatch):
    """`--input 'd/*.csv' --output d/res --output_format csv` twice with --overwrite read
    4 rows from 2: the output's own shards matched the input glob."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('d')
    open('d/a.csv', 'w').write('id,x0,x1\n1,1,2\n2,3,4\n')
    flags = ['norms', '--input', 'd/*.csv', '--output', 'd/res', '--output_format', 'csv']
    for extra in ([], ['--overwrite']):
        assert main(flags + extra) == 2
        err = said(capsys.readouterr().err)
        assert err.count('\n') == 1
        assert ('--input d/*.csv can match files of --output d/res (d/res-*), which this run '
                'writes: a rerun would read them back as input') in err
        assert os.listdir('d') == ['a.csv']
    # a folder under the input's folder is fine for `*` (one segment), refused for `**`
    assert main(['norms', '--input', 'd/*.csv', '--output', 'd/out/', '--output_format',
                 'csv']) == 0
    assert main(['norms', '--input', 'd/*.csv', '--output', 'd/out/', '--output_format',
                 'csv', '--overwrite']) == 0
    capsys.readouterr()
    rows = pacsv.read_csv(glob.glob('d/out/part-*.csv')[0])
    assert sorted(rows.column('id').to_pylist()) == [1, 2]
    assert main(['norms', '--input', 'd/**.csv', '--output', 'd/out2/']) == 2
    assert '--input d/**.csv can match files of --output d/out2/' in capsys.readouterr().err


def test_the_names_beside_the_destination_are_the_runs_too(tmp_path, capsys, monkeypatch):
    """The temporary and refused prefixes, the lock and the journal are beside the
    destination: an input that can match them is refused too (a refused run's dead
    letters would be read back)."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('d')
    open('d/a.csv', 'w').write('id,x0,x1\n1,1,2\n')
    assert main(['norms', '--input', 'd/**', '--output', 'd/out/']) == 2
    assert 'can match files of --output d/out/' in capsys.readouterr().err
    assert main(['norms', '--input', 'd/.beamml-*/*', '--output', 'd/out/']) == 2
    assert ('can match the files beamml keeps in d/.beamml-tmp-out-<run id>/ '
            'beside --output d/out/') in capsys.readouterr().err
    assert main(['norms', '--input', 'd/*', '--output', 'd/out/']) == 2
    assert ('--input d/* can match d/.beamml-lock-out, which beamml keeps beside '
            '--output d/out/') in capsys.readouterr().err


def test_the_same_refusals_on_cloud_storage(gcs_bucket, capsys):
    from google.cloud import storage
    bucket = storage.Client.create_anonymous_client().bucket(gcs_bucket[len('gs://'):])
    names = {'f/a.csv': b'id,x0,x1\n1,1,2\n', 'f/keep.txt': b'keep\n',
             'f/sub/deep.txt': b'deep\n', 'k/pts-1.csv': b'id,x0,x1\n1,1,2\n',
             'k/pts-2.csv': b'id,x0,x1\n2,1,2\n', 'd/a.csv': b'id,x0,x1\n3,1,2\n'}
    for name, data in names.items():
        bucket.blob(name).upload_from_string(data)

    def state():
        return {b.name: b.download_as_bytes() for b in bucket.client.list_blobs(bucket)}
    before = state()
    b = gcs_bucket
    cases = [
        (['--input', f'{b}/f/*.csv', '--output', f'{b}/f/'],
         f'--input {b}/f/*.csv can match files of --output {b}/f/,'),
        (['--input', f'{b}/f/a.csv', '--output', f'{b}/f/'],
         f'--input {b}/f/a.csv lies in --output {b}/f/,'),
        (['--input', f'{b}/in/none.csv', '--output', f'{b}/f/'], None),
        (['--input', f'{b}/k/pts-*.csv', '--output', f'{b}/k/pts'],
         f'--input {b}/k/pts-*.csv can match files of --output {b}/k/pts ({b}/k/pts-*)'),
        (['--input', f'{b}/d/*.csv', '--output', f'{b}/d/res', '--output_format', 'csv'],
         f'--input {b}/d/*.csv can match files of --output {b}/d/res'),
    ]
    for flags, message in cases:
        rc = main(['norms', *flags])
        err = said(capsys.readouterr().err)
        if message is None:   # an input that does not exist: exit 4, still nothing touched
            assert rc == 4, err
        else:
            assert rc == 2 and err.count('\n') == 1 and message in err, err
        assert state() == before
    # an input elsewhere into the folder of foreign objects
    rc = main(['norms', '--input', f'{b}/d/a.csv', '--output', f'{b}/f/'])
    err = said(capsys.readouterr().err)
    assert rc == 2 and f'{b}/f/a.csv (and 2 more) was not written by a beamml run' in err
    assert state() == before


# ----------------------------------------------------------------------------- section 2

def test_a_complete_destination_whose_input_changed_is_not_a_silent_no_op(tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    (folder / 'a.csv').write_text('id,x0,x1\n1,1,2\n')
    (folder / 'b.csv').write_text('id,x0,x1\n2,3,4\n')
    out = str(tmp_path / 'out') + '/'
    flags = ['norms', '--input', str(folder / '*.csv'), '--output', out]
    assert main(flags) == 0
    assert main(flags) == 0 and 'is complete' in capsys.readouterr().out   # unchanged
    # rewritten with 10 more rows and new values
    (folder / 'a.csv').write_text('id,x0,x1\n' + ''.join(f'{i},{i},5\n' for i in range(10, 21)))
    assert main(flags) == runs.EXIT_INPUT_CHANGED == 6
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1
    assert f'{out} is complete (run ' in err and f'but its input changed since: {folder}/a.csv ' \
        'is ' in err and '--overwrite recomputes them (exit code 6)' in err
    # a file added, one removed, one touched with the same size
    (folder / 'c.csv').write_text('id,x0,x1\n30,1,1\n')
    assert main(flags) == 6
    assert '(and 1 more change(s))' in capsys.readouterr().err
    assert main(flags + ['--overwrite']) == 0
    capsys.readouterr()
    os.remove(folder / 'b.csv')
    assert main(flags) == 6 and f'{folder}/b.csv is gone' in capsys.readouterr().err
    assert main(flags + ['--overwrite']) == 0
    capsys.readouterr()
    st = os.stat(folder / 'c.csv')
    os.utime(folder / 'c.csv', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main(flags) == 6 and f'{folder}/c.csv was modified at' in capsys.readouterr().err
    assert main(flags + ['--overwrite']) == 0
    capsys.readouterr()
    # the input gone altogether: the results stand for what _SUCCESS lists; said, exit 0
    shutil.rmtree(folder)
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert 'is complete' in printed and 'no file matches --input' in printed


def test_changed_input_on_cloud_storage(gcs_bucket, capsys):
    from google.cloud import storage
    bucket = storage.Client.create_anonymous_client().bucket(gcs_bucket[len('gs://'):])
    bucket.blob('in/a.csv').upload_from_string(b'id,x0,x1\n1,1,2\n')
    flags = ['norms', '--input', f'{gcs_bucket}/in/*.csv', '--output', f'{gcs_bucket}/out/']
    assert main(flags) == 0
    assert main(flags) == 0 and 'is complete' in capsys.readouterr().out
    bucket.blob('in/a.csv').upload_from_string(b'id,x0,x1\n1,1,3\n')   # same size, new object
    assert main(flags) == 6
    err = said(capsys.readouterr().err)
    assert f'{gcs_bucket}/in/a.csv was rewritten (generation ' in err and err.count('\n') == 1
    assert main(flags + ['--overwrite']) == 0


def test_a_cloud_storage_folder_placeholder_is_not_a_foreign_file(gcs_bucket):
    """The console's "Create folder" makes a zero-byte object `out/`: not a file."""
    from google.cloud import storage
    bucket = storage.Client.create_anonymous_client().bucket(gcs_bucket[len('gs://'):])
    bucket.blob('in/a.csv').upload_from_string(b'id,x0,x1\n1,1,2\n')
    bucket.blob('out/').upload_from_string(b'')
    assert main(['norms', '--input', f'{gcs_bucket}/in/*.csv',
                 '--output', f'{gcs_bucket}/out/']) == 0
    assert bucket.blob('out/').exists()


# ----------------------------------------------------------------------------- leftovers

def test_an_empty_temporary_folder_of_a_killed_run_is_removed(tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.csv').write_text('id,x0,x1\n1,1,2\n')
    empty = tmp_path / '.beamml-tmp-out-20261206T010203Z-abcdef' / 'x' / 'y'
    empty.mkdir(parents=True)
    (tmp_path / '.beamml-tmp-out-x-20261206T010203Z-abcdef').mkdir()   # another destination's
    assert main(['norms', '--input', str(tmp_path / 'in' / '*.csv'),
                 '--output', str(tmp_path / 'out') + '/']) == 0
    assert sorted(os.listdir(tmp_path)) == ['.beamml-tmp-out-x-20261206T010203Z-abcdef',
                                            'in', 'out']


def test_a_run_killed_after_its_success_is_cleaned_by_the_next_one(tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.csv').write_text('id,x0,x1\n1,1,2\n2,2,2\n')
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'),
             '--output', str(tmp_path / 'out') + '/']
    killed = _cli(flags, kill_at('commit.after_success'))
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = sorted(os.listdir(tmp_path))
    assert '.beamml-lock-out' in left and '.beamml-commit-out' in left
    assert any(x.startswith('.beamml-tmp-out-') for x in left)
    assert (tmp_path / 'out' / '_SUCCESS').exists()
    again = _cli(flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'is complete' in again.stdout and 'taking over the lock' in again.stderr
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']


def test_an_overwrite_killed_half_way_leaves_only_recorded_files(tmp_path):
    """Killed half-way through an --overwrite's moves: the old _SUCCESS is gone, some new
    files are in. The journal lists both runs' files, so the next run replaces them all
    instead of refusing them as foreign, and a file beside them stays."""
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.csv').write_text('id,x0,x1\n' + ''.join(f'{i},{i},1\n' for i in range(9)))
    dest = tmp_path / 'out'
    flags = ['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--output', str(dest) + '/',
             '--allow_foreign_files']
    assert main(flags + ['--num_shards', '3']) == 0
    (dest / 'mine.txt').write_text('a user file')
    killed = _cli(flags + ['--num_shards', '4', '--overwrite'], kill_at('commit.between_moves'))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (dest / '_SUCCESS').exists()
    journal = json.loads((tmp_path / '.beamml-commit-out').read_text())
    assert len(journal['outputs']) == 5 and len(journal['replaces']) == 3   # (errors: same name)
    # without the flag the user file is refused, the run's own files are not
    again = _cli(flags[:-1] + ['--num_shards', '2'])
    assert again.returncode == 2 and 'mine.txt was not written by a beamml run' in again.stderr
    again = _cli(flags + ['--num_shards', '2'])
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(os.listdir(dest)) == ['_SUCCESS', 'mine.txt', 'part-00000-of-00002.parquet',
                                        'part-00001-of-00002.parquet',
                                        'part-errors-00000-of-00001.jsonl']
    assert (dest / 'mine.txt').read_text() == 'a user file'
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']


def test_a_result_named_like_a_foreign_file_is_refused_at_the_commit(tmp_path, capsys):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.csv').write_text('id,x0,x1\n1,1,2\n')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'part-00000-of-00001.parquet').write_text('not parquet, not ours')
    assert main(['norms', '--input', str(tmp_path / 'in' / '*.csv'), '--output',
                 str(tmp_path / 'out') + '/', '--allow_foreign_files']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1 and "this run's result has its name" in err
    assert os.listdir(tmp_path / 'out') == ['part-00000-of-00001.parquet']
    assert sorted(os.listdir(tmp_path)) == ['in', 'out']   # no lock, no temporary prefix


def _plan(tmp_path, expires_in):
    (tmp_path / 'in').mkdir(exist_ok=True)
    (tmp_path / 'in' / 'a.csv').write_text('id,x0,x1\n1,1,2\n')
    from beamml.pipelines import norms
    from beamml.pipelines._platform.cli import parse_args
    args, options = parse_args(norms.NormsOptions, [
        '--input', str(tmp_path / 'in' / 'a.csv'), '--output', str(tmp_path / 'out') + '/',
        '--lock_timeout', str(expires_in)], prog='beamml norms')
    run = runs.DatedRun(args, options, 'norms', folder=False)
    return run, commit.CommitPlan(run, {}, None, None)


def test_a_lost_lock_names_its_real_cause(tmp_path):
    """Two runs at once where the create was not exclusive (an emulator or a file system
    without it): the loser names that cause, not --lock_timeout."""
    run, plan = _plan(tmp_path, 3600)
    lock = tmp_path / '.beamml-lock-out'
    other = json.loads(lock.read_text())
    other.update(run_id='20261206T000000Z-0ther0', pid=1, host='elsewhere')
    lock.write_text(json.dumps(other))
    with pytest.raises(commit.LockedError, match='both took the lock .* at once: the storage '
                       'did not make its create-if-absent exclusive') as e:
        commit.commit_step(plan, {'rows': 1})
    assert e.value.exit_code == 5
    plan.lock_expires = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()
    with pytest.raises(commit.LockedError, match='ran longer than --lock_timeout .* and run '
                       '20261206T000000Z-0ther0 on elsewhere'):
        commit.commit_step(plan, {'rows': 1})
    lock.unlink()
    with pytest.raises(commit.LockedError, match='was deleted while it ran'):
        commit.commit_step(plan, {'rows': 1})


# ----------------------------------------------------------------------------- property

EXAMPLES = int(os.environ.get('BEAMML_FUZZ_EXAMPLES', '0') or 0)
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
if EXAMPLES:   # `make fuzz`
    LOCAL = settings(max_examples=max(10, EXAMPLES // 30), **_COMMON)
    GCS = settings(max_examples=max(5, EXAMPLES // 100), **_COMMON)
else:   # `make test`: the same examples every run, within the time budget
    _CI = dict(derandomize=True, phases=[Phase.explicit, Phase.generate], **_COMMON)
    LOCAL = settings(max_examples=5, **_CI)
    GCS = settings(max_examples=3, **_CI)

FOLDERS = ['d', 'd/sub', 'e']
NAMES = ['p1.csv', 'res-1.csv', 'res-00000-of-00001.csv', 'part-00000-of-00001.csv',
         'part-00000-of-00001.parquet', 'keep.txt', '_SUCCESS']


@st.composite
def scenarios(draw):
    """User files (each a small CSV of points with ids of its own), an input pattern and
    an output that may overlap them, and a sequence of operations."""
    n_files = draw(st.integers(1, 5))
    paths = draw(st.lists(st.tuples(st.sampled_from(FOLDERS), st.sampled_from(NAMES)),
                          min_size=n_files, max_size=n_files, unique=True))
    files = [f'{folder}/{name}' for folder, name in paths]
    folder = draw(st.sampled_from(FOLDERS))
    pattern = draw(st.sampled_from([
        f'{folder}/*.csv', f'{folder}/res-*', f'{folder}/*', f'{folder}/**.csv', f'{folder}/p*',
        draw(st.sampled_from(files))]))
    out_folder = draw(st.sampled_from(FOLDERS))
    output = draw(st.sampled_from([f'{out_folder}/', f'{out_folder}/out/', f'{out_folder}/res',
                                   f'{out_folder}/part']))
    fmt = draw(st.sampled_from(['csv', 'parquet']))
    ops = draw(st.lists(st.sampled_from(['run', 'run', 'overwrite', 'allow', 'append',
                                         'kill1', 'kill2', 'kill3']), min_size=1, max_size=4))
    return files, pattern, output, fmt, ops


class LocalTree:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix='beamml-safety-')

    def path(self, rel):
        return os.path.join(self.root, rel)

    def put(self, rel, data):
        os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
        with open(self.path(rel), 'wb') as f:
            f.write(data)

    def files(self):
        return snapshot(self.root)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


class BucketTree:
    def __init__(self):
        from google.cloud import storage
        self.name = f'safety-{uuid.uuid4().hex[:10]}'
        self.client = storage.Client.create_anonymous_client()
        self.bucket = self.client.create_bucket(self.name)

    def path(self, rel):
        return f'gs://{self.name}/{rel}'

    def put(self, rel, data):
        self.bucket.blob(rel).upload_from_string(data)

    def files(self):
        return {b.name: b.download_as_bytes() for b in self.client.list_blobs(self.name)}

    def close(self):
        pass


def _points(first_id, n):
    return ('id,x0,x1\n' + ''.join(f'{i},{i % 7},{i % 3}\n'
                                   for i in range(first_id, first_id + n))).encode()


def _output_ids(where, doc, fmt):
    """The ids of the rows in the data shards _SUCCESS lists."""
    ids = []
    for path in doc['outputs']:
        if not re.search(r'(^|[/-])(part-)?\d{5}-of-\d{5}\.' + fmt + '$', path) or \
                '-errors-' in path:
            continue
        data = where.files()[path[len(where.path('')):]]
        table = (pq.read_table(io.BytesIO(data)) if fmt == 'parquet'
                 else pacsv.read_csv(io.BytesIO(data)))
        ids += [str(i) for i in table.column('id').to_pylist()]
    return ids


def _input_ids(where, doc):
    ids = []
    for item in doc['inputs']:
        data = where.files()[item['path'][len(where.path('')):]]
        ids += [line.split(',')[0] for line in data.decode().splitlines()[1:] if line]
    return ids


def _check_scenario(where, scenario):
    files, pattern, output, fmt, ops = scenario
    user = {}
    next_id = 0
    for rel in files:
        user[rel] = _points(next_id, 3)
        next_id += 3
        where.put(rel, user[rel])
    flags = ['norms', '--input', where.path(pattern), '--output', where.path(output),
             '--output_format', fmt]
    dest = runs.Destination(where.path(output), False)
    killed = False   # a killed run's lock and temporary files stay until a run proceeds
    success = dest.success[len(where.path('')):]
    for op in ops:
        if op == 'append':   # a user rewrites one of their files
            rel = files[next_id % len(files)]
            user[rel] = user[rel] + _points(next_id, 2)[len(b'id,x0,x1\n'):]
            next_id += 2
            where.put(rel, user[rel])
            continue
        extra = {'overwrite': ['--overwrite'], 'allow': ['--allow_foreign_files']}.get(op, [])
        before = where.files().get(success)
        if op.startswith('kill'):
            result = _cli(flags + ['--overwrite', '--allow_foreign_files'],
                          kill_at(COMMIT_STAGES[int(op[-1]) - 1]))
            rc, err = result.returncode, result.stderr
            assert rc in (-9, 2, 4), (op, rc, err[-3000:])
        else:
            buf_err, buf_out = io.StringIO(), io.StringIO()
            saved = sys.stderr, sys.stdout
            sys.stderr, sys.stdout = buf_err, buf_out
            try:
                rc = main(flags + extra)
            finally:
                sys.stderr, sys.stdout = saved
            err = buf_err.getvalue()
            assert rc in (0, 2, 4, 6), (op, rc, err[-3000:])
            if rc == 2:
                assert said(err).count('\n') == 1, err
        event(f'{op}: exit {rc}')
        now = where.files()
        # every file beamml did not write is there, byte for byte
        for rel, data in user.items():
            assert now.get(rel) == data, (op, rel, rc, err[-3000:])
        if op.startswith('kill'):
            killed = killed or rc == -9
            continue
        # nothing beamml keeps beside a destination is left after a run that ended (a run
        # refused before it started leaves a killed run's leftovers to the next one)
        killed = killed and rc != 0
        assert killed or not [n for n in now
                              if re.search(r'(^|/)\.beamml-(lock|tmp|commit)-', n)], \
            (op, sorted(now))
        ours = success in now and success not in user   # (a user's own _SUCCESS: refused)
        if success in user:
            assert rc in (2, 4), (op, rc, err[-2000:])
        if rc == 0 and ours:
            doc = json.loads(now[success])
            inputs = [i['path'][len(where.path('')):] for i in doc['inputs']]
            assert set(inputs) <= set(user), (inputs, sorted(user))   # never its own output
            got = _output_ids(where, doc, fmt)
            assert len(got) == len(set(got)), 'an input row was read twice'
            if now[success] != before:   # this run committed: every input row once
                assert sorted(got) == sorted(_input_ids(where, doc))
        # whatever else is there is what _SUCCESS lists
        listed = set()
        if ours:
            doc = json.loads(now[success])
            listed = {p[len(where.path('')):] for p in doc['outputs']} | {success}
        others = set(now) - set(user) - listed
        assert not {n for n in others if not re.search(r'(^|/)\.beamml-refused-', n)}, \
            (op, rc, sorted(others), err[-2000:])


@LOCAL
@given(scenarios())
def test_foreign_files_survive_any_sequence_of_runs_locally(scenario):
    where = LocalTree()
    try:
        _check_scenario(where, scenario)
    finally:
        where.close()


@GCS
@given(scenarios())
def test_foreign_files_survive_any_sequence_of_runs_on_cloud_storage(gcs_emulator, scenario):
    where = BucketTree()
    try:
        _check_scenario(where, scenario)
    finally:
        where.close()


# ----------------------------------------------------------------------------- other writers

def test_kmeans_never_reads_what_it_writes_nor_replaces_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs('d')
    open('d/a.csv', 'w').write('id,x0,x1\n' + ''.join(f'{i},{i % 5},{i % 3}\n' for i in range(20)))
    base = ['kmeans', '--k', '2', '--max_iter', '3', '--random_state', '0']
    assert main(base + ['--input', 'd/**', '--model', 'd/models']) == 2
    assert '--input d/** can match files of --model d/models/' in capsys.readouterr().err
    assert main(base + ['--input', 'd/*.csv', '--model', 'm', '--output', 'd/labels',
                        '--output_format', 'csv']) == 2
    assert '--input d/*.csv can match files of --output d/labels' in capsys.readouterr().err
    open('d/labels-00000-of-00001.parquet', 'w').write('a file of the user')
    before = snapshot('.')
    assert main(base + ['--input', 'd/a.csv', '--model', 'm', '--output', 'd/labels']) == 2
    err = said(capsys.readouterr().err)
    assert err.count('\n') == 1 and ('--output d/labels: d/labels-00000-of-00001.parquet exists; '
                                     'kmeans writes its labels only where nothing is') in err
    assert snapshot('.') == before
    assert main(base + ['--input', 'd/a.csv', '--model', 'm', '--output', 'out/lab']) == 0


def test_a_watched_pattern_that_matches_the_streams_output_is_refused(tmp_path, capsys):
    out = str(tmp_path / 'w' / 'eval')
    rc = main(['evaluate', '--streaming', '--task', 'classification', '--input',
               str(tmp_path / 'w' / '*'), '--watch_interval', '1', '--stop_after', '1',
               '--output', out])
    assert rc == 2
    assert f'--input {tmp_path}/w/* can match files of --output {out}' in \
        capsys.readouterr().err
    assert not (tmp_path / 'w').exists()


def test_a_storage_answer_is_not_worded_as_no_answer():
    """A refusal (403) is the store's answer, not an outage."""
    from google.api_core import exceptions
    from beamml.transforms.core.errors import BeammlError
    from beamml.transforms.core.objects import _storage
    with pytest.raises(BeammlError, match=r'^gs://b/x: Cloud Storage refused the request: 403'):
        with _storage('gs://b/x'):
            raise exceptions.Forbidden('no access')
    with pytest.raises(BeammlError, match=r'^gs://b/x: Cloud Storage did not answer: 503'):
        with _storage('gs://b/x'):
            raise exceptions.ServiceUnavailable('down')
