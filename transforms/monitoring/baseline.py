"""Profiles (the statistics document of a data set) and the baseline they are compared to.

A *profile* holds, per column (every feature by its input name, ``l2_norm``, and with a
model ``distance``): ``count`` (finite values), ``nan``, ``inf``, ``mean``, ``std``
(population), ``min``, ``max``, ``quantiles`` (``p01 .. p99``) and ``histogram``
(``edges``, B + 1 values, and ``counts``, B + 2 values: the underflow bin ``x < e_0``
first, the overflow bin ``x > e_B`` last); with a model also ``clusters`` (``counts``,
``shares``) and ``far_share``.

A *baseline* is a profile whose fine histogram edges were chosen from the data itself
(:data:`FINE_BINS` equal bins between each column's min and max; a constant column gets
[v - 0.5, v + 0.5], as ``numpy.histogram``), plus per column the *drift bins*
(``drift.cuts``: up to :data:`DRIFT_BINS` bins cut at the fine edges nearest the
baseline's deciles, plus both overflow bins, ``drift.edges`` their boundaries) and, with
a model, ``far_threshold``: the smallest fine edge of the distance column with at most
1% of the baseline's points at or beyond it (the p99 distance rounded up to a bin
edge), and the baseline's ``far_share`` at or beyond it (exact, <= 0.01).

Later data is binned with the baseline's fine edges (so no second pass is needed) and
its drift histogram is the sum of those fine bins over the same cuts: the two are
compared bin for bin. Quantiles are read from the fine histogram
(:func:`~beamml.transforms.monitoring.stats.histogram_quantiles`): within the
baseline's range their error is at most about one fine bin, ``(max - min) / 200`` of
the baseline (tested: within two bins); beyond it, within the overflow bin, which
spans to the observed min or max.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import exists, join, read_json, write_json
from beamml.transforms.monitoring.stats import QUANTILES, histogram_quantiles

__all__ = ['FINE_BINS', 'DRIFT_BINS', 'FAR_QUANTILE', 'BASELINE_FILE', 'column_names',
           'fine_edges', 'drift_cuts', 'make_profile', 'make_baseline', 'load_baseline',
           'baseline_edges', 'Baseline']

FINE_BINS = 200
DRIFT_BINS = 10
FAR_QUANTILE = 0.99
BASELINE_FILE = 'baseline.json'
FORMAT = 'beamml-baseline-1'


def column_names(layout, norm: str = 'l2_norm') -> list[str]:
    """The feature names a user recognises: a list column ``features`` of d values gives
    ``features_0 .. features_{d-1}``, scalar columns their own names."""
    if layout.list_features:
        base = layout.feature_columns[0]
        return [f'{base}_{i}' for i in range(layout.dimension)]
    return list(layout.feature_columns)


def norm_name(names: list[str]) -> str:
    """``l2_norm``, or ``_l2_norm`` when a feature is called that."""
    return '_l2_norm' if 'l2_norm' in names else 'l2_norm'


def fine_edges(mins: np.ndarray, maxs: np.ndarray, bins: int = FINE_BINS) -> np.ndarray:
    """(c, bins + 1) equal-width edges between each column's min and max (NaN: no finite
    value, [-0.5, 0.5]; a constant column v: [v - 0.5, v + 0.5], as numpy.histogram)."""
    out = np.empty((len(mins), bins + 1))
    for j, (lo, hi) in enumerate(zip(mins, maxs)):
        lo, hi = float(lo), float(hi)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = -0.5, 0.5
        elif lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        out[j] = np.linspace(lo, hi, bins + 1)
    return out


def drift_cuts(counts: np.ndarray, drift_bins: int = DRIFT_BINS) -> list[int]:
    """Positions where the drift bins of one column start (for ``np.add.reduceat``, after
    position 0, the underflow bin): 1, then one after each fine edge nearest a quantile
    ``i / drift_bins`` of the baseline, then B + 1 (the overflow bin)."""
    B = len(counts) - 2
    N = counts.sum()
    chosen = set()
    if N > 0 and B > 1:
        below = np.cumsum(counts)[1:B] / N    # share below the interior edges e_1 .. e_{B-1}
        for i in range(1, drift_bins):
            chosen.add(int(np.argmin(np.abs(below - i / drift_bins))) + 1)
    return [1] + [i + 1 for i in sorted(chosen)] + [B + 1]


def drift_counts(counts: np.ndarray, cuts: list[int]) -> np.ndarray:
    """The drift histogram of one column: its fine counts summed between the cuts."""
    return np.add.reduceat(np.asarray(counts, dtype=np.int64), [0] + list(cuts))


def _column(m: dict, j: int, counts, edges) -> dict:
    doc = {k: m[k][j] for k in ('count', 'nan', 'inf', 'mean', 'std', 'min', 'max')}
    if counts is not None:
        q = histogram_quantiles(counts[j], edges[j], float(m['min'][j]), float(m['max'][j]))
        doc['quantiles'] = {f'p{int(round(p * 100)):02d}': v for p, v in zip(QUANTILES, q)}
        doc['histogram'] = {'edges': edges[j].tolist(), 'counts': counts[j].tolist()}
    return doc


def make_profile(names: list[str], stats: dict, edges: np.ndarray | None,
                 with_model: bool, refused: int = 0, far_index: int | None = None) -> dict:
    """The profile document of a :class:`ColumnStatsFn` output (columns: the features,
    the norm, [the distance])."""
    m, counts = stats['moments'], stats['counts']
    d = len(names)
    doc = {'rows': stats['rows'], 'refused': int(refused),
           'features': {n: _column(m, j, counts, edges) for j, n in enumerate(names)},
           'norm_name': norm_name(names), 'l2_norm': _column(m, d, counts, edges)}
    if with_model:
        doc['distance'] = _column(m, d + 1, counts, edges)
        clusters = stats['clusters']
        total = int(clusters.sum())
        doc['clusters'] = {'counts': clusters.tolist(),
                           'shares': (clusters / total if total else
                                      np.zeros(len(clusters))).tolist()}
        if far_index is not None and counts is not None:
            n = int(counts[d + 1].sum())
            doc['far_share'] = float(counts[d + 1][far_index + 1:].sum() / n) if n else None
    return doc


def _far_index(counts: np.ndarray) -> int:
    """The smallest fine edge index f with at most 1% of the points at or beyond e_f."""
    N = counts.sum()
    above = np.cumsum(counts[::-1])[::-1]   # above[i] = counts[i:].sum()
    for f in range(len(counts) - 1):
        if above[f + 1] <= (1.0 - FAR_QUANTILE) * N:
            return f
    return len(counts) - 2


def make_baseline(names: list[str], stats: dict, edges: np.ndarray, *, model=None,
                  refused: int = 0, source: str | None = None,
                  drift_bins: int = DRIFT_BINS) -> dict:
    """The baseline document from the second pass's statistics (binned on ``edges``,
    made from the first pass's min and max)."""
    counts = stats['counts']
    with_model = model is not None
    far = _far_index(counts[len(names) + 1]) if with_model else None
    doc = {'format': FORMAT, 'created': dt.datetime.now(dt.timezone.utc).isoformat(
        timespec='seconds'), 'source': source, 'fine_bins': int(edges.shape[1] - 1),
        'drift_bins': int(drift_bins), 'names': list(names),
        **make_profile(names, stats, edges, with_model, refused, far)}
    for j, col in enumerate(_columns(doc)):
        cuts = drift_cuts(counts[j], drift_bins)
        col['drift'] = {'cuts': cuts, 'edges': [float(edges[j][c - 1]) for c in cuts]}
    if with_model:
        doc['model'] = {'version': model.version, 'path': model.path, 'k': model.k,
                        'd': model.d, 'distance': model.distance}
        doc['far_index'] = far
        doc['far_threshold'] = float(edges[len(names) + 1][far])
    return doc


