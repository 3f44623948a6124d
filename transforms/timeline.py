"""The timeline chart of the daily cycle (SVG, pure Python; drawn on :mod:`beamml.transforms.svg`).

:func:`timeline` draws one column per day and five lanes: the **model** version the
day used (one colour per version; a line and a marker where it changed: promoted,
rolled back or changed outside the cycle), the **alarms** (a bar as high as their
count, the count above it), the **retrain** decision (a dot in the candidate's colour
when one was trained, a ring when rules fired but nothing was trained), the **gate**
(a triangle in the candidate's colour for a promotion, a cross for a candidate kept
out) and the **day** (red when a step failed and the day is not complete, salmon when
it was completed by a rerun after a failure, amber when it is incomplete, grey when
it has no file at all). A legend names the versions' colours and the symbols.

The input is a list of day entries as :func:`beamml.pipelines.cycle.timeline.timeline`
returns them (``date``, ``state``, ``rerun``, ``model``, ``points``, ``change``,
``alarms``, ``fired``, ``retrain``, ``gate``, ``failures``; None for a step not run).
As every chart of :mod:`beamml.transforms.charts`: the root carries
``data-chart="timeline"`` and ``data-marks``, every data mark ``class="mark <lane>
<kind>"`` and ``data-day`` (and ``data-version`` / ``data-count`` where it has one),
a ``<title>`` tooltip on each mark, every text escaped, "no data" when there is no day.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from beamml.transforms.svg import Chart, escape

__all__ = ['timeline', 'VERSION_COLOURS', 'ALARM', 'FAILED', 'RERUN', 'INCOMPLETE',
           'MISSING']

#: the versions' colours, in order of first appearance (Okabe & Ito's, less the
#: vermillion of the alarms and the grey of the missing days)
VERSION_COLOURS = ('#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#F0E442')
ALARM, FAILED, RERUN, INCOMPLETE, MISSING = '#D55E00', '#A50026', '#F4A582', '#FEE08B', '#BBBBBB'
_CHANGE = {'promoted': '#009E73', 'rollback': '#7B3294', 'changed': '#333333'}
_WIDTH, _LEFT, _RIGHT = 900, 70, 14
# lanes: (name, top, height)
_LANES = (('model', 58, 24), ('alarms', 90, 40), ('retrain', 138, 20), ('gate', 166, 20),
          ('day', 194, 14))
_AXIS = 212
_CHAR_PX = 6.2


def _colours(days: Sequence[Mapping]) -> dict[str, str]:
    """{version: colour}, in order of first appearance (model, candidate, gate's)."""
    out: dict[str, str] = {}
    for e in days:
        for v in (e.get('model'), (e.get('retrain') or {}).get('candidate_version'),
                  (e.get('gate') or {}).get('candidate_version')):
            if v and v not in out:
                out[v] = VERSION_COLOURS[len(out) % len(VERSION_COLOURS)]
    return out


def _lane(name: str) -> tuple[int, int]:
    return next((top, h) for n, top, h in _LANES if n == name)


def _short(text: str, px: float) -> str:
    """``text`` cut to about ``px`` pixels of 11-px text ('' when not even 3 characters fit)."""
    n = int(px // _CHAR_PX)
    return '' if n < 3 else text if len(text) <= n else text[:n - 1] + '…'


def _attrs(day: str, **more) -> str:
    return f' data-day="{escape(day)}"' + ''.join(
        f' data-{k}="{escape(v)}"' for k, v in more.items() if v is not None)


def timeline(days: Sequence[Mapping], title: str, *, width: int = _WIDTH) -> str:
    """The cycle's days on one timeline (see the module); returns the SVG."""
    days = list(days)
    colours = _colours(days)
    legend = _legend(colours, days)
    rows = _legend_rows(legend, width - _LEFT - _RIGHT)
    ch = Chart('timeline', title, width, _AXIS + 30 + 18 * len(rows) + 8,
               margin=(_LEFT, _RIGHT, 40, 40))
    if len(colours) > len(VERSION_COLOURS):
        ch.captions.append(f'{len(colours)} versions: colours repeat every '
                           f'{len(VERSION_COLOURS)}.')
    if not days:
        ch.no_data()
        return ch.svg()
    n = len(days)
    ch.xlim = (0.0, float(n))
    col = (ch.x1 - ch.x0) / n
    x = [float(ch.sx(i)) for i in range(n + 1)]
    _frame(ch, days, x)
    _models(ch, days, x, col, colours)
    _alarms(ch, days, x, col)
    _decisions(ch, days, x, col, colours)
    _states(ch, days, x, col)
    _draw_legend(ch, rows, _AXIS + 30)
    return ch.svg()


def _frame(ch: Chart, days: list, x: list[float]) -> None:
    """The lanes' backgrounds and names, and the day ticks."""
    out = ['<g class="frame" font-size="11" fill="#333">']
    for name, top, h in _LANES:
        out.append(f'<rect x="{ch.x0}" y="{top}" width="{ch.x1 - ch.x0:.1f}" height="{h}" '
                   'fill="#f3f3f3"/>')
        out.append(f'<text x="{ch.x0 - 6}" y="{top + h / 2 + 4:.1f}" text-anchor="end">'
                   f'{escape(name)}</text>')
    step = max(1, math.ceil(len(days) / max(1, (ch.x1 - ch.x0) // 46)))
    for i in range(0, len(days), step):
        cx = (x[i] + x[i + 1]) / 2
        out.append(f'<path d="M{cx:.1f},{_AXIS - 4}v4" stroke="#333"/>'
                   f'<text x="{cx:.1f}" y="{_AXIS + 12}" text-anchor="middle">'
                   f'{escape(str(days[i]["date"])[5:])}</text>')
    first, last = str(days[0]['date']), str(days[-1]['date'])
    out.append(f'<text x="{(ch.x0 + ch.x1) / 2:.1f}" y="{_AXIS + 26}" text-anchor="middle" '
               f'font-size="12">day ({escape(first)} to {escape(last)})</text></g>')
    ch.body.extend(out)


def _models(ch: Chart, days: list, x: list[float], col: float, colours: dict) -> None:
    top, h = _lane('model')
    labels = []
    for i, e in enumerate(days):
        v = e.get('model')
        if not v:
            continue
        tip = f'{e["date"]}: model {v}' + (f', {e["points"]:,} point(s)'
                                          if isinstance(e.get('points'), int) else '')
        w = min(col + 0.6, ch.x1 - x[i])   # (overlapping the next: no seam in a run)
        ch.mark(f'<rect class="mark model" x="{x[i]:.1f}" y="{top}" width="{w:.1f}" '
                f'height="{h}" fill="{colours[v]}"{_attrs(e["date"], version=v)}><title>'
                f'{escape(tip)}</title></rect>')
        if i == 0 or days[i - 1].get('model') != v:   # a run of the version starts
            run = next((j for j in range(i, len(days)) if days[j].get('model') != v),
                       len(days)) - i
            labels.append((x[i], run * col, v))
        if e.get('change'):
            kind = e['change']
            colour = _CHANGE.get(kind, '#333333')
            tip = {'promoted': f'{e["date"]}: {v} promoted by the gate the day before',
                   'rollback': f'{e["date"]}: back to {v} (rolled back)',
                   }.get(kind, f'{e["date"]}: {v} (LATEST changed outside the cycle)')
            ch.mark(f'<path class="mark change {escape(kind)}" d="M{x[i]:.1f},{top - 12}'
                    f'l-5,-7h10z M{x[i]:.1f},{top - 12}V{_AXIS - 4}" stroke="{colour}" '
                    f'stroke-width="2" fill="{colour}"{_attrs(e["date"], version=v)}><title>'
                    f'{escape(tip)}</title></path>')
            ch.body.append(f'<text x="{x[i] + 4:.1f}" y="{top - 6}" font-size="10" '
                           f'fill="{colour}">{escape(_short(kind, 200))}</text>')
    ch.body.append(''.join(
        f'<text x="{x0 + 3:.1f}" y="{top + h / 2 + 4:.1f}" font-size="11" fill="#fff" '
        f'font-weight="bold">{escape(_short(v, w - 6))}</text>' for x0, w, v in labels))


def _alarms(ch: Chart, days: list, x: list[float], col: float) -> None:
    top, h = _lane('alarms')
    counts = [len(e['alarms']) for e in days if e.get('alarms') is not None]
    most = max(counts + [1])
    for i, e in enumerate(days):
        cx = (x[i] + x[i + 1]) / 2
        if e.get('alarms') is None:
            if e.get('state') != 'missing':
                ch.body.append(f'<text x="{cx:.1f}" y="{top + h - 4}" text-anchor="middle" '
                               'font-size="10" fill="#888">?</text>')
            continue
        k = len(e['alarms'])
        if not k:
            continue
        bh = max(2.0, (h - 12) * k / most)
        what = sorted({f'{a.get("metric")}' + (f' ({a["feature"]})' if a.get('feature')
                                               is not None else '') for a in e['alarms']})
        tip = f'{e["date"]}: {k} alarm(s): ' + ', '.join(what)
        if e.get('fired'):
            tip += '; rules fired: ' + ', '.join(map(str, e['fired']))
        ch.mark(f'<rect class="mark alarms" x="{x[i] + col * 0.15:.1f}" y="{top + h - bh:.1f}"'
                f' width="{col * 0.7:.1f}" height="{bh:.1f}" fill="{ALARM}"'
                f'{_attrs(e["date"], count=k)}><title>{escape(tip)}</title></rect>')
        ch.body.append(f'<text x="{cx:.1f}" y="{top + h - bh - 2:.1f}" text-anchor="middle" '
                       f'font-size="10" fill="#333">{k}</text>')


def _decisions(ch: Chart, days: list, x: list[float], col: float, colours: dict) -> None:
    r = max(3.0, min(7.0, col * 0.3))
    top, h = _lane('retrain')
    for i, e in enumerate(days):
        cx, cy = (x[i] + x[i + 1]) / 2, top + h / 2
        rt = e.get('retrain')
        if rt and rt.get('status') == 'trained':
            v = rt.get('candidate_version')
            ch.mark(f'<circle class="mark retrain trained" cx="{cx:.1f}" cy="{cy:.1f}" '
                    f'r="{r:.1f}" fill="{colours.get(v, "#333")}" stroke="#000" '
                    f'{_attrs(e["date"], version=v).strip()}><title>{escape(e["date"])}: '
                    f'candidate {escape(v)} trained ({escape(rt.get("reason"))})</title>'
                    '</circle>')
        elif rt and e.get('fired'):   # rules fired, nothing trained (LATEST moved)
            ch.mark(f'<circle class="mark retrain skipped" cx="{cx:.1f}" cy="{cy:.1f}" '
                    f'r="{r - 1:.1f}" fill="none" stroke="#333" stroke-width="2"'
                    f'{_attrs(e["date"])}><title>{escape(e["date"])}: rules '
                    f'{escape(", ".join(map(str, e["fired"])))} fired; nothing trained '
                    f'({escape(rt.get("reason"))})</title></circle>')
    top, h = _lane('gate')
    for i, e in enumerate(days):
        g = e.get('gate') or {}
        if g.get('decision') not in ('promote', 'keep'):
            continue
        cx, cy, v = (x[i] + x[i + 1]) / 2, top + h / 2, g.get('candidate_version')
        colour = colours.get(v, '#333')
        tip = (f'{e["date"]}: {g["decision"]} {v}' + (' (promoted)' if g.get('promoted') else
                                                     '') + f': {g.get("reason")}')
        if g['decision'] == 'promote':
            d = f'M{cx:.1f},{cy - r:.1f}L{cx + r:.1f},{cy + r:.1f}L{cx - r:.1f},{cy + r:.1f}Z'
            body = f'd="{d}" fill="{colour}" stroke="#000"'
        else:
            d = (f'M{cx - r:.1f},{cy - r:.1f}L{cx + r:.1f},{cy + r:.1f}'
                 f'M{cx + r:.1f},{cy - r:.1f}L{cx - r:.1f},{cy + r:.1f}')
            body = f'd="{d}" fill="none" stroke="{colour}" stroke-width="3"'
        ch.mark(f'<path class="mark gate {g["decision"]}" {body}'
                f'{_attrs(e["date"], version=v)}><title>{escape(tip)}</title></path>')


_STATES = {'failed': FAILED, 'rerun': RERUN, 'incomplete': INCOMPLETE, 'missing': MISSING}


def _states(ch: Chart, days: list, x: list[float], col: float) -> None:
    top, h = _lane('day')
    for i, e in enumerate(days):
        kind = 'rerun' if e.get('rerun') else e.get('state')
        if kind not in _STATES:
            continue
        failures = '; '.join(f'{f.get("step")}: {f.get("error")}'
                             for f in e.get('failures') or [])
        steps = [s for s, done in (e.get('steps') or {}).items() if not done]
        tip = {'failed': f'failed: {failures}',
               'rerun': f'complete after a rerun; failed attempt(s): {failures}',
               'incomplete': 'incomplete: ' + ', '.join(steps) + ' not done',
               'missing': 'no file of the day'}[kind]
        ch.mark(f'<rect class="mark day {kind}" x="{x[i] + 1:.1f}" y="{top}" '
                f'width="{max(col - 2, 1):.1f}" height="{h}" fill="{_STATES[kind]}"'
                f'{_attrs(e["date"])}><title>{escape(e["date"])}: {escape(tip)}</title></rect>')


def _legend(colours: dict, days: list) -> list[tuple[str, str, str]]:
    """(label, colour, shape): the versions, then the symbols that occur."""
    out = [(v, c, 'rect') for v, c in colours.items()]
    used = {e.get('change') for e in days} | {
        'rerun' if e.get('rerun') else e.get('state') for e in days}
    out.append(('alarms', ALARM, 'rect'))
    out += [('trained', '#fff', 'dot'), ('fired, not trained', '#fff', 'ring'),
            ('promote', '#fff', 'triangle'), ('keep', '#333', 'cross')]
    out += [(label, colour, 'rect') for key, label, colour in (
        ('failed', 'failed', FAILED), ('rerun', 'rerun after a failure', RERUN),
        ('incomplete', 'incomplete', INCOMPLETE), ('missing', 'no file', MISSING))
        if key in used]
    out += [(f'{kind}', colour, 'line') for kind, colour in _CHANGE.items() if kind in used]
    return out


def _legend_rows(entries: list, width: float) -> list[list]:
    rows, cur, used = [], [], 0.0
    for e in entries:
        w = 26 + _CHAR_PX * len(e[0])
        if cur and used + w > width:
            rows.append(cur)
            cur, used = [], 0.0
        cur.append((e, used))
        used += w
    return rows + ([cur] if cur else [])


def _draw_legend(ch: Chart, rows: list, y0: float) -> None:
    out = ['<g class="legend" font-size="11">']
    for j, row in enumerate(rows):
        cy = y0 + 18 * j + 9
        for (label, colour, shape), off in row:
            x = ch.x0 + off
            if shape == 'rect':
                out.append(f'<rect x="{x + 6:.1f}" y="{cy - 5}" width="10" height="10" '
                           f'fill="{colour}"/>')
            elif shape == 'line':
                out.append(f'<path d="M{x + 11:.1f},{cy - 6}v12" stroke="{colour}" '
                           'stroke-width="2"/>')
            elif shape in ('dot', 'ring'):
                fill = 'fill="#888" stroke="#000"' if shape == 'dot' else \
                    'fill="none" stroke="#333" stroke-width="2"'
                out.append(f'<circle cx="{x + 11:.1f}" cy="{cy}" r="4.5" {fill}/>')
            elif shape == 'triangle':
                out.append(f'<path d="M{x + 11:.1f},{cy - 5}l5,10h-10z" fill="#888" '
                           'stroke="#000"/>')
            else:
                out.append(f'<path d="M{x + 6:.1f},{cy - 5}l10,10m0,-10l-10,10" '
                           f'stroke="{colour}" stroke-width="2.5"/>')
            out.append(f'<text x="{x + 22:.1f}" y="{cy + 4}">{escape(label)}</text>')
    out.append('</g>')
    ch.body.extend(out)
