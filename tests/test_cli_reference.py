"""docs/cli.md is the generator's, from the commands' own parsers (as the Flex Template
metadata is: tests/test_templates.py); ``--check`` says which section is stale."""
from __future__ import annotations

import os
import re

import pytest

from beamml.pipelines._platform import cli_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, 'docs', 'cli.md')


@pytest.fixture(scope='module')
def rendered() -> str:
    return cli_reference.render()


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r'^## beamml (\w+)$', text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_the_checked_in_page_is_the_generators(capsys):
    assert cli_reference.main(['--check', PAGE]) == 0, (
        capsys.readouterr().err + ' (make docs rewrites it)')


def test_every_command_has_a_section_with_every_flag_its_help_shows(rendered, capsys):
    from beamml.pipelines.__main__ import main, pipelines
    sections = _sections(rendered)
    assert list(sections) == list(pipelines())
    for name, section in sections.items():
        try:
            main([name, '--help'])
        except SystemExit as e:
            assert e.code in (0, None)
        help_text = capsys.readouterr().out
        flags = set(re.findall(r'(?<![\w-])(--[a-z_]+)', help_text.split('\n\n')[0]))
        if name == 'validate':
            assert ' '.join(help_text.split()) in section
            continue
        assert flags, name
        shown = set(re.findall(r'^\| `(--[a-z_]+)', section, re.M))
        assert shown == flags - {'--help'}, (name, flags ^ shown)


def test_a_stale_page_is_exit_1_naming_its_section(rendered, tmp_path, capsys):
    stale = tmp_path / 'cli.md'
    stale.write_text(rendered.replace('| `--ascending` |', '| `--descending` |'))
    assert cli_reference.main(['--check', str(stale)]) == 1
    assert 'differs in beamml norms' in capsys.readouterr().err
    assert cli_reference.main(['--check', str(tmp_path / 'none.md')]) == 1
    assert cli_reference.main(['--write', str(stale)]) == 0
    assert cli_reference.main(['--check', str(stale)]) == 0


def test_the_page_has_no_code_block_and_no_markup_left_unescaped(rendered):
    """No fenced block (nothing for the shell-block test to run); a flag's help shows as
    written (``<format>`` would be an HTML tag)."""
    assert '```' not in rendered
    text = re.sub(r'`[^`]*`', '', rendered.replace('\\`', ''))
    text = re.sub(r'<!--.*?-->', '', text)
    assert '<' not in text and '>' not in text
