"""HTML reports (transforms/report.py, pipelines/kmeans/report.py): the charts as XML
without a browser, then the pages rendered by headless Chromium (the marks counted in
the rendered DOM, the screenshots checked for drawn data), and the kmeans report of a
real CLI run."""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from report_helpers import (BROWSER, _captions, _check_charts_drawn, _checked, _chromium,
                            _marks, _no_data, _rendered_marks, _screenshot, _svg, decode_png,
                            needs_browser)

from beamml.pipelines import kmeans as kmeans_cli
from beamml.pipelines.kmeans import report as kmeans_report
from beamml.pipelines.monitor import report as monitor_report
from beamml.pipelines._platform.main import main_wrapper
from beamml.transforms import report as rp
from beamml.transforms.core.documents import read_text
from beamml.transforms.model import list_versions

HOSTILE = '<script>alert("x")</script> & \'q\''


# ---------------------------------------------------------------- charts, no browser
def test_histogram_pair_marks_the_nonzero_bins_with_overflow_at_the_ends():
    rng = np.random.default_rng(0)
    edges = np.linspace(-1, 1, 9)
    base, cur = rng.integers(0, 50, 10), rng.integers(0, 50, 10)
    base[[0, 3]] = 0
    root = _checked(rp.histogram_pair(edges, base, cur, 'f0'), 'histogram_pair',
                    int((base > 0).sum() + (cur > 0).sum()))
    texts = [e.text for e in root.iter() if e.text]
    assert 'below' in texts and 'above' in texts and 'baseline' in texts
    tips = [e.find('title').text for e in _marks(root)]
    assert any(t.startswith('current below') for t in tips) == bool(cur[0] > 0)
    # shares: bar heights proportional to count / total within a series
    heights = {t: float(e.get('height')) for e, t in zip(_marks(root), tips)}
    first = [h for t, h in heights.items() if t.startswith('baseline')]
    counts = base[base > 0]
    np.testing.assert_allclose(np.array(first) / max(first), counts / counts.max(), atol=0.02)


def test_histogram_pair_without_overflow_nan_counts_and_empty():
    edges = [0, 1, 2, 3]
    root = _checked(rp.histogram_pair(edges, [1, np.nan, 3], [0, 0, 0], 'x'),
                    'histogram_pair', 2)
    assert '1 count(s) skipped' in _captions(root)
    empty = _checked(rp.histogram_pair(edges, [0, 0, 0], [np.nan] * 3, 'x'), 'histogram_pair', 0)
    assert _no_data(empty)
    with pytest.raises(ValueError, match='4 edges need 3 or 5 counts'):
        rp.histogram_pair(edges, [1, 2], [1, 2], 'x')
    # all edges equal (a constant feature): still drawn
    _checked(rp.histogram_pair([5, 5], [10], [7], 'constant'), 'histogram_pair', 2)


def test_bars_with_thresholds_colours_the_bars_over_their_threshold():
    names = ['a', 'b', 'c', 'd', 'e']
    values = np.array([0.05, 0.3, np.nan, 0.1, 0.2])
    thr = [0.1, 0.1, 0.1, 0.1, None]
    root = _checked(rp.bars_with_thresholds(names, values, thr, 'PSI'), 'bars_with_thresholds',
                    4)
    over = [e for e in _marks(root) if 'over' in e.get('class').split()]
    assert [e.find('title').text.split(':')[0] for e in over] == ['b']   # 0.1 is not over
    assert len([e for e in root.iter() if e.get('class') == 'threshold']) == 3
    assert '1 value(s) skipped (NaN or infinite): c' in _captions(root)
    # one threshold for all; no threshold: no legend
    one = _svg(rp.bars_with_thresholds(names[:2], [1, 3], 2, 'x'))
    assert [e.find('title').text.split(':')[0] for e in _marks(one)
            if 'over' in e.get('class')] == ['b']
    plain = _checked(rp.bars_with_thresholds(['x'], [0], None, 'zero'), 'bars_with_thresholds',
                     1)
    assert not [e for e in plain.iter() if e.get('class') == 'legend']
    assert float(_marks(plain)[0].get('width')) >= 1   # a zero bar is still seen
    assert _no_data(_checked(rp.bars_with_thresholds(['a'], [np.nan], 1, 'x'),
                             'bars_with_thresholds', 0))
    assert _no_data(_checked(rp.bars_with_thresholds([], [], None, 'x'),
                             'bars_with_thresholds', 0))


