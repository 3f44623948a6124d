"""An input that can read what a run writes is refused before anything runs.

A run must never read its own results back as input: ``--input 'd/*.csv' --output d/res
--output_format csv`` would read ``d/res-00000-of-00001.csv`` on its next run (twice the
rows), and ``--input 'f/*.csv' --output f/`` would make the run replace its own input.
So, before anything is read or written:

* the input *pattern* must not be able to match any name a run of the destination owns
  (its files ``PREFIX-*`` or everything under ``FOLDER/``, and the names beamml keeps
  beside it: the lock, the commit journal, the temporary and refused prefixes), whether
  or not such a file exists yet (the first run is refused too, not only the rerun);
* no input file matched now may lie there (a literal path, too).

Patterns follow Beam's own syntax (``FileSystem.translate_pattern``): ``*`` matches
within one path segment, ``**`` across segments, ``?`` any one character, ``[...]`` a
class; a pattern ending in ``/`` reads the folder (``/*``). Local paths are compared
absolute, with symbolic links of their folders resolved; ``gs://`` paths as written.
The question "can this glob match a name that starts with this prefix" is answered
exactly, by running the pattern as an automaton over the prefix.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from beamml.transforms.core.errors import BeammlError

__all__ = ['Namespace', 'may_match_under', 'glob_matches', 'check_input_overlap',
           'output_namespace']

_GLOB = re.compile(r'[*?\[]')


def _tokens(pattern: str) -> list:
    """The pattern as tokens: ('lit', c), ('one',), ('seg',) for ``*``, ('any',) for
    ``**``, ('class', compiled regex) for ``[...]`` (Beam's translate_pattern, token by
    token)."""
    if pattern.endswith('/') or pattern.endswith('\\'):
        pattern += '*'
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == '*':
            if i < n and pattern[i] == '*':
                out.append(('any',))
                i += 1
            else:
                out.append(('seg',))
        elif c == '?':
            out.append(('one',))
        elif c == '[':
            j = i
            if j < n and pattern[j] == '!':
                j += 1
            if j < n and pattern[j] == ']':
                j += 1
            while j < n and pattern[j] != ']':
                j += 1
            if j >= n:
                out.append(('lit', '['))
                continue
            stuff = pattern[i:j].replace('\\', '\\\\')
            i = j + 1
            if stuff[0] == '!':
                stuff = '^' + stuff[1:]
            elif stuff[0] == '^':
                stuff = '\\' + stuff
            out.append(('class', re.compile(f'(?s)[{stuff}]')))
        else:
            out.append(('lit', c))
    return out


def _closure(tokens: list, states: set[int]) -> set[int]:
    todo, seen = list(states), set(states)
    while todo:
        s = todo.pop()
        if s < len(tokens) and tokens[s][0] in ('seg', 'any') and s + 1 not in seen:
            seen.add(s + 1)
            todo.append(s + 1)
    return seen


def _run(tokens: list, text: str) -> set[int]:
    """The automaton's states after reading ``text`` (empty: no match possible)."""
    states = _closure(tokens, {0})
    for ch in text:
        nxt = set()
        for s in states:
            if s == len(tokens):
                continue
            kind = tokens[s][0]
            if kind == 'lit':
                if tokens[s][1] == ch:
                    nxt.add(s + 1)
            elif kind == 'one':
                nxt.add(s + 1)
            elif kind == 'class':
                if tokens[s][1].match(ch):
                    nxt.add(s + 1)
            elif kind == 'seg':
                if ch not in '/\\':
                    nxt.add(s)
            else:   # any
                nxt.add(s)
        states = _closure(tokens, nxt)
        if not states:
            break
    return states


def glob_matches(pattern: str, path: str) -> bool:
    """Whether Beam's pattern matches the whole of ``path``."""
    tokens = _tokens(pattern)
    return len(tokens) in _run(tokens, path)


def may_match_under(pattern: str, prefix: str) -> bool:
    """Whether the pattern can match some name that starts with ``prefix`` (the prefix
    itself included): every pattern left after the prefix matches some name."""
    return bool(_run(_tokens(pattern), prefix))


def _local(path: str) -> str:
    """An absolute local path (or pattern) with the symbolic links of its literal folder
    resolved; ``gs://`` and other URLs unchanged."""
    if '://' in path:
        return path
    m = _GLOB.search(path)
    literal, rest = (path[:m.start()], path[m.start():]) if m else (path, '')
    cut = literal.rfind('/') + 1   # the literal folder, and the start of the last segment
    folder = os.path.realpath(os.path.abspath(literal[:cut] or '.'))
    return os.path.join(folder, literal[cut:] + rest)


#: a run id as the temporary and refused folders carry it (only its shape matters here)
_SAMPLE_RUN_ID = '20000101T000000Z-000000'


class Namespace:
    """What a run of one destination writes: ``owned``, the prefix of its results
    (``PREFIX-`` or ``FOLDER/``); ``run_folders``, prefixes of folders it keeps beside
    them, one per run (``.beamml-tmp-<name>-<run id>/``); ``names``, single files (the
    lock, the journal). ``shown`` names the destination in errors."""

    def __init__(self, shown: str, owned: str, run_folders: Iterable[str] = (),
                 names: Iterable[str] = ()):
        self.shown = shown
        self.owned = _local(owned)
        self.run_folders = [(_local(p), p) for p in run_folders]
        self.names = [(_local(n), n) for n in names]

    def what_matches(self, pattern: str) -> str | None:
        """What of the namespace the pattern can match, in words, or None."""
        pattern = _local(pattern)
        if may_match_under(pattern, self.owned):
            return f'files of {self.shown}, which this run writes'
        for folder, shown in self.run_folders:
            if may_match_under(pattern, folder + _SAMPLE_RUN_ID + '/'):
                return f'the files beamml keeps in {shown}<run id>/ beside {self.shown}'
        for name, shown in self.names:
            if glob_matches(pattern, name):
                return f'{shown}, which beamml keeps beside {self.shown}'
        return None

    def holds(self, path: str) -> bool:
        path = _local(path)
        return (path.startswith(self.owned) or any(path == n for n, _ in self.names)
                or any(path.startswith(p) for p, _ in self.run_folders))


def check_input_overlap(inputs: Sequence[tuple[str, str]], namespaces: Sequence[Namespace],
                        files: Sequence[str] = ()) -> None:
    """Refuse (BeammlError, exit 2) an input that can read what the run writes.

    ``inputs``: (flag, pattern) of what the run reads; ``namespaces``: what it writes;
    ``files``: the input files matched now (each is checked, literal paths too)."""
    advice = 'a run never reads its own output; choose an output that the input does not match'
    for ns in namespaces:
        for flag, pattern in inputs:
            if not pattern:
                continue
            if not _GLOB.search(pattern) and ns.holds(pattern):
                raise BeammlError(f'{flag} {pattern} lies in {ns.shown}, which this run '
                                  f'writes and replaces: {advice}')
            what = ns.what_matches(pattern)
            if what:
                raise BeammlError(f'{flag} {pattern} can match {what}: a rerun would read '
                                  f'them back as input; {advice}')
        for path in files:
            if ns.holds(path):
                raise BeammlError(f'the input file {path} lies in {ns.shown}, which this run '
                                  f'writes and replaces: {advice}')


def output_namespace(flag: str, value: str) -> Namespace:
    """Every name that starts with an output flag's value: a folder's files, ``PREFIX-*``
    shards, per-window files (a superset of what the run writes, for the overlap check)."""
    return Namespace(f'{flag} {value}', value)
