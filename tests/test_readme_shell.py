"""The shell examples and sample outputs of README.md and of every page of docs/, run or
checked as written.

Every fenced block of those pages (``PAGES``) that is not ```python (tests/test_readme.py
runs those) or ```yaml is classified in ``BLOCKS`` by its page and its fingerprint (its
first line, or its first lines where that is not unique in the page), as one of:

* ``run``: the commands run as written, in one prepared folder of sample data (the
  module's ``workdir``), through ``beamml``'s own entry point in this process (its
  exit code and the lines it prints are the command line's; see :func:`_beamml`); a
  block that shows output after ``$ command`` has the run's output compared with it, line
  for line, the volatile parts (times, versions, run ids, durations) normalised by the
  explicit regexes of ``VOLATILE``;
* ``substituted``: run the same way with ``gs://`` paths on the Cloud Storage emulator
  (tests/conftest.py) or Pub/Sub names on a dry run's offline translation;
* ``static``: cloud-only commands (``gcloud``, a Dataflow submission): every ``beamml``
  flag they use is one of that pipeline's flags or a Beam option, and every file of the
  repository they name exists.

A block that is new, changed or moved to another page (its page and fingerprint not in
``BLOCKS``) fails ``test_every_block_is_classified`` with what to do.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inprocess import run_beamml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pages() -> list[str]:
    """README.md and every Markdown page under docs/, as paths from the repository root."""
    found = ['README.md']
    for folder, _, files in os.walk(os.path.join(ROOT, 'docs')):
        found += sorted(os.path.relpath(os.path.join(folder, f), ROOT)
                        for f in files if f.endswith('.md'))
    return found


# ----------------------------------------------------------------------------- blocks

@dataclass(frozen=True)
class Block:
    line: int      # 1-based line of the opening fence
    lang: str
    text: str      # dedented to the fence's indentation
    page: str = 'README.md'   # the page it is on, from the repository root

    @property
    def lines(self) -> list[str]:
        return self.text.split('\n')


def read_blocks(text: str, page: str = 'README.md') -> list[Block]:
    """Every fenced block of a Markdown text (fences may be indented, as in a list)."""
    out, lines, i = [], text.split('\n'), 0
    while i < len(lines):
        m = re.match(r'^(\s*)```(\w*)\s*$', lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2)
        j = i + 1
        while not re.match(r'^\s*```\s*$', lines[j]):
            j += 1
        body = [x[indent:] if x[:indent].strip() == '' else x for x in lines[i + 1:j]]
        out.append(Block(i + 1, lang, '\n'.join(body), page))
        i = j + 1
    return out


def shell_blocks(text: str, page: str = 'README.md') -> list[Block]:
    return [b for b in read_blocks(text, page) if b.lang not in ('python', 'yaml')]


def fingerprints(blocks: list[Block]) -> list[str]:
    """Each block's first line, or its first n lines (joined by `` / ``) for the smallest
    n that no other block shares."""
    out = []
    for b in blocks:
        for n in range(1, len(b.lines) + 1):
            key = ' / '.join(x.strip() for x in b.lines[:n])
            if sum(' / '.join(x.strip() for x in o.lines[:n]) == key for o in blocks) == 1:
                break
        out.append(key)
    return out


def _page(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def all_shell_blocks() -> list[Block]:
    """The shell blocks of every page, page by page."""
    return [b for page in pages() for b in shell_blocks(_page(page), page)]


def page_blocks(block: Block) -> tuple[list[Block], int]:
    """(every fenced block of ``block``'s page, the index of ``block`` among them)."""
    blocks = read_blocks(_page(block.page), block.page)
    return blocks, next(i for i, b in enumerate(blocks) if b.text == block.text)


# ----------------------------------------------------------------------------- commands

def join_lines(lines: list[str]) -> list[str]:
    """Logical command lines: a trailing backslash, or an open quote, continues a line."""
    out, cur = [], None
    for line in lines:
        cur = line if cur is None else cur + '\n' + line
        if cur.endswith('\\'):
            cur = cur[:-1]
            continue
        try:
            shlex.split(cur, comments=True)
        except ValueError:   # an open quote: the command goes on
            continue
        out.append(cur)
        cur = None
    assert cur is None, f'unfinished command: {cur!r}'
    return out


def commands(block_text: str) -> list[list[str]]:
    """The argv of every command of a block of commands (comments and blank lines out)."""
    return [argv for argv in (shlex.split(c, comments=True) for c in
                              join_lines(block_text.split('\n'))) if argv]


@dataclass
class Step:
    command: str            # as written after '$ '
    output: list[str]       # the lines the README shows after it


def transcript(block_text: str) -> list[Step]:
    """A block of ``$ command`` lines, each followed by the output it shows."""
    steps: list[Step] = []
    lines = block_text.split('\n')
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('$ '):
            cmd = [line[2:]]
            while True:   # continuation lines of the command
                try:
                    joined = '\n'.join(cmd)
                    if joined.endswith('\\'):
                        raise ValueError
                    shlex.split(joined.replace('\\\n', ' '))
                    break
                except ValueError:
                    i += 1
                    cmd.append(lines[i])
            steps.append(Step('\n'.join(cmd).replace('\\\n', ' '), []))
        else:
            assert steps, f'output before any command: {line!r}'
            steps[-1].output.append(line)
        i += 1
    return steps


def optional_groups(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """(argv without its ``[...]`` optional groups, the groups' words)."""
    plain, groups, cur = [], [], None
    for word in argv:
        if cur is None and word.startswith('['):
            cur = []
            word = word[1:]
        if cur is not None:
            end = word.endswith(']') and word.count('[') < word.count(']') + 1
            cur.append(word[:-1] if end else word)
            if end:
                groups.append(cur)
                cur = None
        else:
            plain.append(word)
    assert cur is None, f'unclosed [ in {argv}'
    return plain, groups


# ----------------------------------------------------------------------------- flags

def pipeline_flags(name: str) -> set[str]:
    """Every flag ``beamml <name>`` takes: its own, --config, --anonymous_storage and
    Beam's options."""
    import importlib
    from beamml.pipelines._platform import templates
    from beamml.pipelines._platform.cli import _beam_parser
    module = importlib.import_module(f'beamml.pipelines.{name}')
    flags = {'--config', '--anonymous_storage', '--help', '-h'}
    for parser in (templates.flags_parser(module), _beam_parser()):
        for action in parser._actions:
            flags.update(action.option_strings)
    return flags


def check_flags(argv: list[str]) -> None:
    """``beamml [validate] <pipeline> ...``: every ``--flag`` is one the pipeline takes."""
    assert argv[0] == 'beamml', argv
    name = argv[2] if argv[1] == 'validate' else argv[1]
    known = pipeline_flags(name)
    plain, groups = optional_groups(argv)
    words = plain + [w for g in groups for w in g]
    for word in words:
        for flag in re.findall(r'(?:^|\|)(--[a-z_]+)', word):
            assert flag in known, f'beamml {name} has no flag {flag} (docs: {" ".join(argv)})'


def check_paths_exist(argv: list[str], *, under: str = ROOT) -> None:
    """Every word that names a file of the repository (configs/..., setup.py) exists."""
    for word in argv:
        for path in re.findall(r'(?:^|=|\./)((?:configs|docs|benchmarks|tests)/[\w./-]+|'
                               r'setup\.py)', word):
            assert os.path.exists(os.path.join(under, path)), f'{path} is not in the repository'


# ----------------------------------------------------------------------------- running

#: the volatile parts of a run's output, normalised on both sides (the README's and the
#: run's) before they are compared
VOLATILE = [
    (r'\b\d{8}T\d{6}Z-[0-9a-f]{6}\b', '<RUN_ID>'),                 # a dated run's id
    (r'\b\d{8}T\d{12}Z\b', '<VERSION>'),                             # a model version
    (r'\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\b', '<TIME>'),        # a _SUCCESS's time
    (r'^\d\d:\d\d:\d\d beamml:', '<HH:MM:SS> beamml:'),              # a log line's time
    (r'\bdone in \d+\.\d+ s\b', 'done in <S> s'),                    # a block's duration
    (r'\bbeamapp-[\w-]+', 'beamapp-<JOB>'),                          # a dry run's job name
]


def normalise(lines: list[str], replace: dict[str, str] | None = None) -> list[str]:
    out = []
    for line in lines:
        for old, new in (replace or {}).items():
            line = line.replace(old, new)
        for pattern, repl in VOLATILE:
            line = re.sub(pattern, repl, line, flags=re.M)
        out.append(line.rstrip())
    return out


@dataclass
class Result:
    code: int
    stdout: list[str]
    stderr: list[str]
    echo: str | None = None   # `; echo "TEXT$?"` after the command: TEXT

    def seen(self) -> list[str]:
        """The lines a user sees in the README's transcripts: standard output, then the
        one-line error (the progress lines of standard error left out)."""
        return (self.stdout + [x for x in self.stderr if re.match(
            r'^beamml [a-z_]+: (error|interrupted|terminated)', x)]
            + ([] if self.echo is None else [f'{self.echo}{self.code}']))


def beamml(argv: list[str], cwd: str) -> Result:
    """``beamml ...`` as its console script runs it (``main``: the exit code it returns,
    what it prints), in this process, in ``cwd``."""
    done = run_beamml(*argv[1:], cwd=cwd)
    return Result(done.returncode, done.stdout.splitlines(), done.stderr.splitlines())


def run_step(step: Step, cwd: str, *, same_flags: list[str] | None = None,
             replace: dict[str, str] | None = None) -> Result:
    """One ``$ command`` of a transcript: ``beamml ...``, ``ls``, ``head -N``, ``python -c``,
    each optionally followed by ``; echo $?`` or ``; echo "exit $?"`` (the exit code is
    then a line of the output; without it the command must exit 0). ``...`` in a beamml
    command stands for ``same_flags``."""
    command = step.command
    for old, new in (replace or {}).items():
        command = command.replace(old, new)
    echo = None
    m = re.match(r'^(.*?);\s*echo\s+("?)(.*?)\$\?\2\s*$', command, re.S)
    if m:
        command, echo = m.group(1), m.group(3)
    argv = shlex.split(command)
    if argv[0] == 'beamml':
        if '...' in argv:
            i = argv.index('...')
            argv = argv[:i] + list(same_flags) + argv[i + 1:]
        result = beamml(argv, cwd)
    elif argv[0] == 'ls':
        names = sorted(os.listdir(os.path.join(cwd, argv[1])))
        result = Result(0, ['  '.join(names)], [])
    elif argv[0] == 'head':
        n = int(argv[1].lstrip('-'))
        with open(os.path.join(cwd, argv[2]), encoding='utf-8') as f:
            result = Result(0, f.read().splitlines()[:n], [])
    elif argv[0] == 'python' and argv[1] == '-c':
        before = os.getcwd()
        os.chdir(cwd)
        try:
            exec(compile(argv[2], 'README python -c', 'exec'), {})
        finally:
            os.chdir(before)
        result = Result(0, [], [])
    else:
        raise AssertionError(f'no way to run {argv[0]!r} here: {command}')
    result.echo = echo
    if echo is None:
        assert result.code == 0, (f'{command} exited {result.code}; the README shows no other '
                                  f'exit code:\n' + '\n'.join(result.stdout + result.stderr))
    return result


def check_transcript(block: Block, cwd: str, *, same_flags: list[str] | None = None,
                     replace: dict[str, str] | None = None,
                     shown: dict[str, str] | None = None) -> list[Result]:
    """Run every step of a transcript block and compare what it prints with what the
    README shows under it. ``replace`` changes the command (a substitution); ``shown``
    maps text of the run's output back to the README's spelling (the emulator's bucket)."""
    results, replace = [], dict(replace or {})
    for step in transcript(block.text):
        result = run_step(step, cwd, same_flags=same_flags, replace=replace)
        want = [x for x in step.output if x != '...']
        # a model version the README shows is the run's in the commands that follow
        version = r'\b\d{8}T\d{12}Z\b'
        replace.update(zip(re.findall(version, '\n'.join(want)),
                           re.findall(version, '\n'.join(result.seen()[-len(want):]))))
        got = normalise(result.seen(), shown)
        if '...' in step.output:   # "..." stands for the lines left out before the rest
            got = got[len(got) - len(want):] if len(want) <= len(got) else got
        assert got == normalise(want), (
            f'{block.page} line {block.line}: `{step.command}` printed\n' + '\n'.join(got) +
            f'\nwhere {block.page} shows\n' + '\n'.join(normalise(want)))
        results.append(result)
    return results


# ----------------------------------------------------------------------------- sample data

def _points(path: str, X: np.ndarray, ids=None) -> None:
    n, d = X.shape
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d)
    ids = np.arange(n, dtype=np.int64) if ids is None else ids
    pq.write_table(pa.table({'id': ids, 'features': features}), path)


def _blobs(rng, centres, n_each, sd=1.0) -> np.ndarray:
    X = np.concatenate([rng.normal(c, sd, (n_each, len(c))) for c in np.asarray(centres)])
    return X[rng.permutation(len(X))]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """The sample data the README's commands name, made once for the module:

    * ``data/*.parquet``: 2,000 points of d=4 in 4 blobs (norms, assign, kmeans, pca,
      monitor); ``data/a.csv``: 20,000 rows ``id,x1,x2`` of which 2 are refused (the
      dead letters' example: row 3, line 5, ``x1`` = ``x``);
    * ``logs/*.csv``: events with a ``user_id`` (index_ids); ``logs/*.parquet``: prediction
      logs with the columns of both tasks (evaluate);
    * ``models/blobs``: what the kmeans example (``beamml kmeans --input 'data/*.parquet'
      --k 16 --model models/blobs``) trains, run here as the README writes it.
    """
    root = str(tmp_path_factory.mktemp('readme'))
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(root, 'data'))
    X = _blobs(rng, rng.uniform(-8, 8, (4, 4)), 500)
    _points(os.path.join(root, 'data', 'points-0.parquet'), X[:1000])
    _points(os.path.join(root, 'data', 'points-1.parquet'), X[1000:],
            np.arange(1000, 2000, dtype=np.int64))
    rows = ['id,x1,x2'] + [f'{i + 1},{x:.6g},{y:.6g}' for i, (x, y)
                           in enumerate(rng.normal(size=(20_000, 2)))]
    rows[4] = '4,x,1'           # row 3, line 5: a value that is not a number
    rows[101] = '101,1,2,3'     # wrong number of fields
    with open(os.path.join(root, 'data', 'a.csv'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    os.makedirs(os.path.join(root, 'logs'))
    n = 400
    with open(os.path.join(root, 'logs', 'events.csv'), 'w') as f:
        f.write('user_id,item\n' + ''.join(f'u{u},{i}\n' for u, i in
                                           zip(rng.integers(0, 50, n), rng.integers(0, 9, n))))
    q = np.repeat(np.arange(40), 10)
    pq.write_table(pa.table({
        'model': rng.choice(['a', 'b'], n), 'truth': rng.random(n) < 0.4,
        'prediction': rng.random(n) < 0.4, 'q_id': q, 'predicted_rank': np.tile(np.arange(10), 40),
        'truth_relevance': rng.integers(0, 3, n)}), os.path.join(root, 'logs', 'preds.parquet'))
    return root


def fresh(workdir: str, name: str, *copy: str) -> str:
    """An empty folder ``workdir/name`` holding copies of the sample files ``copy``."""
    d = os.path.join(workdir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for path in copy:
        src = os.path.join(workdir, path)
        os.makedirs(os.path.dirname(os.path.join(d, path)) or d, exist_ok=True)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(d, path))
    return d


_MEMO: dict = {}


def once(key, fn):
    """``fn()`` the first time ``key`` is asked for, its result after that (the blocks of
    one example share a run)."""
    if key not in _MEMO:
        _MEMO[key] = fn()
    return _MEMO[key]


# ----------------------------------------------------------------------------- handlers

def static_gcloud(block: Block, workdir: str) -> None:
    """gcloud / docker / chromium commands (nothing to run offline): the repository files
    they name exist; a beamml command among them uses only flags its pipeline has."""
    for argv in commands(block.text):
        assert argv[0] in ('gcloud', 'beamml', 'chromium', 'docker'), argv
        check_paths_exist(argv)
        if argv[0] == 'beamml':
            check_flags([w for w in argv if not w.startswith('...')])


def convention_usage_error(block: Block, workdir: str) -> None:
    """The one line of a refused value, as docs/conventions.md prints it."""
    result = beamml(['beamml', 'kmeans', '--input', 'x.csv', '--model', 'm', '--k', '0'],
                    workdir)
    assert result.code == 2 and result.stderr == [block.text.strip()], result.stderr


def convention_records_line(block: Block, workdir: str) -> None:
    """The records line: a norms run over 1,000 rows, 2 of them refused, prints it."""
    rows = ['id,x0,x1'] + [f'{i},{i},1' for i in range(998)] + ['998,a,1', '999,1']
    os.makedirs(os.path.join(workdir, 'conv'), exist_ok=True)
    with open(os.path.join(workdir, 'conv', 'in.csv'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    result = beamml(['beamml', 'norms', '--input', 'conv/in.csv', '--output', 'out/norms',
                     '--max_refused_fraction', '1'], workdir)
    assert result.code == 0, result.stderr[-3:]
    assert block.text.strip() in result.stdout, result.stdout


def static_make(block: Block, workdir: str) -> None:
    """``make X``: each target is one of the Makefile's. ``make demo`` runs ``beamml demo``,
    whose last line says how to run ``beamml`` from ``.venv`` (not on ``PATH``), as the
    block's page does; one page says how long ``make test`` took."""
    from beamml.pipelines.demo import how_to_run_beamml
    with open(os.path.join(ROOT, 'Makefile'), encoding='utf-8') as f:
        makefile = f.read()
    targets = set(re.findall(r'^([a-z0-9]+):', makefile, re.M))
    for argv in commands(block.text):
        assert argv[0] == 'make' and argv[1] in targets, argv
    assert re.search(r'^demo:.*\n\t\$\(PY\) -m beamml demo\b', makefile, re.M)
    before = os.getcwd()
    os.chdir(ROOT)
    try:
        venv_bin = os.path.relpath(os.path.dirname(os.path.abspath(__import__('sys').executable)))
        hint = how_to_run_beamml({'PATH': '/usr/bin:/bin'})
    finally:
        os.chdir(before)
    if venv_bin != os.path.join('.venv', 'bin'):
        pytest.skip(f'the suite runs from {venv_bin}, not the .venv/bin of make')
    took = [p for p in pages() if re.search(r'`make test` took \d+ min \d+ s \(', _page(p))]
    assert len(took) == 1, f'make test has no duration, or more than one: {took}'
    text = _page(block.page)
    for words in ('. .venv/bin/activate', '.venv/bin/beamml'):
        assert f'`{words}`' in text, f'{block.page} does not say {words}'
        assert words in hint, hint


def static_flex_build(block: Block, workdir: str) -> None:
    static_gcloud(block, workdir)
    with open(os.path.join(ROOT, 'configs', 'templates', 'cloudbuild.yaml')) as f:
        cloudbuild = f.read()
    for argv in commands(block.text):
        for sub in re.findall(r'(_[A-Z]+)=', ' '.join(argv)):
            assert '${' + sub + '}' in cloudbuild or '$' + sub in cloudbuild, sub


def static_flex_run(block: Block, workdir: str) -> None:
    """The parameters given are the assign template's."""
    static_gcloud(block, workdir)
    with open(os.path.join(ROOT, 'configs', 'templates', 'assign.json')) as f:
        names = {p['name'] for p in json.load(f)['parameters']}
    argv = commands(block.text)[0]
    given = [kv.split('=', 1)[0] for i, w in enumerate(argv) if argv[i - 1] == '--parameters'
             for kv in w.split(',')]
    assert given and set(given) <= names, (given, names)


def static_scheduler(block: Block, workdir: str) -> None:
    static_gcloud(block, workdir)
    with open(os.path.join(ROOT, 'configs', 'scheduler', 'assign_daily.json')) as f:
        body = json.load(f)
    with open(os.path.join(ROOT, 'configs', 'templates', 'assign.json')) as f:
        names = {p['name'] for p in json.load(f)['parameters']}
    assert set(body['launchParameter']['parameters']) <= names


def static_beamml(block: Block, workdir: str) -> None:
    """A Dataflow submission: its flags are the pipeline's, its files exist."""
    for argv in commands(block.text):
        check_flags(argv)
        check_paths_exist(argv)


def run_commands(block: Block, workdir: str, name: str | None = None) -> list[Result]:
    """Each command of the block, its ``[...]`` optional flags checked and left out, in a
    fresh copy of the sample data; each must exit 0."""
    cwd = fresh(workdir, name or f'block{block.line}', 'data', 'logs',
                *(['models'] if os.path.isdir(os.path.join(workdir, 'models')) else []))
    results = []
    for argv in commands(block.text):
        check_flags(argv)
        plain, _ = optional_groups(argv)
        result = beamml(plain, cwd)
        assert result.code == 0, (f'{block.page} line {block.line}: {" ".join(plain)} exited '
                                  f'{result.code}:\n' + '\n'.join(result.stderr[-5:]))
        results.append(result)
    return results


KMEANS_EXAMPLE = "beamml kmeans --input 'data/*.parquet' --k 16 --model models/blobs"


def trained(workdir: str) -> Result:
    """The kmeans example, run once in ``workdir`` (its model is what the assign and
    monitor examples read: ``models/blobs``)."""
    def train():
        text = next(b.text for b in all_shell_blocks() if b.text.startswith(KMEANS_EXAMPLE))
        argv, _ = optional_groups(commands(text)[0])
        result = beamml(argv, workdir)
        assert result.code == 0, result.stderr[-3:]
        return result
    return once(('trained', workdir), train)


def run_needing_model(block: Block, workdir: str) -> None:
    trained(workdir)
    run_commands(block, workdir)


def run_kmeans_example(block: Block, workdir: str) -> None:
    check_flags(commands(block.text)[0])
    assert trained(workdir).code == 0


def block_log_line(block: Block, workdir: str) -> None:
    """The line the one block of the monitor example's training logs."""
    stderr = monitor_run(workdir)[0].stderr
    got = normalise([x for x in stderr if ': block 1 done' in x])
    assert got == normalise(block.lines), (got, block.lines)


def validate_sample(block: Block, workdir: str) -> None:
    """``$ beamml validate norms ...``: the offline translation prints what is shown."""
    check_transcript(block, fresh(workdir, 'validate'))


def dead_letter_sample(block: Block, workdir: str) -> None:
    """The dead letter shown is one the records-line example's run writes."""
    result = records_line_run(workdir)
    with open(os.path.join(result[0], 'out', 'norms-errors-00000-of-00001.jsonl')) as f:
        letters = f.read().splitlines()
    assert block.lines[0] in letters, letters


def records_line_run(workdir: str):
    def go():
        cwd = fresh(workdir, 'records', 'data')
        text = next(b.text for b in all_shell_blocks()
                    if b.text.startswith('$ beamml norms --input data/a.csv'))
        return cwd, check_transcript(next(b for b in all_shell_blocks() if b.text == text), cwd)
    return once(('records', workdir), go)


def records_line(block: Block, workdir: str) -> None:
    records_line_run(workdir)


SCHEDULED = "beamml assign --input 'gs://B/incoming/{date}/*.parquet' --model gs://B/models"


def scheduled_command(block: Block, workdir: str) -> None:
    """The daily command: its flags (it is run, with a fixed date, by the next block)."""
    check_flags(commands(block.text)[0])


def scheduled_runs(block: Block, workdir: str, gcs_bucket: str) -> None:
    """First run, rerun, a day without data, on the Cloud Storage emulator: ``gs://B`` is
    the emulator's bucket. Three files of 5 points of d=2 for 2026-11-22, a model of k=2."""
    from apache_beam.io.filesystems import FileSystems
    from beamml.transforms.model import CentroidModel
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 0.5, (14, 2)), [[5.0, 5.0]]])
    for i in range(3):
        table = pa.table({'id': np.arange(5 * i, 5 * i + 5),
                          'features': pa.FixedSizeListArray.from_arrays(
                              pa.array(X[5 * i:5 * i + 5].ravel()), 2)})
        with FileSystems.create(f'{gcs_bucket}/incoming/2026-11-22/p{i}.parquet') as f:
            pq.write_table(table, f)
    CentroidModel(np.array([[0.0, 0.0], [5.0, 5.0]])).save(f'{gcs_bucket}/models')
    daily = next(commands(b.text)[0] for b in all_shell_blocks()
                 if b.text.startswith(SCHEDULED))
    same = [w.replace('gs://B/', f'{gcs_bucket}/') for w in daily[2:]]
    i = same.index('--date')
    same = same[:i] + same[i + 2:]   # the transcript gives the date
    check_transcript(block, fresh(workdir, 'scheduled'), same_flags=same,
                     shown={gcs_bucket: 'gs://B'})


DRY_RUN = ['--project', 'my-project', '--region', 'us-central1',
           '--temp_location', 'gs://my-bucket/tmp']


def _offline(argv: list[str], cwd: str) -> Result:
    """A Pub/Sub or Dataflow command translated offline (``beamml validate``), with the
    placeholder project ``P`` as ``my-project``."""
    argv = [w.replace('projects/P/', 'projects/my-project/') for w in argv]
    if argv[1] != 'validate':
        argv = ['beamml', 'validate'] + argv[1:]
    result = beamml(argv + DRY_RUN, cwd)
    assert result.code == 0, (argv, result.stderr[-3:])
    assert 'type=streaming' in result.stdout[0], result.stdout[:2]
    return result


def streaming_examples(block: Block, workdir: str, gcs_bucket: str) -> None:
    """Pub/Sub commands: translated offline (a dry run checks the names, flags, model);
    the watched bucket pattern: run on the emulator (``gs://b`` its bucket), where no
    file has landed yet, stopped after 2 s."""
    trained(workdir)
    cwd = fresh(workdir, 'streaming', 'models')
    for argv in commands(block.text):
        check_flags(argv)
        if '--watch_interval' in argv:
            argv = [w.replace('gs://b/', f'{gcs_bucket}/') for w in argv] + ['--stop_after', '2']
            result = beamml(argv, cwd)
            assert result.code == 0, result.stderr[-3:]
            assert result.stdout[-1].startswith('metrics: out/eval/metrics-'), result.stdout
        else:
            _offline(argv, cwd)


def dataflow_streaming(block: Block, workdir: str) -> None:
    """gcloud: static; ``beamml validate`` run offline from the repository's root with the
    shipped config (its placeholders overridden on the command line, the model the kmeans
    example's); the submissions: their flags."""
    trained(workdir)
    model = os.path.join(workdir, 'models', 'blobs')
    for argv in commands(block.text):
        check_paths_exist(argv)
        if argv[0] == 'gcloud':
            continue
        argv = [w for w in argv if not re.match(r'^\.\.\.|\.\.\.$|^same$', w)]
        check_flags(argv)
        if argv[1] == 'validate':   # from the repository root: the config's ../setup.py
            _offline([model if w == 'models/blobs' else w for w in argv], ROOT)


def _shadow_data(cwd: str) -> None:
    """10,000 points in four blobs; production model 20261130T000000000000Z: 3 centres, one
    between two blobs (LATEST); the candidate 20261201T000000000000Z: the 4 blob centres;
    20261202T000000000000Z: a newer candidate (the canary)."""
    from beamml.transforms.model import CentroidModel
    rng = np.random.default_rng(11)
    blobs = np.array([[0.0, 0.0], [0.0, 6.0], [6.0, 0.0], [6.0, 6.0]])
    _points(os.path.join(cwd, 'points.parquet'), _blobs(rng, blobs, 2500))
    models = os.path.join(cwd, 'models')
    CentroidModel(np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 6.0]]),
                  version='20261130T000000000000Z').save(models)
    for version in ('20261201T000000000000Z', '20261202T000000000000Z'):
        CentroidModel(blobs, version=version).save(models, make_latest=False)


