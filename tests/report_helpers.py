"""Checks of the HTML reports' SVG charts, shared by the report tests: the charts as XML
(their marks counted), and the pages in headless Chromium (the rendered DOM's marks, a
screenshot decoded into pixels)."""
from __future__ import annotations

import html.parser
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from beamml.transforms import report as rp


def _svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == 'svg'
    return root


def _marks(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter() if 'mark' in (e.get('class') or '').split()]


def _captions(root: ET.Element) -> str:
    return ' '.join(e.text or '' for e in root.iter() if e.get('class') == 'caption')


def _checked(text: str, kind: str, n: int) -> ET.Element:
    root = _svg(text)
    assert root.get('data-chart') == kind
    assert int(root.get('data-marks')) == len(_marks(root)) == n
    return root


def _no_data(root: ET.Element) -> bool:
    return any(e.get('class') == 'nodata' and e.text == 'no data' for e in root.iter())


BROWSER = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser',
                                               'google-chrome'))), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason='no chromium, chromium-browser or google-chrome on PATH '
    '(apt-get install chromium; .ci/run installs it where it can): the rendered reports '
    'are not checked')


def _chromium(tmp_path, *args) -> str:
    out = subprocess.run([BROWSER, '--headless=new', '--no-sandbox', '--disable-gpu',
                          '--no-first-run', '--hide-scrollbars', '--disable-dev-shm-usage',
                          f'--user-data-dir={tmp_path / "chromium-profile"}', *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class _Marks(html.parser.HTMLParser):
    """Per rendered chart: (kind, data-marks, elements whose class has 'mark')."""

    def __init__(self):
        super().__init__()
        self.charts: list[list] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'svg' and 'data-chart' in a:
            self.charts.append([a['data-chart'], int(a['data-marks']), 0])
            self._in = True
        elif self._in and 'mark' in (a.get('class') or '').split():
            self.charts[-1][2] += 1

    def handle_endtag(self, tag):
        if tag == 'svg':
            self._in = False


def _rendered_marks(tmp_path, page_path) -> list[list]:
    parser = _Marks()
    parser.feed(_chromium(tmp_path, '--dump-dom', 'file://' + os.path.abspath(page_path)))
    return parser.charts


def _paeth(a, b, c):
    p = a + b - c
    pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa_ <= pb and pa_ <= pc else (b if pb <= pc else c)


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG -> (h, w, channels) uint8, with zlib and struct only."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pos, idat = 8, b''
    while pos < len(data):
        (n,), kind = struct.unpack('>I', data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b'IHDR':
            w, h, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB', body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
        elif kind == b'IDAT':
            idat += body
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), np.uint8)
    prev = np.zeros(w * bpp, np.int64)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 1:    # sub: a running sum per channel
            row = np.cumsum(line.reshape(w, bpp), axis=0).ravel() % 256
        elif f == 2:  # up
            row = (line + prev) % 256
        elif f in (3, 4):   # average, Paeth: left to right
            row = line.copy()
            up = prev.tolist()
            r = row.tolist()
            for i in range(len(r)):
                left = r[i - bpp] if i >= bpp else 0
                if f == 3:
                    r[i] = (r[i] + (left + up[i]) // 2) % 256
                else:
                    r[i] = (r[i] + _paeth(left, up[i], up[i - bpp] if i >= bpp else 0)) % 256
            row = np.array(r, np.int64)
        else:
            row = line
        out[y] = row
        prev = row
    return out.reshape(h, w, bpp)


def _read_png(path) -> np.ndarray:
    with open(path, 'rb') as f:
        data = f.read()
    try:
        from PIL import Image   # Pillow comes with apache-beam; the decoder above otherwise
    except ImportError:
        return decode_png(data)
    with Image.open(path) as im:
        return np.asarray(im.convert('RGB'))


def _palette_pixels(rgb: np.ndarray) -> int:
    """Pixels of a data colour (within 40 of a chromatic palette colour in every channel:
    the grey one is left out, anti-aliased text comes near it)."""
    colours = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in rp.PALETTE])
    colours = colours[colours.max(axis=1) - colours.min(axis=1) > 50]
    near = np.abs(rgb[:, :, None, :3].astype(int) - colours[None, None]).max(axis=-1) <= 40
    return int(near.any(axis=-1).sum())


def _screenshot(tmp_path, page, width, height, name) -> np.ndarray:
    png = tmp_path / f'{name}.png'
    _chromium(tmp_path, f'--screenshot={png}', f'--window-size={width},{height}',
              'file://' + os.path.abspath(page))
    rgb = _read_png(png)[:, :, :3]
    assert rgb.shape[:2] == (height, width)
    return rgb


def _check_charts_drawn(tmp_path, page_text: str) -> list[int]:
    """Screenshot each chart of a page alone (its own size); the palette pixels of each."""
    found = []
    for i, svg in enumerate(re.findall(r'<svg.*?</svg>', page_text, re.S)):
        root = _svg(svg)
        w, h = int(root.get('width')), int(root.get('height'))
        single = tmp_path / f'chart-{i}.html'
        single.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
                          f'body{{margin:0}}</style></head><body>{svg}</body></html>',
                          encoding='utf-8')
        rgb = _screenshot(tmp_path, single, w, h, f'chart-{i}')
        not_white = float((rgb.min(axis=-1) < 235).mean())
        # axes and text at least; a "no data" chart only its title and text
        assert not_white > (0.01 if int(root.get('data-marks')) else 0.001), \
            (root.get('data-chart'), not_white)
        found.append(_palette_pixels(rgb))
    return found