def test_lines_one_mark_per_series_nan_and_log_axis():
    x = np.arange(1, 11)
    series = {'a': np.linspace(1, 2, 10), 'b': np.r_[np.nan, np.linspace(3, 4, 9)],
              'empty': [np.nan] * 10}
    root = _checked(rp.lines(x, series, 'shares', 'window', 'share'), 'lines', 2)
    assert '11 value(s) skipped' in _captions(root)
    legend = [e.text for e in root.iter() if e.text and e.text.endswith('(no data)')]
    assert legend == ['empty (no data)']
    # integer x: integer ticks only
    ticks = [e.text for e in root.find("g[@class='axes']") if e.tag == 'text'
             and e.get('text-anchor') == 'middle' and e.get('font-size') is None]
    assert ticks and all(t.isdigit() for t in ticks), ticks
    # log y: non-positive values are skipped; ticks are powers of ten
    log = _checked(rp.lines(x, {'inertia': 10.0 ** -x.astype(float) * np.r_[0, [1] * 9]},
                            'inertia', log_y=True), 'lines', 1)
    assert '1 value(s) skipped' in _captions(log)
    assert rp.spans_decades(10.0 ** -x) and not rp.spans_decades([5, 6, 7, 0, np.nan])
    # one point: a dot; a broken series: one path with two pen-downs
    _checked(rp.lines([0], {'a': [3.0]}, 'one'), 'lines', 1)
    gap = _marks(_svg(rp.lines(range(5), {'a': [1, 2, np.nan, 4, 5]}, 'gap')))[0]
    assert gap.get('d').count('M') == 2
    # categorical x (window names), all values equal
    _checked(rp.lines(['w1', 'w2', 'w3'], {'c0': [0.5] * 3, 'c1': [0.5] * 3}, 'flat'), 'lines', 2)
    assert _no_data(_checked(rp.lines([], {}, 'nothing'), 'lines', 0))


def test_scatter_samples_deterministically_and_marks_the_centres():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(12_000, 2))
    labels = rng.integers(0, 3, 12_000)
    centres = np.array([[0, 0], [1, 1], [np.nan, 2]])
    svg = rp.scatter(xy, labels, centres, 'pca', max_points=5000)
    root = _checked(svg, 'scatter', 5000 + 2)
    assert svg == rp.scatter(xy, labels, centres, 'pca', max_points=5000)   # deterministic
    cap = _captions(root)
    assert '5,000 of 12,000 points drawn (a fixed-seed random sample)' in cap
    assert '1 centre(s) skipped' in cap
    assert len([e for e in _marks(root) if 'centre' in e.get('class')]) == 2
    # points per colour = the labels of the sampled points
    keep = np.sort(np.random.default_rng(0).choice(12_000, 5000, replace=False))
    groups = [g for g in root.iter('g') if g.get('fill') in rp.PALETTE]
    assert [len(g) for g in groups] == np.bincount(labels[keep]).tolist()
    # small and degenerate inputs
    _checked(rp.scatter([[1, 1]], [0], None, 'one'), 'scatter', 1)
    same = _checked(rp.scatter(np.ones((10, 2)), np.zeros(10), [[1, 1]], 'same'), 'scatter', 11)
    assert '10 points drawn' in _captions(same)
    nan = _checked(rp.scatter([[np.nan, 1], [2, 3]], [0, 1], None, 'nan'), 'scatter', 1)
    assert '1 point(s) skipped' in _captions(nan)
    assert _no_data(_checked(rp.scatter(np.empty((0, 2)), [], None, 'empty'), 'scatter', 0))
    many = _svg(rp.scatter(rng.normal(size=(20, 2)), np.arange(20), None, 'k=20'))
    assert 'colours repeat every 8' in _captions(many)


def test_extreme_values_give_finite_coordinates():
    huge = [[1e308, -1e308], [-1e308, 1e308]]
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # no overflow, no invalid value
        charts = [rp.lines([1, 2], {'a': [-1e308, 1e308]}, 'huge'),
                  rp.scatter(huge, [0, 1], huge, 'huge'),
                  rp.bars_with_thresholds(['a', 'b'], [1e308, -1e308], 1e307, 'huge'),
                  rp.lines([1, 2, 3], {'a': [1e-300, 1, 1e300]}, 'log', log_y=True)]
    for svg in charts:
        coords = re.findall(r' (?:c?[xy]|width|height)="([^"]*)"', svg)
        assert coords and all(np.isfinite(float(c)) for c in coords)