def shadow_run(workdir: str) -> Result:
    def go():
        cwd = fresh(workdir, 'shadow')
        _shadow_data(cwd)
        blocks, i = page_blocks(next(b for b in all_shell_blocks() if '--shadow_model' in
                                     b.text and b.text.startswith('beamml assign')))
        assert blocks[i + 1].lines[0] == 'thresholds:', 'gate.yaml follows the command'
        with open(os.path.join(cwd, 'gate.yaml'), 'w') as f:
            f.write(blocks[i + 1].text + '\n')
        argv = commands(blocks[i].text)[0]
        check_flags(argv)
        result = beamml(argv, cwd)
        assert result.code == 0, result.stderr[-3:]
        return cwd, result
    return once(('shadow', workdir), go)


def shadow_command(block: Block, workdir: str) -> None:
    shadow_run(workdir)


def gate_yaml(block: Block, workdir: str) -> None:
    """gate.yaml: the shadow command reads it (written as shown)."""
    from beamml.transforms.deployment import Gate
    import yaml
    Gate.from_dict(yaml.safe_load(block.text))
    shadow_run(workdir)


def shadow_output(block: Block, workdir: str) -> None:
    _, result = shadow_run(workdir)
    assert normalise(result.seen()) == normalise(block.lines), '\n'.join(result.seen())


