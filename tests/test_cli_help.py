"""``beamml <pipeline> --help`` is for users: no benchmark timings (those belong to the
module docstrings, for developers, and to docs/)."""
from __future__ import annotations

import re

import pytest

from beamml.pipelines.__main__ import main, pipelines

#: a timing figure: "2.55 s", "106.2 ns", "12 ms", "(ratio 1.51)"
TIMING = re.compile(r'\b\d+(\.\d+)?\s?(s|ms|us|µs|ns)\b|\bratio \d')


def _help(name: str, capsys) -> str:
    try:
        main([name, '--help'])
    except SystemExit as e:
        assert e.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize('name', sorted(pipelines()))
def test_help_shows_no_timings(name, capsys):
    out = _help(name, capsys)
    assert f'beamml {name}' in out
    assert not TIMING.search(out), TIMING.search(out).group(0)


def test_kmeans_help_still_describes_the_command(capsys):
    out = _help('kmeans', capsys)
    assert 'writes a new model version' in out and '--resume' in out
