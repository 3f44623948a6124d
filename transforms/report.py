"""Self-contained HTML reports with inline SVG charts (pure Python + numpy).

A report is one HTML5 file: inline CSS, inline SVG, no script and no external
URL of any kind, so it opens offline, from a bucket's download or an e-mail.
The charts (:mod:`beamml.transforms.charts`, re-exported here):
:func:`histogram_pair` (baseline vs current, overflow bins at the ends),
:func:`bars_with_thresholds`, :func:`lines` (optionally log y), :func:`scatter`
(points by label, centres marked, a fixed-seed sample of at most
``max_points``), :func:`timeline` (the daily cycle's days:
:mod:`beamml.transforms.timeline`); each SVG root carries ``data-chart`` and ``data-marks``, each
data mark ``class="mark"``, and an empty chart says "no data".
:class:`Report` puts sections, charts and tables into a page and writes it
(local or ``gs://``). The scatter's 2-D projection is
:class:`beamml.transforms.pca.PCAModel`'s.
"""
from __future__ import annotations

import datetime as _dt
from typing import Mapping, Sequence


from beamml.transforms.charts import bars_with_thresholds, histogram_pair, lines, scatter
from beamml.transforms.svg import PALETTE, escape, fmt, spans_decades
from beamml.transforms.timeline import timeline

__all__ = ['PALETTE', 'histogram_pair', 'bars_with_thresholds', 'lines', 'scatter',
           'timeline', 'spans_decades', 'table_html', 'Report']


def table_html(rows, columns: Sequence[str]) -> str:
    """An HTML table: ``rows`` are dicts (by column name) or sequences; every cell escaped."""
    head = ''.join(f'<th>{escape(c)}</th>' for c in columns)
    body = []
    for r in rows:
        cells = [r.get(c, '') for c in columns] if isinstance(r, Mapping) else list(r)
        body.append('<tr>' + ''.join(
            f'<td>{escape(fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)}'
            '</td>' for v in cells) + '</tr>')
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_CSS = """
body { font-family: sans-serif; color: #222; max-width: 980px; margin: 20px auto;
       padding: 0 10px; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
p.text { font-size: 14px; }
figure { margin: 12px 0; } svg.chart { border: 1px solid #ddd; max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } footer { margin-top: 30px; font-size: 11px; color: #777; }
"""


class Report:
    """One self-contained HTML page of sections, charts and tables.

    ``Report('title').section('Drift', 'text').add(svg).table(rows, columns)``;
    :meth:`render` gives the document, :meth:`write` writes it (local or gs://).
    :meth:`add` takes markup as it is (a chart of this module, or
    :func:`table_html`); every other text is escaped. ``generator`` names what wrote the
    page in its head (``<meta name="generator">``), for a command that must know its own
    page again before it replaces one.
    """

    def __init__(self, title: str, subtitle: str | None = None,
                 generator: str | None = None):
        self.title, self.subtitle, self.generator = title, subtitle, generator
        self._parts: list[str] = []

    def section(self, heading: str, text: str | None = None) -> 'Report':
        self._parts.append(f'<h2>{escape(heading)}</h2>')
        if text:
            self._parts.append(f'<p class="text">{escape(text)}</p>')
        return self

    def add(self, fragment: str) -> 'Report':
        self._parts.append(f'<figure>{fragment}</figure>' if fragment.lstrip().startswith('<svg')
                           else fragment)
        return self

    def table(self, rows, columns: Sequence[str]) -> 'Report':
        return self.add(table_html(rows, columns))

    def render(self) -> str:
        from beamml import __version__
        when = _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
        sub = f'<p class="text">{escape(self.subtitle)}</p>' if self.subtitle else ''
        gen = (f'<meta name="generator" content="{escape(self.generator)}">'
               if self.generator else '')
        return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">{gen}'
                f'<title>{escape(self.title)}</title><style>{_CSS}</style></head><body>'
                f'<h1>{escape(self.title)}</h1>{sub}{"".join(self._parts)}'
                f'<footer>beamml {escape(__version__)}, {when}</footer></body></html>\n')

    def write(self, path: str) -> str:
        """Write the page (one object on gs://, a rename locally); returns ``path``."""
        from beamml.transforms.core.documents import write_text
        return write_text(path, self.render())