def canary(block: Block, workdir: str) -> None:
    """After the shadow example promoted its candidate: a canary of the newer version."""
    cwd, _ = shadow_run(workdir)
    check_transcript(block, cwd)


def model_layout(block: Block, workdir: str) -> None:
    """The files of a saved model: ``<dir>/<version>/model.json`` and ``<dir>/LATEST``."""
    from beamml.transforms.model import CentroidModel
    cwd = fresh(workdir, 'layout')
    paths = [x.split()[0] for x in block.lines]
    version = paths[0].split('/')[1]
    CentroidModel(np.eye(2), version=version).save(os.path.join(cwd, 'models'))
    found = sorted(os.path.relpath(os.path.join(d, f), cwd)
                   for d, _, fs in os.walk(cwd) for f in fs)
    assert found == sorted(paths), found


def ranking_metrics_json(block: Block, workdir: str) -> None:
    """metrics.json of ``evaluate --task ranking --slice_by model`` on the 16 rows of 4
    queries of *Definitions* (precisions 2/4, 3/3, 0/5, 2/4; queries 1, 2 of model a)."""
    cwd = fresh(workdir, 'ranking')
    rel = {1: [1, 0, 1, 0], 2: [1, 1, 1], 3: [0, 0, 0, 0, 0], 4: [0, 1, 0, 1]}
    q = [k for k, v in rel.items() for _ in v]
    os.makedirs(os.path.join(cwd, 'logs'))
    pq.write_table(pa.table({'q_id': q, 'predicted_rank': [r for v in rel.values()
                                                           for r in range(len(v))],
                             'truth_relevance': [x for v in rel.values() for x in v],
                             'model': ['a' if k < 3 else 'b' for k in q]}),
                   os.path.join(cwd, 'logs', 'ranking.parquet'))
    result = beamml(['beamml', 'evaluate', '--input', 'logs/*.parquet', '--task', 'ranking',
                     '--cutoff', '5', '--slice_by', 'model', '--output', 'out/eval'], cwd)
    assert result.code == 0, result.stderr[-3:]
    with open(os.path.join(cwd, 'out', 'eval', 'metrics.json')) as f:
        got = json.load(f)
    shown = json.loads(block.text.replace('{...}', 'null'))
    assert set(shown) == set(got) and set(shown['slices']) == set(got['slices'])
    assert {k: shown[k] for k in ('task', 'overall', 'counts')} == \
        {k: got[k] for k in ('task', 'overall', 'counts')}, got


