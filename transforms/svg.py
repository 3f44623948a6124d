"""The SVG canvas of the report charts (pure Python + numpy): scales, ticks, axes, legends.

:class:`Chart` holds the parts of one SVG chart (a plot area, its scales, the
marks and the texts) and writes it: the root carries ``data-chart="<kind>"``
and ``data-marks="<n>"``, each data-driven mark ``class="mark"``, the captions
are wrapped under the plot and every text is escaped. The chart kinds that draw
on it are :mod:`beamml.transforms.charts`.
"""
from __future__ import annotations

import html
import math

import numpy as np

__all__ = ['PALETTE', 'WIDTH', 'HEIGHT', 'BIG', 'Chart', 'escape', 'fmt', 'nice_ticks',
           'limits', 'spans_decades', 'diamond']

#: Okabe & Ito's colour-blind-safe palette (black left out: it marks the centres)
PALETTE = ('#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442',
           '#999999')
WIDTH, HEIGHT = 760, 360   # default chart size, px
_LEGEND_MAX = 12
BIG = 1e300    # values are clipped to +-BIG for the scales (no overflow)
_CHAR_PX = 6.2   # about the width of a character at font-size 11


def escape(text) -> str:
    """``text`` as HTML/XML text or attribute value."""
    return html.escape(str(text), quote=True)


def fmt(v: float) -> str:
    """A short number: integers with thousands separators, else 4 significant digits."""
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e9:
        return f'{int(v):,}'
    return f'{v:.4g}'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (hi > lo)."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):   # beyond float range: the ends only
        return [lo, hi]
    raw = span / max(n, 1)
    step = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi] (with 2x and 5x when fewer than three decades show)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if b - a >= 3 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(a, b + 1) for m in mults]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)] or [lo, hi]


def limits(values: np.ndarray, pad: float = 0.05, log: bool = False) -> tuple[float, float]:
    """A padded [lo, hi] around finite ``values`` (never of zero width)."""
    lo, hi = (min(max(float(f(values)), -BIG), BIG) for f in (np.min, np.max))
    if log:   # padded in decades
        a, b = math.log10(lo), math.log10(hi)
        d = (b - a) * pad if b > a else math.log10(2)
        return 10.0 ** max(a - d, -307.0), 10.0 ** min(b + d, 307.0)
    if hi <= lo:
        half = abs(lo) * 0.1 or 1.0
        return lo - half, hi + half
    d = (hi - lo) * pad
    return lo - d, hi + d