def _columns(doc: dict) -> list[dict]:
    """The column sections of a profile, in column order."""
    cols = [doc['features'][n] for n in doc['names']] + [doc['l2_norm']]
    if 'distance' in doc:
        cols.append(doc['distance'])
    return cols


def baseline_edges(doc: dict) -> np.ndarray:
    """(c, B + 1) fine edges of a baseline, in column order."""
    return np.array([c['histogram']['edges'] for c in _columns(doc)], dtype=np.float64)


class Baseline:
    """A loaded baseline document with what the statistics and drift need."""

    def __init__(self, doc: dict, path: str | None = None):
        if doc.get('format') != FORMAT:
            raise BeammlError(f'{path or "baseline"} is not a beamml baseline '
                              f'(format {doc.get("format")!r}, expected {FORMAT!r})')
        self.doc, self.path = doc, path
        self.kind = doc.get('kind', 'points')   # 'logs': a prediction logs baseline
        self.names = list(doc['names'])
        self.with_model = 'distance' in doc
        if self.kind == 'logs':
            self.edges, self.columns = None, []
        else:
            self.edges = baseline_edges(doc)
            self.columns = _columns(doc)

    @property
    def column_names(self) -> list[str]:
        return self.names + [self.doc['norm_name']] + (['distance'] if self.with_model else [])


def load_baseline(path: str) -> Baseline:
    """A baseline.json, or a folder (a model version, a baseline's own folder) holding
    one, or a model directory (its LATEST version's). None found: a BeammlError naming
    the places looked at (the caller says how to make one)."""
    from beamml.transforms.model import latest_version
    candidates = [path] if path.endswith('.json') else [join(path, BASELINE_FILE)]
    if not path.endswith('.json'):
        try:
            candidates.append(join(path, latest_version(path), BASELINE_FILE))
        except Exception:
            pass
    for c in candidates:
        if exists(c):
            try:
                return Baseline(read_json(c), c)
            except (ValueError, KeyError) as e:
                if isinstance(e, BeammlError):
                    raise
                raise BeammlError(f'baseline {c} is corrupt or incomplete: {e}') from e
    raise BeammlError(f'no baseline at {path}: looked for {", ".join(candidates)}',
                      parameters=())


def write_baseline(path: str, doc: dict) -> str:
    return write_json(path, doc, indent=1)
