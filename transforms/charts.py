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
series, and ``<title>`` tooltips on its marks where they are cheap. They draw
on the canvas of :mod:`beamml.transforms.svg` (scales, ticks, axes, legends).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from beamml.transforms.svg import (BIG, HEIGHT, PALETTE, WIDTH, Chart, diamond, escape, fmt,
                                   limits, nice_ticks)

__all__ = ['histogram_pair', 'bars_with_thresholds', 'lines', 'scatter']

_OVER = '#D55E00'   # a bar over its threshold
_UNDER = '#0072B2'


def _counts(values) -> tuple[np.ndarray, int]:
    """Counts as floats with NaN and negative entries set to 0; how many those were."""
    c = np.asarray(values, dtype=np.float64).ravel()
    bad = ~np.isfinite(c) | (c < 0)
    return np.where(bad, 0.0, c), int(bad.sum())


def histogram_pair(edges, baseline_counts, current_counts, title: str, *,
                   x_label: str = 'bin', width: int = WIDTH, height: int = HEIGHT) -> str:
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
    ch = Chart('histogram_pair', title, width, height)
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
                         width: int = WIDTH) -> str:
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
    ch = Chart('bars_with_thresholds', title, width,
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
    lo, hi = (min(max(float(f(allv)), -BIG), BIG) for f in (np.min, np.max))
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
          y_label: str = '', log_y: bool = False, *, width: int = WIDTH, height: int = HEIGHT) -> str:
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
    ch = Chart('lines', title, width, height)
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
    ch.xlim = limits(xv, 0.02)
    ch.ylim = limits(finite, 0.05, log=log_y)
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
        ticks = [t for t in nice_ticks(*ch.xlim) if ch.xlim[0] <= t <= ch.xlim[1]]
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
            width: int = WIDTH, height: int = 460) -> str:
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
    ch = Chart('scatter', title, width, height)
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
    ch.xlim, ch.ylim = limits(both[:, 0]), limits(both[:, 1])
    px, py = ch.sx(xy[:, 0]), ch.sy(xy[:, 1])
    for g in groups:
        sel = np.flatnonzero(lab == g)
        colour = PALETTE[int(g) % len(PALETTE)]
        dots = ''.join(f'<circle class="mark" cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="2.2"/>'
                       for i in sel)
        ch.mark(f'<g fill="{colour}" fill-opacity="0.6">{dots}</g>', len(sel))
    for j in np.flatnonzero(cen_ok):
        cx, cy = float(ch.sx(cen[j, 0])), float(ch.sy(cen[j, 1]))
        ch.mark(f'<path class="mark centre" d="{diamond(cx, cy, 8)}" '
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
