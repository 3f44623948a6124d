"""``beamml cycle rollback --model DIR [--to VERSION]``: point ``LATEST`` back, in one command.

Without ``--to`` it undoes the last promotion that ``DIR/ROLLBACK`` records (written by
``assign --promote_on_pass`` and by the cycle's gate step just before ``LATEST`` moved):
``LATEST`` goes back to its ``previous_version``, provided it still names the
``promoted_version`` (else nothing changes and one line says what ``LATEST`` names and
that ``--to`` picks a version). ``ROLLBACK`` then also records ``rolled_back_at``,
``rolled_back_from`` and ``rolled_back_to``. Run twice, the second run finds ``LATEST``
at the target already and does nothing. The next run of ``assign`` (the next day of
the cycle) reads ``LATEST``, so it uses the version rolled back to.
"""
from __future__ import annotations

import datetime as dt

from beamml.pipelines.assign.deploy import ROLLBACK_FILE
from beamml.transforms.core.documents import exists, join, read_json, write_json
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import latest_version, set_latest


def rollback(model_dir: str, to: str | None = None) -> dict:
    """Point ``LATEST`` of ``model_dir`` at ``to``, or at the version the last promotion
    replaced; returns ``{from, to, changed}``."""
    note_path = join(model_dir, ROLLBACK_FILE)
    note = read_json(note_path) if exists(note_path) else None
    now = latest_version(model_dir)
    if to is None:
        if note is None:
            raise BeammlError(f'{note_path} does not exist: no promotion to undo; give --to '
                              'VERSION to point LATEST at a version of your choice')
        to = note['previous_version']
        if now not in (note['promoted_version'], to):
            raise BeammlError(f'LATEST of {model_dir} is {now}, not {note["promoted_version"]}'
                              f' that the last promotion ({note_path}) moved it to: nothing '
                              'changed; give --to VERSION to choose the version')
    if now == to:
        print(f'LATEST of {model_dir} is {to} already; nothing to do')
        return {'from': now, 'to': to, 'changed': False}
    set_latest(model_dir, to)   # refuses a version that does not load
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')
    write_json(note_path, {**(note or {}), 'rolled_back_at': at, 'rolled_back_from': now,
                           'rolled_back_to': to}, indent=1)
    print(f'LATEST of {model_dir}: {now} -> {to} (rolled back; the next assign uses {to})')
    return {'from': now, 'to': to, 'changed': True}