def kmeans_error(block: Block, workdir: str) -> None:
    cwd = fresh(workdir, 'kmeans_error')
    with open(os.path.join(cwd, 'two.csv'), 'w') as f:
        f.write('id,a,b\n1,1,2\n2,x,3\n')
    check_transcript(block, cwd)


def pca_example(block: Block, workdir: str) -> None:
    once(('pca', workdir), lambda: check_transcript(block, fresh(workdir, 'pca')))


def pca_json(block: Block, workdir: str) -> None:
    """pca.json of the example above, as written (compacted here)."""
    pca = next(b for b in all_shell_blocks() if b.text.startswith('$ python -c')
               and 'beamml pca' in b.text)
    once(('pca', workdir), lambda: check_transcript(pca, fresh(workdir, 'pca')))
    with open(os.path.join(workdir, 'pca', 'out', 'pca.json')) as f:
        got = json.load(f)
    shown = json.loads(block.text)
    assert set(shown) == set(got)
    for key, value in shown.items():   # the last of 17 digits varies with the BLAS
        np.testing.assert_allclose(got[key], value, rtol=1e-13, atol=0, err_msg=key)


def monitor_commands(block: Block, workdir: str) -> None:
    """Batch: run (yesterday's folder of the sample points, the kmeans example's model);
    streaming: translated offline."""
    import datetime as dt
    trained(workdir)
    cwd = fresh(workdir, 'monitor', 'data', 'models')
    yesterday = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    os.makedirs(os.path.join(cwd, 'data', yesterday))
    shutil.copy(os.path.join(cwd, 'data', 'points-0.parquet'), os.path.join(cwd, 'data', yesterday))
    os.makedirs(os.path.join(cwd, 'configs'))
    shutil.copy(os.path.join(ROOT, 'configs', 'monitor.yaml'), os.path.join(cwd, 'configs'))
    for argv in commands(block.text):
        check_flags(argv)
        plain, _ = optional_groups(argv)
        if '--streaming' in plain:
            _offline(plain, cwd)
            continue
        result = beamml(plain, cwd)
        assert result.code == 0, (plain, result.stderr[-3:])


