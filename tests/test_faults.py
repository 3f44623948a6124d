"""The fault points (tests/faults.py): one table, named exactly as the product calls them."""
from __future__ import annotations

import os
import pathlib
import re
import threading

import pytest

from faults import POINTS, kill_at, pause_at
from beamml.pipelines._platform.faults import fault_point

PACKAGE = pathlib.Path(__file__).resolve().parent.parent


def _called_points() -> list[str]:
    found = []
    for folder in ('pipelines', 'transforms'):
        for path in sorted((PACKAGE / folder).rglob('*.py')):
            if path.name == 'faults.py':   # the hook itself (its docstring shows a call)
                continue
            found += re.findall(r"fault_point\('([^']*)'\)", path.read_text())
    return found


def test_fault_points_are_the_table():
    called = _called_points()
    assert sorted(called) == sorted(set(called)), 'a fault point is called at two places'
    assert sorted(called) == sorted(POINTS)


def test_a_fault_point_does_nothing_unless_named(monkeypatch, tmp_path):
    monkeypatch.delenv('BEAMML_FAULT', raising=False)
    fault_point('commit.before_moves')
    hold = tmp_path / 'hold'
    monkeypatch.setenv('BEAMML_FAULT', pause_at('commit.between_moves', hold)['BEAMML_FAULT'])
    hold.write_text('')
    fault_point('commit.before_moves')   # another point: no pause
    assert not os.path.exists(str(hold) + '.reached')


def test_a_pause_waits_until_the_file_is_removed(monkeypatch, tmp_path):
    hold = tmp_path / 'hold'
    hold.write_text('')
    monkeypatch.setenv('BEAMML_FAULT', pause_at('commit.before_moves', hold)['BEAMML_FAULT'])
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (fault_point('commit.before_moves'), done.set()))
    waiter.start()
    reached = str(hold) + '.reached'
    for _ in range(200):
        if os.path.exists(reached):
            break
        threading.Event().wait(0.01)
    assert os.path.exists(reached) and not done.wait(0.3)
    hold.unlink()
    assert done.wait(5)
    waiter.join()


def test_an_unknown_action_is_refused(monkeypatch):
    monkeypatch.setenv('BEAMML_FAULT', 'commit.before_moves:explode')
    with pytest.raises(ValueError, match='kill or pause'):
        fault_point('commit.before_moves')
    with pytest.raises(AssertionError, match='not a fault point'):
        kill_at('commit.nowhere')
