"""The input of a dated run: the ready marker, waiting for the files, and what changed
since a complete run (:mod:`beamml.pipelines._platform.runs` uses them)."""
from __future__ import annotations

import logging
import os
import re
import time

from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform.exits import Exit
from beamml.transforms.core.errors import BeammlError, first_line
from beamml.transforms.io.layout import as_given, check_local_input, listable
from beamml.transforms.core.objects import missing_bucket

__all__ = ['EXIT_NO_INPUT', 'NoInputError', 'marker_path', 'wait_for_input', 'input_changes']

LOG = logging.getLogger('beamml')

EXIT_NO_INPUT = int(Exit.NO_INPUT)


def _join(parent: str, name: str) -> str:
    return f'{parent}/{name}' if parent else name


def _split(path: str) -> tuple[str, str]:
    if path.startswith('gs://'):
        rest = path[len('gs://'):]
        if '/' not in rest:
            return '', rest
        parent, name = rest.rsplit('/', 1)
        return 'gs://' + parent, name
    parent, name = os.path.split(path)
    return parent or '.', name


class NoInputError(BeammlError):
    """No input for the run (exit code :data:`EXIT_NO_INPUT`)."""
    exit_code = EXIT_NO_INPUT



def _literal_folder(pattern: str) -> str | None:
    """The folder of ``pattern`` if it has no wildcard, else None."""
    folder = _split(pattern)[0]
    return None if re.search(r'[*?\[]', folder) else folder


def marker_path(args) -> str | None:
    marker = getattr(args, 'input_ready_marker', None)
    if not marker:
        return None
    if '/' in marker:
        return marker
    folder = _literal_folder(args.input)
    if folder is None:
        raise BeammlError(f'--input_ready_marker {marker}: the folder of --input {args.input} '
                          'has a wildcard: give the marker as a full path')
    return _join(folder, marker)


def _matched(pattern: str) -> list:
    try:
        return [as_given(pattern, m.path)
                for r in FileSystems.match([listable(pattern)]) for m in r.metadata_list]
    except Exception as e:   # a missing bucket (an error listing, none for one path), no access
        _never_there(pattern)
        first = first_line(e)
        raise BeammlError(f'--input {pattern}: cannot list it: {first}') from e


def _never_there(pattern: str) -> None:
    """BeammlError (exit 2, not "no input yet") when nothing matches because nothing can:
    the input's bucket does not exist, or the pattern names a broken symbolic link."""
    bucket = missing_bucket(pattern)
    if bucket:
        raise BeammlError(f'--input {pattern}: the bucket gs://{bucket} does not exist')
    if '://' not in pattern:
        check_local_input(pattern, [])


def wait_for_input(args) -> list[str]:
    """The input files, once they (and --input_ready_marker) are there; NoInputError when
    they are not within --wait_for_input seconds."""
    marker = marker_path(args)
    wait = float(getattr(args, 'wait_for_input', 0.0) or 0.0)
    deadline = time.monotonic() + wait
    poll = min(10.0, max(0.2, wait / 30))
    last_log = None
    while True:
        files = _matched(args.input)
        if not files and last_log is None:
            _never_there(args.input)
        ready = marker is None or FileSystems.exists(marker)
        if files and ready:
            return sorted(files)
        missing = (f'no file matches --input {args.input}' if not files else
                   f'the marker {marker} is not there')
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f' after waiting {wait:g} s' if wait else ''
            raise NoInputError(f'no input for this run: {missing}{waited} (exit code '
                               f'{EXIT_NO_INPUT}; --wait_for_input SECONDS to wait for it)')
        if last_log is None or time.monotonic() - last_log >= 60:
            LOG.info('waiting for input: %s (%.0f s left)', missing, left)
            last_log = time.monotonic()
        time.sleep(min(poll, max(left, 0.0)))


def input_changes(recorded: list[dict], now: list[dict]) -> list[str]:
    """How the input files matched now (``describe_files``) differ from those a
    ``_SUCCESS`` recorded: new, gone, another size, rewritten (another Cloud Storage
    generation, another local modification time)."""
    def key(path):
        return path if '://' in path else os.path.abspath(path)
    before = {key(i['path']): i for i in recorded if isinstance(i, dict) and 'path' in i}
    after = {key(i['path']): i for i in now}
    changes = []
    for path, info in sorted(after.items()):
        old = before.get(path)
        if old is None:
            changes.append(f'{info["path"]} is new')
        elif old.get('size') != info.get('size'):
            changes.append(f'{info["path"]} is {info.get("size")} bytes, was {old.get("size")}')
        elif old.get('generation') != info.get('generation'):
            changes.append(f'{info["path"]} was rewritten (generation {info.get("generation")}, '
                           f'was {old.get("generation")})')
        elif old.get('mtime') != info.get('mtime'):
            changes.append(f'{info["path"]} was modified at {info.get("mtime")} (was '
                           f'{old.get("mtime")})')
    changes += [f'{before[p]["path"]} is gone' for p in sorted(set(before) - set(after))]
    return changes