def _monitor_data(cwd: str) -> None:
    """3,000 points of 3 blobs (d=3); today.parquet: the same with features 0 and 2
    shifted by 1.5 standard deviations."""
    rng = np.random.default_rng(5)
    X = _blobs(rng, [[0, 0, 0], [6, 0, 3], [0, 6, 6]], 1000)
    os.makedirs(os.path.join(cwd, 'data'))
    _points(os.path.join(cwd, 'data', 'train.parquet'), X)
    Y = X.copy()
    Y[:, [0, 2]] += 1.5 * X[:, [0, 2]].std(axis=0)
    _points(os.path.join(cwd, 'data', 'today.parquet'), Y)


def monitor_run(workdir: str) -> list[Result]:
    def go():
        cwd = fresh(workdir, 'monitor_example')
        _monitor_data(cwd)
        block = next(b for b in all_shell_blocks()
                     if b.text.startswith('$ beamml kmeans --input data/train.parquet'))
        return check_transcript(block, cwd)
    return once(('monitor', workdir), go)


def monitor_example(block: Block, workdir: str) -> None:
    monitor_run(workdir)


def report_example(block: Block, workdir: str) -> None:
    """The kmeans run of *Reports*, on the blobs the Python block before it writes."""
    cwd = fresh(workdir, 'report')
    blocks, i = page_blocks(block)
    assert blocks[i - 1].lang == 'python' and 'blobs.parquet' in blocks[i - 1].text
    before = os.getcwd()
    os.chdir(cwd)
    try:
        exec(compile(blocks[i - 1].text, f'{block.page} blobs', 'exec'), {})
    finally:
        os.chdir(before)
    check_transcript(block, cwd)