def test_text_is_escaped_everywhere():
    charts = [rp.histogram_pair([0, 1], [1], [2], HOSTILE),
              rp.bars_with_thresholds([HOSTILE], [1], 0.5, HOSTILE, x_label=HOSTILE),
              rp.lines([HOSTILE, 'b'], {HOSTILE: [1, 2], 'b': [2, 1]}, HOSTILE, HOSTILE, HOSTILE),
              rp.scatter([[0, 1]], [0], [[0, 1]], HOSTILE, x_label=HOSTILE)]
    for svg in charts:
        assert '<script' not in svg
        root = _svg(svg)
        assert root.find('title').text == HOSTILE   # round-trips as text
    page = rp.Report(HOSTILE, HOSTILE).section(HOSTILE, HOSTILE).table(
        [{'a': HOSTILE, 'b': 1.5}], ['a', HOSTILE]).render()
    assert '<script' not in page and HOSTILE not in page
    assert page.count('&lt;script&gt;') == 7   # title, h1, subtitle, h2, text, th, td


def test_report_is_one_offline_document(tmp_path):
    rep = rp.Report('r').section('s', 'text').add(rp.lines([1, 2], {'a': [1, 2]}, 'l'))
    rep.table([(1, 'x'), (2, 'y')], ['n', 'name'])
    page = rep.render()
    assert page.startswith('<!DOCTYPE html>') and page.rstrip().endswith('</html>')
    for external in ('http:', 'https:', '//', 'src=', 'href', 'url(', '@import', '<script',
                     '<link'):
        assert external not in page.replace('<!DOCTYPE', ''), external
    assert '<figure><svg class="chart"' in page and '<td>2</td><td>y</td>' in page
    path = rep.write(str(tmp_path / 'report.html'))
    assert open(path, encoding='utf-8').read().count('<svg') == 1


def test_report_writes_to_cloud_storage(gcs_bucket):
    path = f'{gcs_bucket}/reports/report.html'
    rp.Report('on gs').add(rp.lines([1, 2], {'a': [1, 2]}, 'l')).write(path)
    assert 'data-chart="lines"' in read_text(path)


def _sign_aligned(A, B):
    """B's columns flipped to A's signs (principal axes are defined up to sign)."""
    s = np.sign(np.sum(A * B, axis=0))
    return B * np.where(s == 0, 1, s)


