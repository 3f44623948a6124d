"""SVG charts for the HTML reports (pure Python + numpy; :mod:`beamml.transforms.report`
re-exports them and puts them into a page).

Each chart function returns an SVG string whose root carries
``data-chart="<kind>"`` and ``data-marks="<n>"``; its ``n`` data-driven marks
(``rect``, ``path``, ``circle``) carry ``class="mark"``, so a test (or a
person with a browser's inspector) can count what was drawn. A chart with
nothing to draw says "no data" in text and has ``data-marks="0"``; skipped
values (NaN, non-positive on a log axis, points beyond the sample) are said in
the chart's caption, a text line under the plot. All text is escaped. Each
chart has a title, axes with tick labels, a legend where there are several
series, and ``<title>`` tooltips on its marks where they are cheap.
"""
from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ['PALETTE', 'histogram_pair', 'bars_with_thresholds', 'lines', 'scatter',
           'spans_decades', 'escape', 'fmt']

#: Okabe & Ito's colour-blind-safe palette (black left out: it marks the centres)
PALETTE = ('#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442',
           '#999999')
_OVER = '#D55E00'   # a bar over its threshold
_UNDER = '#0072B2'
_W, _H = 760, 360   # default chart size, px
_LEGEND_MAX = 12
_BIG = 1e300    # values are clipped to +-_BIG for the scales (no overflow)
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


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
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


def _limits(values: np.ndarray, pad: float = 0.05, log: bool = False) -> tuple[float, float]:
    """A padded [lo, hi] around finite ``values`` (never of zero width)."""
    lo, hi = (min(max(float(f(values)), -_BIG), _BIG) for f in (np.min, np.max))
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


