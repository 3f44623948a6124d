"""Every relative link of README.md and of the pages of docs/ resolves: the file (or folder)
it names exists, and the anchor after ``#`` is a heading of that page (GitHub's anchors)."""
from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pages() -> list[str]:
    found = ['README.md']
    for folder, _, files in os.walk(os.path.join(ROOT, 'docs')):
        found += sorted(os.path.relpath(os.path.join(folder, f), ROOT)
                        for f in files if f.endswith('.md'))
    return found


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def _prose(text: str) -> str:
    """The text without fenced blocks, code spans and HTML comments (links there are not
    links), line numbers kept."""
    text = re.sub(r'^ *```.*?^ *```', lambda m: '\n' * m.group(0).count('\n'), text,
                  flags=re.S | re.M)
    text = re.sub(r'<!--.*?-->', lambda m: '\n' * m.group(0).count('\n'), text, flags=re.S)
    return re.sub(r'(?<!\\)`[^`\n]*`', '``', text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (a link's text, code without backticks),
    lower case, punctuation other than ``-`` and ``_`` out, spaces to ``-``."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())
    text = re.sub(r'<[^>]+>', '', text)
    return re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')


def anchors(page: str) -> set[str]:
    """The anchors of a page: its headings' (``-1``, ``-2`` after a repeated one) and its
    explicit ``<a id>``/``<a name>``."""
    text = _read(page)
    text_prose = re.sub(r'^ *```.*?^ *```', '', text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r'^#{1,6} +(.+?) *#*$', text_prose, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f'{base}-{n}')
        seen[base] = n + 1
    found.update(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    return found


def links(page: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link and image, and every reference definition."""
    out = []
    for n, line in enumerate(_prose(_read(page)).split('\n'), 1):
        out += [(n, t) for t in re.findall(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\)',
                                            line)]
        out += [(n, t) for t in re.findall(r'^\s*\[[^\]]+\]:\s*(\S+)', line)]
    return out


def test_the_pages_link_to_each_other():
    """The README links into docs/, and every page of docs/ is linked from some page."""
    linked = set()
    for page in pages():
        for _, target in links(page):
            path = target.split('#', 1)[0]
            if path and not re.match(r'^[a-z][a-z0-9+.-]*:', path):
                linked.add(os.path.normpath(os.path.join(os.path.dirname(page), path)))
    orphans = [p for p in pages() if p != 'README.md' and p not in linked]
    assert not orphans, f'pages no page links to: {orphans}'


@pytest.mark.parametrize('page', pages())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for line, target in links(page):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(f'line {line}: {target}: no {resolved}')
        elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
            broken.append(f'line {line}: {target}: {resolved} has no heading #{anchor}')
    assert not broken, f'{page}: ' + '; '.join(broken)


def test_slug_is_githubs():
    assert slug('Scheduled runs: dates, `_SUCCESS`, reruns') == 'scheduled-runs-dates-_success-reruns'
    assert slug('beamml index_ids') == 'beamml-index_ids'
    assert slug('Shadow, canary and the promote/keep gate') == 'shadow-canary-and-the-promotekeep-gate'
    assert slug('Flex Templates and daily scheduling') == 'flex-templates-and-daily-scheduling'