def test_kmeans_projection_is_the_samples_pca():
    """The plane of numpy's SVD of the centred sample (up to sign), its variance shares;
    one feature or one point: one axis."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 5)) * [5, 3, 1, 0.5, 0.1] + 1e3
    C = X[:3]
    X2, C2, explained, method = kmeans_report.projection(X, C)
    mean = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    np.testing.assert_allclose(np.abs(X2), np.abs((X - mean) @ vt[:2].T), atol=1e-8)
    np.testing.assert_allclose(np.abs(C2), np.abs((C - mean) @ vt[:2].T), atol=1e-8)
    np.testing.assert_allclose(explained, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-8)
    assert method == 'exact PCA (PCAModel)'
    one_col, _, ex, method = kmeans_report.projection(X[:, :1], C[:, :1])
    assert method == 'one axis' and not one_col[:, 1].any() and ex[0] == 1
    np.testing.assert_allclose(one_col[:, 0], X[:, 0] - X[:, 0].mean())
    assert not kmeans_report.projection(X[:1], C)[0].any()


def test_final_pass_samples_evenly_spaced_rows_of_the_whole_cache():
    """The report's sample comes from the final pass (it reads neither the cache nor the
    input for itself): evenly spaced rows of the cache files taken in order."""
    from beamml.pipelines.kmeans.final import sample_rows
    sizes = (700, 50, 1300)
    rows, n = sample_rows(sizes, 500)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    got = np.concatenate([r + lo for r, lo in zip(rows, offsets)])
    np.testing.assert_array_equal(got, np.linspace(0, 2050, 500, endpoint=False).astype(int))
    assert n == 500 and all(len(r) <= s for r, s in zip(rows, sizes))
    rows, n = sample_rows(sizes, 10_000)   # fewer points than asked: all
    assert n == 2050 and [r.tolist() for r in rows] == [list(range(s)) for s in sizes]
    assert sample_rows([], 10) == ([], 0)


# ---------------------------------------------------------------- a kmeans run
@pytest.fixture(scope='module')
def blobs(tmp_path_factory):
    rng = np.random.default_rng(11)
    centres = rng.normal(0, 8, (4, 5))
    X = np.concatenate([rng.normal(c, 1.0, (1500, 5)) for c in centres])
    X = X[rng.permutation(len(X))]
    folder = tmp_path_factory.mktemp('blobs')
    path = str(folder / 'points.parquet')
    pq.write_table(pa.table({'id': np.arange(len(X)), 'features': pa.FixedSizeListArray
                             .from_arrays(pa.array(X.ravel()), 5)}), path)
    return path, X


@pytest.fixture(scope='module')
def trained(blobs, tmp_path_factory):
    path, _ = blobs
    models = str(tmp_path_factory.mktemp('models'))
    model = kmeans_cli.run(['--input', path, '--k', '4', '--model', models, '--init',
                            'random', '--n_init', '2', '--random_state', '7',
                            '--block_size', '2'])
    return model, os.path.join(models, model.version, kmeans_report.REPORT_FILE)


@pytest.fixture(scope='module')
def monitored(blobs, trained, tmp_path_factory):
    """Two dated monitor runs against the kmeans model's baseline: the training points,
    then a copy shifted on two features (the second run's history holds the first)."""
    from beamml.pipelines import monitor
    path, X = blobs
    model, _ = trained
    models = os.path.dirname(os.path.dirname(trained[1]))
    d = tmp_path_factory.mktemp('monitored')
    shifted = X.copy()
    shifted[:, [1, 3]] += 2.0 * X[:, [1, 3]].std(axis=0)
    pq.write_table(pa.table({'id': np.arange(len(X)), 'features': pa.FixedSizeListArray
                             .from_arrays(pa.array(shifted.ravel()), 5)}),
                   str(d / 'shifted.parquet'))
    cfg = d / 'monitor.yaml'
    cfg.write_text(f"history: '{d}/runs/*/'\n")
    codes = [main_wrapper(monitor.run, ['--input', data, '--model', models, '--config', str(cfg),
                                        '--output', f'{d}/runs/{day}/'], prog='beamml monitor')
             for day, data in (('2026-11-21', path), ('2026-11-22', str(d / 'shifted.parquet')))]
    return codes, f'{d}/runs/2026-11-22/'


def test_monitor_writes_its_report(monitored):
    """Every chart of the page holds the run's data: PSI and JS against the thresholds
    (the shifted features over them), a histogram pair per feature (and the L2 norm), the
    cluster shares and distances, and the two windows' series."""
    codes, out = monitored
    assert codes == [0, 3]
    page = read_text(out + monitor_report.REPORT_FILE)
    data = json_load(out + 'report_data.json')
    charts = [_svg(svg) for svg in re.findall(r'<svg.*?</svg>', page, re.S)]
    kinds = [c.get('data-chart') for c in charts]
    n_features = len(data['features'])
    assert n_features == 6   # 5 features and the L2 norm
    assert kinds.count('bars_with_thresholds') == 2
    assert kinds.count('histogram_pair') == n_features + 2   # + clusters, distance
    assert kinds.count('lines') == 2
    for c in charts:
        assert int(c.get('data-marks')) == len(_marks(c)) > 0, c.get('data-chart')
    psi_bars = charts[kinds.index('bars_with_thresholds')]
    over = {f['name'] for f in data['features'] if f['psi']['alarm']}
    assert over >= {'features_1', 'features_3'}
    assert len([m for m in _marks(psi_bars) if 'over' in (m.get('class') or '')]) == len(over)
    assert all(a['metric'] in page for a in data['alarms'])


def test_kmeans_writes_its_report(trained, blobs):
    model, path = trained
    page = open(path, encoding='utf-8').read()
    charts = {c.get('data-chart'): c for c in map(_svg, re.findall(r'<svg.*?</svg>', page))}
    assert set(charts) == {'lines', 'bars_with_thresholds', 'scatter'}
    assert len(_marks(charts['lines'])) == 1
    path_d = _marks(charts['lines'])[0].get('d')
    assert path_d.count('L') == len(model.inertia_history) - 1
    bars = _marks(charts['bars_with_thresholds'])
    assert [int(b.find('title').text.split(': ')[1].replace(',', '')) for b in bars] \
        == model.cluster_sizes
    # every sampled point drawn (6000 points, 5000 kept evenly from the cache), 4 centres
    assert len(_marks(charts['scatter'])) == 5000 + 4
    assert '5,000 evenly spaced points of 6,000' in page and 'point cache' in page
    assert f'<td>{model.version}</td>' in page and f'<td>{model.n_iter}</td>' in page
    assert 'n_init' in page and '(kept run' in page


def test_kmeans_report_failure_never_fails_the_training(blobs, tmp_path, monkeypatch, capsys,
                                                        caplog):
    def broken(*a, **k):
        raise RuntimeError('disk full\nsecond line')
    monkeypatch.setattr(kmeans_report, 'kmeans_report', broken)
    with caplog.at_level(logging.WARNING, logger='beamml'):
        model = kmeans_cli.run(['--input', blobs[0], '--k', '3', '--model',
                                str(tmp_path), '--random_state', '1'])
    assert list_versions(str(tmp_path)) == [model.version]
    assert not os.path.exists(tmp_path / model.version / kmeans_report.REPORT_FILE)
    # this run's warnings: a thread an earlier test's stream left running in this
    # process (pytest-xdist) may log one of its own meanwhile
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.threadName == threading.current_thread().name]
    assert warnings == [f'kmeans {model.version}: no report written (RuntimeError: disk full)']
    assert 'report:' not in capsys.readouterr().out