def quickstart(block: Block, workdir: str) -> None:
    """The README's first run: the points its ``python -c`` makes, kmeans, assign and the
    rerun that finds the destination complete, output compared."""
    check_transcript(block, fresh(workdir, 'quickstart'))


def layout_section(block: Block, workdir: str) -> None:
    """The Layout names every module of pipelines/ (the commands by "one module per runnable
    pipeline") and transforms/ (a sub-package's modules by their stem, as ``io/  errors,
    layout, ...`` does), and every ``name.py`` it gives exists."""
    from beamml.pipelines.__main__ import pipelines
    text = block.text
    assert 'one module per runnable pipeline (beamml <name>)' in text
    commands_ = set(pipelines())   # named by that line
    for top in ('pipelines', 'transforms'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            rel = os.path.relpath(folder, ROOT)
            for f in files:
                if not f.endswith('.py') or f == '__init__.py' or f == '__main__.py':
                    continue
                stem = f[:-3]
                if rel == 'pipelines' and stem in commands_:
                    continue
                named = (re.search(rf'\b{re.escape(f)}\b', text) if rel == top
                         else re.search(rf'\b{re.escape(stem)}\b', text))
                assert named, f'README Layout does not name {rel}/{f}'
    for name in re.findall(r'\b([a-z_]+\.py)\b', text):
        assert any(name in fs for _, _, fs in os.walk(ROOT) if '.venv' not in _), name


def static_cycle(block: Block, workdir: str) -> None:
    """``beamml cycle`` commands: each parses (step and flags are the cycle's), its files
    exist."""
    from beamml.pipelines.cycle import parser
    for argv in commands(block.text):
        assert argv[:2] == ['beamml', 'cycle'], argv
        args, unknown = parser().parse_known_args(argv[2:])
        assert not unknown, f'beamml cycle has no flag {unknown} (docs: {" ".join(argv)})'
        check_paths_exist(argv)


def cycle_day_output(block: Block, workdir: str) -> None:
    """A day's lines, one per step (tests/test_cycle.py compares them with the 30-day run)."""
    steps = [re.match(r'^2026-11-\d\d (\w+): ', line) for line in block.lines]
    assert all(steps), block.text
    assert [m.group(1) for m in steps] == ['wait', 'assign', 'gate', 'monitor', 'retrain']


#: every plain block of every page: page -> {fingerprint -> (kind, check)}. A check is
#: called with the block and the module's sample-data folder (and the emulator's bucket
#: when it asks).
BLOCKS = {
    'README.md': {
        'make demo    # creates .venv, installs beamml, runs the main jobs on sample data, '
        'prints where results are': ('static', static_make),
        '$ python -c "': ('run', quickstart),
    },
    'docs/getting-started.md': {
        'make demo    # creates .venv, installs beamml, runs the main jobs on sample data, '
        'prints where results are': ('static', static_make),
    },
    'docs/running.md': {
        'beamml norms --runner DataflowRunner --project P --region us-central1 \\':
            ('static', static_beamml),
        '$ beamml validate norms --project my-project --region us-central1 \\':
            ('run', validate_sample),
    },
    'docs/data-formats.md': {
        '{"file": "data/a.csv", "line": 5, "reason": "value in \'x1\' is not a number", '
        '"record": {"id": "4", "x1": "x", "x2": "1"}, "row": 3}': ('run', dead_letter_sample),
        '$ beamml norms --input data/a.csv --output out/norms': ('run', records_line),
    },
    'docs/conventions.md': {
        "beamml kmeans: error: argument --k: '0' is not an integer >= 1 (see beamml kmeans "
        '--help)': ('run', convention_usage_error),
        'records_read=1000 records_ok=998 records_refused=2 errors=out/norms-errors-*.jsonl':
            ('run', convention_records_line),
    },
    'docs/operations.md': {
        "beamml assign --input 'gs://B/incoming/{date}/*.parquet' --model gs://B/models \\":
            ('static', scheduled_command),
        '$ beamml assign ... --date 2026-11-22': ('substituted', scheduled_runs),
        'gcloud services enable dataflow.googleapis.com compute.googleapis.com '
        'storage.googleapis.com \\': ('static', static_gcloud),
        'gcloud builds submit --config configs/templates/cloudbuild.yaml \\':
            ('static', static_flex_build),
        'gcloud dataflow flex-template run beamml-assign-20261122 --region us-central1 \\':
            ('static', static_flex_run),
        'gcloud scheduler jobs create http beamml-assign-daily --location us-central1 \\':
            ('static', static_scheduler),
    },
    'docs/streaming.md': {
        '# nearest-centroid inference on a Pub/Sub stream, the model hot-swapped from its '
        'directory': ('substituted', streaming_examples),
        '# the Pub/Sub resources (once)': ('substituted', dataflow_streaming),
    },
    'docs/pipelines/norms.md': {
        "beamml norms --input 'data/*.parquet' --output out/norms [--output_format csv]":
            ('run', run_commands),
    },
    'docs/pipelines/index_ids.md': {
        "beamml index_ids --input 'logs/*.csv' --id_column user_id --output out/users \\":
            ('run', run_commands),
    },
    'docs/pipelines/assign.md': {
        "beamml assign --input 'data/*.parquet' --model models/blobs --output out/assigned \\":
            ('run', run_needing_model),
        'beamml assign --input points.parquet --model models \\': ('run', shadow_command),
        'thresholds:': ('run', gate_yaml),
        'records_read=10000 records_ok=10000 records_refused=0 '
        'errors=out/assigned-errors-*.jsonl': ('run', shadow_output),
        '$ beamml assign --input points.parquet --model models \\': ('run', canary),
    },
    'docs/models.md': {
        'models/20250101T120000123456Z/model.json    one per trained model (UTC timestamp '
        'version)': ('run', model_layout),
    },
    'docs/pipelines/evaluate.md': {
        "beamml evaluate --input 'logs/*.parquet' --task classification --output out/eval \\":
            ('run', run_commands),
        '{"task": "ranking",': ('run', ranking_metrics_json),
    },
    'docs/pipelines/kmeans.md': {
        KMEANS_EXAMPLE + ' \\': ('run', run_kmeans_example),
        '$ beamml kmeans --input two.csv --k 2 --model models; echo $?':
            ('run', kmeans_error),
        '<HH:MM:SS> beamml: kmeans <VERSION>: block 1 done in <S> s: 2 iteration(s) in all, '
        'inertia 9084.91, centre shift 0, stopped (converged_labels)': ('run', block_log_line),
    },
    'docs/pipelines/pca.md': {
        "beamml pca --input 'data/*.parquet' --n_components 2 --output out/pca/ \\":
            ('run', run_commands),
        '$ python -c "': ('run', pca_example),
        '{"mean": [1000000.023765296, 1000000.0103802262, 1000000.0015674125],':
            ('run', pca_json),
    },
    'docs/pipelines/monitor.md': {
        "beamml monitor --input 'data/{date}/*.parquet' --model models/blobs \\":
            ('run', monitor_commands),
        '$ beamml kmeans --input data/train.parquet --k 3 --random_state 0 --model models':
            ('run', monitor_example),
    },
    'docs/reports.md': {
        '$ beamml kmeans --input blobs.parquet --k 6 --init random --n_init 1 --random_state 1 \\':
            ('run', report_example),
        'chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \\':
            ('static', static_gcloud),
    },
    'docs/cycle.md': {
        "beamml cycle day --date 2026-11-13 --input 'gs://B/incoming/{date}/*.parquet' \\":
            ('static', static_cycle),
        '2026-11-13 wait: 1 input file(s) match gs://B/incoming/2026-11-13/*.parquet':
            ('static', cycle_day_output),
    },
    'docs/design.md': {
        'setup.py            the package (also what Dataflow workers install: --setup_file '
        './setup.py)': ('static', layout_section),
    },
}


def _key(page: str, fingerprint: str) -> tuple[str, str]:
    return page, normalise([fingerprint])[0]


#: (page, normalised fingerprint) -> (kind, check)
CHECKS = {_key(page, fp): entry for page, entries in BLOCKS.items()
          for fp, entry in entries.items()}


def _classified() -> list[tuple[tuple[str, str], Block]]:
    """((page, normalised fingerprint), block) of every shell block of every page."""
    out = []
    for page in pages():
        blocks = shell_blocks(_page(page), page)
        out += [(_key(page, fp), b) for fp, b in zip(fingerprints(blocks), blocks)]
    return out


def test_every_block_is_classified():
    found = _classified()
    new = [(key[0], b.line, key[1]) for key, b in found if key not in CHECKS]
    assert not new, (
        'blocks that tests/test_readme_shell.py does not know (page, line, fingerprint): '
        f'{new}. Add each to BLOCKS under its page with its fingerprint and a check: run it '
        'in the sample data (run), run it on an emulator or translate it offline '
        '(substituted), or check its flags and files (static).')
    gone = set(CHECKS) - {key for key, _ in found}
    assert not gone, f'BLOCKS entries whose block is gone from their page: {sorted(gone)}'


def test_every_page_is_in_blocks_or_has_no_shell_block():
    assert set(BLOCKS) <= set(pages()), set(BLOCKS) - set(pages())


def _params():
    return [pytest.param(key, block, id=f'{block.page}:line{block.line}-{CHECKS[key][0]}')
            for key, block in _classified() if key in CHECKS]


@pytest.mark.parametrize('key, block', _params())
def test_readme_block(key, block, workdir, request):
    kind, check = CHECKS[key]
    if kind == 'substituted' and 'gcs_bucket' in check.__code__.co_varnames:
        check(block, workdir, request.getfixturevalue('gcs_bucket'))
    else:
        check(block, workdir)

