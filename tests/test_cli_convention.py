"""One CLI convention: renamed flags keep their old names for one release with a one-line
notice, usage errors are one line, value checks are declared once (their type objects
give the templates' regexes), one exit-code table, one records line."""
from __future__ import annotations

import argparse
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamml.pipelines import evaluate, kmeans, norms
from beamml.pipelines._platform import values
from beamml.pipelines._platform.exits import Exit
from beamml.pipelines._platform.main import main_wrapper, records_line
from beamml.pipelines._platform.templates import flags_parser, regexes


@pytest.fixture
def points(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.1, (20, 2)) for c in (0.0, 5.0)])
    path = tmp_path / 'in' / 'p.parquet'
    path.parent.mkdir()
    pq.write_table(pa.table({'id': np.arange(len(X)),
                             'features': pa.array(list(X), pa.list_(pa.float64(), 2))}), path)
    return str(path)


def test_an_old_flag_name_works_for_one_release_with_one_line_on_stderr(points, tmp_path,
                                                                         capsys):
    old = str(tmp_path / 'old')
    assert main_wrapper(kmeans.run, ['--input', points, '--k', '2', '--random_state', '0',
                                     '--model_dir', old], prog='beamml kmeans') == 0
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if 'deprecated' in line]
    assert notices == ['beamml kmeans: warning: --model_dir is deprecated (it goes in beamml '
                       '0.3): use --model']
    assert (tmp_path / 'old' / 'LATEST').exists()


def test_an_old_key_of_a_run_config_works_too(points, tmp_path, capsys):
    config = tmp_path / 'run.yaml'
    config.write_text(f'input: {points}\nsort: l2\noutput: {tmp_path / "n" / "out"}\n'
                      'output_format: csv\n')
    assert main_wrapper(norms.run, ['--config', str(config)], prog='beamml norms') == 0
    err = capsys.readouterr().err
    assert 'beamml norms: warning: --sort is deprecated' in err
    rows = (tmp_path / 'n').glob('out-*.csv')
    header = next(iter(rows)).read_text().splitlines()[0]
    assert 'features' in header   # ordered output: what --order adds


def test_new_names_print_no_notice_and_old_names_are_hidden(capsys):
    for module, old, new in [(kmeans, '--model_dir', '--model'), (evaluate, '--k', '--cutoff'),
                             (norms, '--sort', '--order')]:
        text = flags_parser(module).format_help()
        assert new in text and not re.search(rf'{old}\b(?!\))', text.replace(f'was {old}', ''))


def test_a_usage_error_is_one_line_pointing_to_help(capsys):
    assert main_wrapper(kmeans.run, ['--input', 'x', '--model', 'm', '--k', '0'],
                        prog='beamml kmeans') == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["beamml kmeans: error: argument --k: '0' is not an integer >= 1 "
                   '(see beamml kmeans --help)']
    assert main_wrapper(norms.run, ['--output', 'o'], prog='beamml norms') == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'beamml norms: error: the following arguments are required: --input '
        '(see beamml norms --help)']


def test_a_batch_run_needs_the_flags_a_stream_does_without(capsys):
    assert main_wrapper(evaluate.run, ['--input', 'x', '--task', 'ranking'],
                        prog='beamml evaluate') == 2
    assert capsys.readouterr().err.strip() == 'beamml evaluate: error: --output is required'


@pytest.mark.parametrize('kind, good, bad', [
    (values.positive_int, ['1', '7', '0012'], ['0', '-1', '1.5', 'x', '']),
    (values.non_negative_int, ['0', '3'], ['-1', '2.0', 'a']),
    (values.seconds, ['0', '1.5', '.5', '3e2'], ['-1', 'inf', 'nan', 'x', '']),
    (values.positive_seconds, ['0.001', '60'], ['0', '-3', 'inf']),
    (values.fraction, ['0', '1', '0.25', '.5', '1.0'], ['1.5', '-0.1', 'nan', '2']),
])
def test_a_value_type_and_its_template_regex_agree(kind, good, bad):
    regex = re.compile(kind.regex)
    for text in good:
        kind(text)
        assert regex.fullmatch(text), text
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)
    assert not any(regex.fullmatch(t) for t in bad if t not in ('nan', 'inf'))


def test_the_templates_take_their_regexes_from_the_type_objects():
    parser = flags_parser(kmeans)
    k = next(a for a in parser._actions if '--k' in a.option_strings)
    assert regexes(k) == [values.positive_int.regex]


def test_one_exit_code_table():
    from beamml.pipelines._platform import commit, inputs, runs
    from beamml.pipelines import monitor
    assert (commit.EXIT_LOCKED, inputs.EXIT_NO_INPUT, runs.EXIT_INPUT_CHANGED,
            monitor.EXIT_ALARM) == (Exit.LOCKED, Exit.NO_INPUT, Exit.INPUT_CHANGED, Exit.ALARM)
    from beamml.pipelines._platform import exits
    for code in Exit:   # the module's table documents every code
        assert re.search(rf'^{int(code)}\s+{code.name}\s', exits.__doc__, re.M), code


def test_one_records_line():
    counts = {'records_read': 5, 'records_ok': 4, 'records_refused': 1}
    assert records_line(counts) == 'records_read=5 records_ok=4 records_refused=1'
    assert records_line(counts, 'o-errors-*.jsonl').endswith(' errors=o-errors-*.jsonl')


def test_the_convention_page_lists_every_exit_code_and_rename():
    import os
    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'docs', 'conventions.md')
    with open(page, encoding='utf-8') as f:
        text = f.read()
    for code in Exit:
        assert re.search(rf'^\| {int(code)} \| {code.name} \|', text, re.M), code
    for module, old, new in [('kmeans', '--model_dir', '--model'), ('evaluate', '--k', '--cutoff'),
                             ('norms', '--sort', '--order')]:
        assert f'| `{module} {old}` | `{module} {new}` |' in text