# ---------------------------------------------------------------- in headless Chromium

@pytest.fixture(scope='module')
def every_kind_page(tmp_path_factory):
    rng = np.random.default_rng(2)
    rep = rp.Report('every chart kind')
    rep.section('Histograms').add(rp.histogram_pair(np.linspace(0, 1, 11),
                                                    rng.integers(1, 90, 12),
                                                    rng.integers(1, 90, 12), 'f0'))
    rep.section('Drift').add(rp.bars_with_thresholds(['f0', 'f1', 'f2'], [0.05, 0.3, 0.12],
                                                     0.1, 'PSI per feature'))
    rep.section('Shares').add(rp.lines(['w1', 'w2', 'w3', 'w4'],
                                       {'c0': [0.2, 0.3, 0.4, 0.3], 'c1': [0.8, 0.7, 0.6, 0.7]},
                                       'cluster shares', 'window', 'share'))
    rep.section('Points').add(rp.scatter(rng.normal(size=(300, 2)), rng.integers(0, 3, 300),
                                         [[0, 0], [1, 1], [-1, 1]], 'points'))
    rep.section('Empty').add(rp.scatter(np.empty((0, 2)), None, None, 'nothing'))
    path = tmp_path_factory.mktemp('page') / 'report.html'
    rep.write(str(path))
    return path


@needs_browser
def test_chromium_renders_every_mark_of_every_kind(every_kind_page, tmp_path):
    charts = _rendered_marks(tmp_path, every_kind_page)
    assert [c[0] for c in charts] == ['histogram_pair', 'bars_with_thresholds', 'lines',
                                      'scatter', 'scatter']
    for kind, declared, counted in charts[:-1]:
        assert declared > 0 and declared == counted, kind
    assert charts[-1][1:] == [0, 0]   # the empty chart declares none
    pixels = _check_charts_drawn(tmp_path, every_kind_page.read_text(encoding='utf-8'))
    assert min(pixels[:-1]) > 1000, pixels  # the data colours are on screen
    assert pixels[-1] < 100, pixels         # and not on the "no data" chart: the check can fail


@needs_browser
def test_chromium_renders_the_monitor_report(monitored, tmp_path):
    _, out = monitored
    path = out + monitor_report.REPORT_FILE
    charts = _rendered_marks(tmp_path, path)
    assert len(charts) == 12
    for kind, declared, counted in charts:
        assert declared > 0 and declared == counted, kind
    assert min(_check_charts_drawn(tmp_path, open(path, encoding='utf-8').read())) > 100


@needs_browser
def test_chromium_renders_the_kmeans_report(trained, tmp_path):
    _, path = trained
    charts = _rendered_marks(tmp_path, path)
    assert sorted(c[0] for c in charts) == ['bars_with_thresholds', 'lines', 'scatter']
    for kind, declared, counted in charts:
        assert declared > 0 and declared == counted, kind
    page = open(path, encoding='utf-8').read()
    assert min(_check_charts_drawn(tmp_path, page)) > 1000
    whole = _screenshot(tmp_path, path, 1000, 2200, 'whole')
    background = (np.abs(whole.astype(int) - 250).max(axis=-1) <= 5)   # #fafafa or white
    assert (~background).mean() > 0.03


@pytest.mark.skipif(BROWSER is None, reason='no browser made a PNG to decode')
def test_png_decoder_agrees_with_pillow(every_kind_page, tmp_path):
    PIL = pytest.importorskip('PIL.Image', reason='Pillow is not installed')
    png = tmp_path / 'page.png'
    _chromium(tmp_path, f'--screenshot={png}', '--window-size=800,700',
              'file://' + os.path.abspath(every_kind_page))
    with PIL.open(png) as im:
        expected = np.asarray(im.convert('RGB'))
    np.testing.assert_array_equal(decode_png(png.read_bytes())[:, :, :3], expected)


def json_load(path):
    return json.loads(read_text(path))