def spans_decades(values, decades: float = 2.0) -> bool:
    """Whether the positive finite ``values`` span at least ``decades`` powers of ten
    (then a log axis reads better)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return v.size >= 2 and math.log10(v.max() / v.min()) >= decades


def _wrap(text: str, width: int) -> list[str]:
    words, lines_, cur = text.split(), [], ''
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines_.append(cur)
            cur = w
        else:
            cur = f'{cur} {w}' if cur else w
    return lines_ + ([cur] if cur else [])


class Chart:
    """The parts of one SVG chart: a plot area, its scales, the marks and the texts."""

    def __init__(self, kind: str, title: str, width: int = WIDTH, height: int = HEIGHT,
                 margin=(70, 20, 40, 50)):
        self.kind, self.title, self.width, self.height = kind, title, width, height
        self.left, self.right, self.top, self.bottom = margin
        self.body: list[str] = []
        self.marks = 0
        self.captions: list[str] = []
        self.x0, self.x1 = self.left, width - self.right
        self.y0, self.y1 = height - self.bottom, self.top   # pixel y of the axis' ends
        self.xlim = self.ylim = (0.0, 1.0)
        self.log_y = False

    # scales
    def sx(self, v):
        lo, hi = self.xlim
        v = np.clip(np.asarray(v, dtype=np.float64), -BIG, BIG)   # no overflow below
        return self.x0 + (v - lo) / (hi - lo) * (self.x1 - self.x0)

    def sy(self, v):
        lo, hi = self.ylim
        v = np.clip(np.asarray(v, dtype=np.float64), -BIG, BIG)
        if self.log_y:
            v, lo, hi = np.log10(v), math.log10(lo), math.log10(hi)
        return self.y0 - (v - lo) / (hi - lo) * (self.y0 - self.y1)

    def mark(self, svg: str, n: int = 1) -> None:
        self.body.append(svg)
        self.marks += n

    def axes(self, x_label: str = '', y_label: str = '', *, xticks=None, yticks=None,
             xtick_labels=None, grid_y: bool = True) -> None:
        out = ['<g class="axes" font-size="11" fill="#333">']
        if yticks is None:
            yticks = (_log_ticks if self.log_y else nice_ticks)(*self.ylim)
        for t in yticks:
            y = float(self.sy(t))
            if grid_y:
                out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}" '
                           'stroke="#e5e5e5"/>')
            out.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                       f'{escape(fmt(t))}</text>')
        if xticks is None:
            xticks = nice_ticks(*self.xlim)
        labels = xtick_labels if xtick_labels is not None else [fmt(t) for t in xticks]
        for t, lab in zip(xticks, labels):
            x = float(self.sx(t))
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.y0}" y2="{self.y0 + 4}" '
                       'stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{self.y0 + 16}" text-anchor="middle">'
                       f'{escape(lab)}</text>')
        out.append(f'<path d="M{self.x0},{self.y1}V{self.y0}H{self.x1}" fill="none" '
                   'stroke="#333"/>')
        if x_label:
            out.append(f'<text x="{(self.x0 + self.x1) / 2:.1f}" y="{self.y0 + 32}" '
                       f'text-anchor="middle" font-size="12">{escape(x_label)}</text>')
        if y_label:
            cy = (self.y0 + self.y1) / 2
            out.append(f'<text transform="translate(14,{cy:.1f}) rotate(-90)" '
                       f'text-anchor="middle" font-size="12">{escape(y_label)}</text>')
        out.append('</g>')
        self.body[:0] = out   # under the marks

    def make_room(self, labels: list[str]) -> None:
        """Narrow the plot so a legend of these labels fits at its right (call first)."""
        self.x1 = max(self.x0 + 100, self.x1 - _legend_width(labels) - 12)

    def legend(self, entries: list[tuple[str, str, str]], below: bool = False) -> None:
        """Entries ``(label, colour, shape)``, shape 'rect', 'line' or 'diamond'; in a
        column right of the plot (after :meth:`make_room`), or (``below``) in a row
        under the x axis."""
        entries = _legend_entries(entries)
        widths = [26 + _CHAR_PX * len(label) for label, _, _ in entries]
        if below:
            width, height = sum(widths) + 6, 22
            x, y = self.x0, self.y0 + 38
            at = [(x + sum(widths[:i]), y + 11) for i in range(len(entries))]
        else:
            width, height = max(widths) + 6, 16 * len(entries) + 6
            x, y = self.x1 + 12, self.y1
            at = [(x, y + 12 + 16 * i) for i in range(len(entries))]
        out = [f'<g class="legend" font-size="11"><rect x="{x}" y="{y}" width="{width:.0f}" '
               f'height="{height}" fill="#fff" fill-opacity="0.85" stroke="#ccc"/>']
        for (label, colour, shape), (x, cy) in zip(entries, at):
            if shape == 'rect':
                out.append(f'<rect x="{x + 6}" y="{cy - 5}" width="10" height="10" '
                           f'fill="{colour}"/>')
            elif shape == 'line':
                out.append(f'<path d="M{x + 4},{cy}h14" stroke="{colour}" stroke-width="3"/>')
            elif shape == 'diamond':
                out.append(f'<path d="{diamond(x + 11, cy, 5)}" fill="{colour}" '
                           'stroke="#000" stroke-width="1.5"/>')
            out.append(f'<text x="{x + 22}" y="{cy + 4}">{escape(label)}</text>')
        out.append('</g>')
        self.body.extend(out)

    def no_data(self, why: str = 'no data') -> None:
        self.body.append(f'<text class="nodata" x="{self.width / 2:.0f}" '
                         f'y="{(self.y0 + self.y1) / 2:.0f}" text-anchor="middle" '
                         f'font-size="20" fill="#a00">{escape(why)}</text>')

    def svg(self) -> str:
        caption_lines = [line for c in self.captions for line in _wrap(c, self.width // 6)]
        height = self.height + 15 * len(caption_lines)
        head = (f'<svg class="chart" data-chart="{escape(self.kind)}" data-marks="{self.marks}" '
                f'width="{self.width}" height="{height}" viewBox="0 0 {self.width} {height}" '
                f'role="img" aria-label="{escape(self.title)}" font-family="sans-serif">'
                f'<title>{escape(self.title)}</title>'
                f'<rect width="{self.width}" height="{height}" fill="#fff"/>'
                f'<text class="title" x="{self.width / 2:.0f}" y="20" text-anchor="middle" '
                f'font-size="15" font-weight="bold">{escape(self.title)}</text>')
        caps = ''.join(f'<text class="caption" x="10" y="{self.height + 15 * i - 2}" '
                       f'font-size="11" fill="#555">{escape(line)}</text>'
                       for i, line in enumerate(caption_lines))
        return head + ''.join(self.body) + caps + '</svg>'


def _legend_entries(entries: list) -> list:
    if len(entries) > _LEGEND_MAX:
        more = len(entries) - _LEGEND_MAX + 1
        entries = entries[:_LEGEND_MAX - 1] + [(f'... and {more} more', '', 'none')]
    return entries


def _legend_width(labels: list[str]) -> float:
    labels = [e[0] for e in _legend_entries([(label, '', '') for label in labels])]
    return 32 + _CHAR_PX * max([len(label) for label in labels] + [4])


def diamond(x: float, y: float, r: float) -> str:
    return f'M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}L{x - r:.1f},{y:.1f}Z'