class _Chart:
    """The parts of one SVG chart: a plot area, its scales, the marks and the texts."""

    def __init__(self, kind: str, title: str, width: int = _W, height: int = _H,
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
        v = np.clip(np.asarray(v, dtype=np.float64), -_BIG, _BIG)   # no overflow below
        return self.x0 + (v - lo) / (hi - lo) * (self.x1 - self.x0)

    def sy(self, v):
        lo, hi = self.ylim
        v = np.clip(np.asarray(v, dtype=np.float64), -_BIG, _BIG)
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
            yticks = (_log_ticks if self.log_y else _nice_ticks)(*self.ylim)
        for t in yticks:
            y = float(self.sy(t))
            if grid_y:
                out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}" '
                           'stroke="#e5e5e5"/>')
            out.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                       f'{escape(fmt(t))}</text>')
        if xticks is None:
            xticks = _nice_ticks(*self.xlim)
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
                out.append(f'<path d="{_diamond(x + 11, cy, 5)}" fill="{colour}" '
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


def _diamond(x: float, y: float, r: float) -> str:
    return f'M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}L{x - r:.1f},{y:.1f}Z'


def _counts(values) -> tuple[np.ndarray, int]:
    """Counts as floats with NaN and negative entries set to 0; how many those were."""
    c = np.asarray(values, dtype=np.float64).ravel()
    bad = ~np.isfinite(c) | (c < 0)
    return np.where(bad, 0.0, c), int(bad.sum())


def histogram_pair(edges, baseline_counts, current_counts, title: str, *,
                   x_label: str = 'bin', width: int = _W, height: int = _H) -> str:
    """Two histograms over the same bins, as shares of each series' total.

    ``edges`` has ``m + 1`` bin boundaries; each counts array has ``m`` entries
    (the bins) or ``m + 2`` (an underflow bin first and an overflow bin last,
    drawn at the ends as 'below' and 'above'). Bins are equal slots (so
    quantile bins of the baseline read as a flat baseline), labelled with their
    edges. One mark per bar of a nonzero count; NaN or negative counts are
    skipped and said in the caption.
    """
    edges = np.asarray(edges, dtype=np.float64).ravel()
    m = edges.size - 1
    b, nb = _counts(baseline_counts)
    c, nc = _counts(current_counts)
    if m < 1 or b.size != c.size or b.size not in (m, m + 2):
        raise ValueError(f'histogram_pair: {edges.size} edges need {max(m, 0)} or {m + 2} '
                         f'counts per series, got {b.size} and {c.size}')
    overflow = b.size == m + 2
    ch = _Chart('histogram_pair', title, width, height)
    if nb or nc:
        ch.captions.append(f'{nb + nc} count(s) skipped (NaN or negative).')
    tb, tc = b.sum(), c.sum()
    ch.captions.append(f'baseline {fmt(tb)} rows, current {fmt(tc)} rows; bars are shares '
                       'of each total.')
    if tb == 0 and tc == 0:
        ch.no_data()
        return ch.svg()
    sb = b / tb if tb else np.zeros_like(b)
    sc = c / tc if tc else np.zeros_like(c)
    slots = b.size
    ch.make_room(['baseline', 'current'])
    ch.xlim = (0.0, float(slots))
    ch.ylim = (0.0, float(max(sb.max(), sc.max())) * 1.08)
    names = [f'[{fmt(edges[i])}, {fmt(edges[i + 1])})' for i in range(m)]
    if overflow:
        names = [f'below {fmt(edges[0])}'] + names + [f'at or above {fmt(edges[-1])}']
    y0 = float(ch.sy(0))
    for series, shares, counts, colour, off in (('baseline', sb, b, PALETTE[0], 0.1),
                                                ('current', sc, c, PALETTE[1], 0.5)):
        xs, ys = ch.sx(np.arange(slots) + off), ch.sy(shares)
        w = float(ch.sx(0.4) - ch.sx(0))
        for i in np.flatnonzero(counts > 0):
            outer = ' fill-opacity="0.55"' if overflow and i in (0, slots - 1) else ''
            ch.mark(f'<rect class="mark" x="{xs[i]:.1f}" y="{ys[i]:.1f}" width="{w:.1f}" '
                    f'height="{max(y0 - ys[i], 0.5):.1f}" fill="{colour}"{outer}><title>'
                    f'{escape(series)} '
                    f'{escape(names[i])}: {escape(fmt(counts[i]))} ({shares[i]:.1%})</title></rect>')
    inner = list(range(1, m + 2)) if overflow else list(range(m + 1))
    step = max(1, math.ceil(len(inner) / 8))
    shown = [t for j, t in enumerate(inner) if j % step == 0 or t == inner[-1]]
    labels = [fmt(edges[t - 1 if overflow else t]) for t in shown]
    ticks = shown
    if overflow:
        ticks, labels = [0.5] + ticks + [slots - 0.5], ['below'] + labels + ['above']
    ch.axes(x_label, 'share of rows', xticks=ticks, xtick_labels=labels)
    ch.legend([('baseline', PALETTE[0], 'rect'), ('current', PALETTE[1], 'rect')])
    return ch.svg()


def bars_with_thresholds(names: Sequence[str], values, thresholds=None, title: str = '', *,
                         x_label: str = '', colors: Sequence[str] | None = None,
                         width: int = _W) -> str:
    """Horizontal bars, one row per name, with a threshold tick per bar.

    ``thresholds``: None (plain bars), one number for every bar, or one per bar
    (None or NaN: no threshold for that bar). A bar over its threshold is drawn
    in another colour (vermillion; the others blue, or ``colors[i]`` when
    given). One mark per bar; NaN values are skipped and named in the caption.
    """
    names = [str(n) for n in names]
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != len(names):
        raise ValueError(f'bars_with_thresholds: {len(names)} names, {v.size} values')
    if thresholds is None or np.ndim(thresholds) == 0:
        thr = np.full(v.size, np.nan if thresholds is None else float(thresholds))
    else:
        thr = np.array([np.nan if t is None else float(t) for t in thresholds])
        if thr.size != v.size:
            raise ValueError(f'bars_with_thresholds: {v.size} values, {thr.size} thresholds')
    keep = np.flatnonzero(np.isfinite(v))
    skipped = [names[i] for i in np.flatnonzero(~np.isfinite(v))]
    row = 22
    legend = bool(np.isfinite(thr[keep]).any())
    ch = _Chart('bars_with_thresholds', title, width,
                40 + row * max(len(keep), 1) + 50 + 26 * legend,
                margin=(min(20 + 7 * max([len(n) for n in names] + [4]), width // 3), 60, 40,
                        50 + 26 * legend))
    if skipped:
        shown = ', '.join(skipped[:5]) + (', ...' if len(skipped) > 5 else '')
        ch.captions.append(f'{len(skipped)} value(s) skipped (NaN or infinite): {shown}.')
    if not keep.size:
        ch.no_data()
        return ch.svg()
    has_thr = np.isfinite(thr[keep])
    allv = np.concatenate([v[keep], thr[keep][has_thr], [0.0]])
    lo, hi = (min(max(float(f(allv)), -_BIG), _BIG) for f in (np.min, np.max))
    ch.xlim = (lo, hi + (hi - lo) * 0.05 if hi > lo else lo + 1.0)
    ch.ylim = (0.0, float(len(keep)))
    ch.y0, ch.y1 = ch.top + row * len(keep), ch.top   # rows from the top
    x_zero = float(ch.sx(0.0))
    out = ['<g class="names" font-size="11" fill="#333">']
    for r, i in enumerate(keep):
        y = ch.top + row * r
        x = float(ch.sx(v[i]))
        over = bool(np.isfinite(thr[i]) and v[i] > thr[i])
        colour = _OVER if over else (colors[i % len(colors)] if colors else _UNDER)
        tip = f'{names[i]}: {fmt(v[i])}'
        if np.isfinite(thr[i]):
            tip += f' (threshold {fmt(thr[i])}{", over" if over else ""})'
        ch.mark(f'<rect class="mark{" over" if over else ""}" x="{min(x, x_zero):.1f}" '
                f'y="{y + 3}" width="{max(abs(x - x_zero), 1.0):.1f}" height="{row - 6}" '
                f'fill="{colour}"><title>{escape(tip)}</title></rect>')
        if np.isfinite(thr[i]):
            tx = float(ch.sx(thr[i]))
            ch.body.append(f'<path class="threshold" d="M{tx:.1f},{y}v{row}" stroke="#000" '
                           'stroke-width="2"/>')
        ch.body.append(f'<text x="{max(x, x_zero) + 4:.1f}" y="{y + row / 2 + 4}" '
                       f'font-size="10" fill="#333">{escape(fmt(v[i]))}</text>')
        out.append(f'<text x="{ch.x0 - 6}" y="{y + row / 2 + 4}" text-anchor="end">'
                   f'{escape(names[i])}</text>')
    ch.body.append(''.join(out) + '</g>')
    ch.axes(x_label, '', yticks=[], grid_y=False)
    if legend:
        ch.legend([('at or below threshold', colors[0] if colors else _UNDER, 'rect'),
                   ('over threshold', _OVER, 'rect'), ('threshold', '#000', 'line')],
                  below=True)
    return ch.svg()


def lines(x, series: Mapping[str, Sequence[float]], title: str, x_label: str = '',
          y_label: str = '', log_y: bool = False, *, width: int = _W, height: int = _H) -> str:
    """Line chart of one or more series over shared ``x`` (numbers, or labels such as
    window names: then evenly spaced). One mark per series drawn (a path, or a dot
    for a series of one point); NaN values (and non-positive ones on a log axis)
    break the line and are counted in the caption."""
    xs = list(x)
    try:
        xv = np.asarray(xs, dtype=np.float64)
        categorical = not np.isfinite(xv).all()
    except (TypeError, ValueError):
        categorical = True
    if categorical:
        xv = np.arange(len(xs), dtype=np.float64)
    ch = _Chart('lines', title, width, height)
    ch.log_y = log_y
    ys, skipped = {}, 0
    for name, values in series.items():
        y = np.asarray(values, dtype=np.float64).ravel()
        if y.size != len(xs):
            raise ValueError(f'lines: series {name!r} has {y.size} values for {len(xs)} x')
        ok = np.isfinite(y) & ((y > 0) if log_y else True)
        skipped += int((~ok).sum())
        ys[str(name)] = np.where(ok, y, np.nan)
    if skipped:
        ch.captions.append(f'{skipped} value(s) skipped (NaN'
                           f'{", infinite or not positive on the log axis" if log_y else ""}'
                           ' or infinite).')
    finite = np.concatenate([y[np.isfinite(y)] for y in ys.values()] or [np.empty(0)])
    if not finite.size:
        ch.no_data()
        return ch.svg()
    labels = [name if np.isfinite(y).any() else f'{name} (no data)' for name, y in ys.items()]
    if len(ys) > 1:
        ch.make_room(labels)
    ch.xlim = _limits(xv, 0.02)
    ch.ylim = _limits(finite, 0.05, log=log_y)
    entries = []
    for j, (name, y) in enumerate(ys.items()):
        colour = PALETTE[j % len(PALETTE)]
        ok = np.isfinite(y)
        entries.append((labels[j], colour, 'line'))
        if not ok.any():
            continue
        px, py = ch.sx(xv), ch.sy(np.where(ok, y, 1.0))
        if ok.sum() == 1:
            i = int(np.flatnonzero(ok)[0])
            ch.mark(f'<circle class="mark" cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="4" '
                    f'fill="{colour}"><title>{escape(name)}: {escape(fmt(y[i]))}</title></circle>')
            continue
        d, pen = [], False
        for i in range(len(xs)):
            if ok[i]:
                d.append(f'{"L" if pen else "M"}{px[i]:.1f},{py[i]:.1f}')
            pen = bool(ok[i])
        ch.mark(f'<path class="mark" d="{"".join(d)}" fill="none" stroke="{colour}" '
                f'stroke-width="2"><title>{escape(name)}</title></path>')
        if len(xs) <= 100:
            ch.body.append(''.join(
                f'<circle class="pt" cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.5" '
                f'fill="{colour}"><title>{escape(name)} at {escape(xs[i])}: {escape(fmt(y[i]))}</title>'
                '</circle>' for i in np.flatnonzero(ok)))
    if categorical:
        step = max(1, math.ceil(len(xs) / 8))
        idx = list(range(0, len(xs), step))
        ch.axes(x_label, y_label, xticks=idx, xtick_labels=[str(xs[i])[:16] for i in idx])
    else:
        ticks = [t for t in _nice_ticks(*ch.xlim) if ch.xlim[0] <= t <= ch.xlim[1]]
        if np.all(xv == np.round(xv)):   # integer x (iterations): integer ticks
            ticks = [t for t in ticks if t == round(t)]
            if len(ticks) < 2:
                ticks = sorted(set(xv.tolist()))
        ch.axes(x_label, y_label, xticks=ticks)
    if len(ys) > 1:
        ch.legend(entries)
    return ch.svg()


def scatter(xy, labels=None, centres_xy=None, title: str = '', *, x_label: str = '',
            y_label: str = '', max_points: int = 5000, seed: int = 0,
            width: int = _W, height: int = 460) -> str:
    """Points coloured by integer label, with centres as larger diamonds.

    At most ``max_points`` points are drawn: a sample drawn with a fixed seed (the
    same points every time), said in the caption; rows with a NaN or infinite
    coordinate are skipped and counted. One mark per point drawn and per centre.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    lab = (np.zeros(len(xy), dtype=np.int64) if labels is None
           else np.asarray(labels).astype(np.int64).ravel())
    if lab.size != len(xy):
        raise ValueError(f'scatter: {len(xy)} points, {lab.size} labels')
    cen = (np.empty((0, 2)) if centres_xy is None
           else np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2))
    ch = _Chart('scatter', title, width, height)
    ok = np.isfinite(xy).all(axis=1)
    if (~ok).any():
        ch.captions.append(f'{int((~ok).sum())} point(s) skipped (NaN or infinite).')
    xy, lab = xy[ok], lab[ok]
    cen_ok = np.isfinite(cen).all(axis=1)
    n = len(xy)
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        xy, lab = xy[keep], lab[keep]
        ch.captions.append(f'{max_points:,} of {n:,} points drawn (a fixed-seed random '
                           'sample).')
    elif n:
        ch.captions.append(f'{n:,} points drawn.')
    if not n and not cen_ok.any():
        ch.no_data()
        return ch.svg()
    groups = np.unique(lab)
    entries = [(f'cluster {int(g)}', PALETTE[int(g) % len(PALETTE)], 'rect') for g in groups
               ] if labels is not None else []
    if cen_ok.any():
        entries.append(('centre', '#fff', 'diamond'))
    if len(entries) > 1:
        ch.make_room([e[0] for e in entries])
    both = np.concatenate([xy, cen[cen_ok]])
    ch.xlim, ch.ylim = _limits(both[:, 0]), _limits(both[:, 1])
    px, py = ch.sx(xy[:, 0]), ch.sy(xy[:, 1])
    for g in groups:
        sel = np.flatnonzero(lab == g)
        colour = PALETTE[int(g) % len(PALETTE)]
        dots = ''.join(f'<circle class="mark" cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.2"/>'
                       for i in sel)
        ch.mark(f'<g fill="{colour}" fill-opacity="0.6">{dots}</g>', len(sel))
    for j in np.flatnonzero(cen_ok):
        cx, cy = float(ch.sx(cen[j, 0])), float(ch.sy(cen[j, 1]))
        ch.mark(f'<path class="mark centre" d="{_diamond(cx, cy, 8)}" '
                f'fill="{PALETTE[j % len(PALETTE)]}" stroke="#000" stroke-width="2">'
                f'<title>centre {j}: ({escape(fmt(cen[j, 0]))}, {escape(fmt(cen[j, 1]))})</title>'
                '</path>')
    if (~cen_ok).any():
        ch.captions.append(f'{int((~cen_ok).sum())} centre(s) skipped (NaN or infinite).')
    if labels is not None and len(groups) > len(PALETTE):
        ch.captions.append(f'{len(groups)} labels: colours repeat every {len(PALETTE)}.')
    ch.axes(x_label, y_label)
    if len(entries) > 1:
        ch.legend(entries)
    return ch.svg()
