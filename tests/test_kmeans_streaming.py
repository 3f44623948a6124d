"""Streaming K-means (Spark MLlib StreamingKMeans semantics): the kernel, the Beam transform on
a TestStream, and the model versions the streaming pipeline writes."""
from __future__ import annotations

import argparse
import json
import math
import os
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms import window

from beamml.pipelines.kmeans import streaming as ks
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.kmeans.seeding_kernels import kmeans_plusplus
from beamml.transforms.kmeans.streaming import StreamingKMeans
from beamml.transforms.kmeans.streaming_kernels import (decay_from_half_life, empty_updates,
                                                        streaming_step, streaming_update)
from beamml.transforms.model import CentroidModel, list_versions, latest_version


# ----------------------------------------------------------------------------- the reference

def spark_rule(C, n, X, a, unit, w=None):
    """Spark's documented rule, written plainly: nearest centre by brute force,
    c' = (c n a + x m) / (n a + m) and n' = n a + m for a cluster with m new points
    (every weight discounted), then the dying-cluster split."""
    C = np.array(C, dtype=float)
    n = np.array(n, dtype=float)
    k = len(C)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=float)
    disc = a if unit == 'batches' else a ** w.sum()
    n = n * disc
    if len(X):
        lab = ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            sel = lab == j
            m = w[sel].sum()
            if m > 0:
                x = (X[sel] * w[sel, None]).sum(0) / m
                C[j] = (C[j] * n[j] + x * m) / (n[j] + m)
                n[j] = n[j] + m
    big, small = int(np.argmax(n)), int(np.argmin(n))
    if n[small] < 1e-8 * n[big]:
        n[big] = n[small] = (n[big] + n[small]) / 2
        x = C[big].copy()
        p = 1e-14 * np.maximum(np.abs(x), 1)
        C[big], C[small] = x + p, x - p
    return C, n


BLOBS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]])


def blob_window(rng, sizes, centres=BLOBS, scale=0.5):
    parts = [c + scale * rng.standard_normal((m, centres.shape[1]))
             for c, m in zip(centres, sizes)]
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- the kernel

@pytest.mark.parametrize('unit', ['batches', 'points'])
@pytest.mark.parametrize('decay', [1.0, 0.7, 0.0])
def test_kernel_is_spark_rule_over_windows(unit, decay):
    rng = np.random.default_rng(1)
    C = BLOBS + rng.standard_normal(BLOBS.shape)
    n = np.array([4.0, 0.5, 12.0])
    C_ref, n_ref = C.copy(), n.copy()
    # 0.7 ** 40 points underflows nothing; 'points' with decay 0.7 forgets fast
    for t in range(6):
        X = blob_window(rng, [int(rng.integers(1, 15)) for _ in range(3)])
        C, n = streaming_update(C, n, X, decay_factor=decay, time_unit=unit)
        C_ref, n_ref = spark_rule(C_ref, n_ref, X, decay, unit)
        np.testing.assert_allclose(C, C_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(n, n_ref, rtol=1e-12, atol=1e-300)


def test_decay_one_is_the_cumulative_mean_and_decay_zero_the_last_window():
    rng = np.random.default_rng(2)
    windows = [blob_window(rng, [5, 7, 3]) for _ in range(4)]
    C1, n1 = BLOBS.copy(), np.zeros(3)
    C0, n0 = BLOBS.copy(), np.zeros(3)
    for X in windows:
        C1, n1 = streaming_update(C1, n1, X, decay_factor=1.0)
        C0, n0 = streaming_update(C0, n0, X, decay_factor=0.0)
    allX = np.concatenate(windows)
    lab = ((allX[:, None] - BLOBS[None]) ** 2).sum(-1).argmin(1)
    for j in range(3):
        np.testing.assert_allclose(C1[j], allX[lab == j].mean(0), rtol=1e-12)
    assert n1.tolist() == [20.0, 28.0, 12.0]
    last = windows[-1]
    lab = ((last[:, None] - BLOBS[None]) ** 2).sum(-1).argmin(1)
    for j in range(3):
        np.testing.assert_allclose(C0[j], last[lab == j].mean(0), rtol=1e-12)
    assert n0.tolist() == [5.0, 7.0, 3.0]


def test_half_life_halves_the_weight():
    a = decay_from_half_life(4)
    assert math.isclose(a ** 4, 0.5, rel_tol=1e-14)
    C, n, splits = empty_updates(BLOBS, [8.0, 2.0, 4.0], 4, decay_factor=a)
    np.testing.assert_allclose(n, [4.0, 1.0, 2.0], rtol=1e-14)
    np.testing.assert_array_equal(C, BLOBS)
    assert splits == 0
    # in points: the discount of a window of 4 points is a ** 4
    X = np.array([[0.1, 0, 0], [0, 0.1, 0], [-0.1, 0, 0], [0, -0.1, 0]])
    _, n = streaming_update(BLOBS, [8.0, 2.0, 4.0], X, decay_factor=a, time_unit='points')
    np.testing.assert_allclose(n, [4.0 + 4, 1.0, 2.0], rtol=1e-14)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(BeammlError, match='half_life'):
            decay_from_half_life(bad)


def test_clusters_without_points_are_discounted_too():
    X = np.array([[0.1, 0.0, 0.0]])
    C, n = streaming_update(BLOBS, [2.0, 2.0, 2.0], X, decay_factor=0.5)
    assert n.tolist() == [2.0, 1.0, 1.0]
    np.testing.assert_array_equal(C[1:], BLOBS[1:])
    np.testing.assert_allclose(C[0], [0.1 / 2, 0, 0])


def test_dying_cluster_is_split_off_the_largest():
    # cluster 2 never gets a point and has weight 0: it dies at once
    X = np.array([[0.5, -2.0, 1e3], [9.0, 1.0, 0.0], [10.0, 1.0, 0.0], [11.0, 1.0, 0.0]])
    C0 = np.array([[0.0, 0.0, 1e3], [10.0, 0.0, 0.0], [-50.0, -50.0, -50.0]])
    step = streaming_step(C0, [1.0, 1.0, 0.0], X, decay_factor=1.0)
    C_ref, n_ref = spark_rule(C0, [1.0, 1.0, 0.0], X, 1.0, 'batches')
    assert step.split == (1, 2)
    assert step.weights.tolist() == [2.0, 2.0, 2.0]          # (4 + 0) / 2 each
    x = np.array([10.0, 0.75, 0.0])                            # (10 + 3 * 10) / 4, (0 + 3) / 4
    np.testing.assert_allclose(C_ref[1], x + 1e-14 * np.maximum(np.abs(x), 1))
    np.testing.assert_array_equal(step.centers, C_ref)
    np.testing.assert_array_equal(step.weights, n_ref)
    assert step.centers[1, 0] > step.centers[2, 0]              # largest + p, dying - p
    assert step.counts.tolist() == [1, 3, 0]


def test_kernel_with_several_dying_clusters_and_empty_windows():
    rng = np.random.default_rng(3)
    C = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 5], [100, 100, 100], [-100, 0, 0]])
    n = np.zeros(5)
    C_ref, n_ref = C.copy(), n.copy()
    for t in range(5):
        X = blob_window(rng, [6, 4, 5])
        C, n = streaming_update(C, n, X, decay_factor=0.9)
        C_ref, n_ref = spark_rule(C_ref, n_ref, X, 0.9, 'batches')
        np.testing.assert_allclose(C, C_ref, rtol=1e-12)
        np.testing.assert_allclose(n, n_ref, rtol=1e-12)
    # empty windows: one by one (Spark's empty batches) vs empty_updates' shortcut
    C_e, n_e = C_ref.copy(), n_ref.copy()
    for _ in range(30):
        C_e, n_e = spark_rule(C_e, n_e, np.empty((0, 3)), 0.9, 'batches')
    C_s, n_s, _ = empty_updates(C, n, 30, decay_factor=0.9)
    np.testing.assert_allclose(C_s, C_e, rtol=1e-12)
    np.testing.assert_allclose(n_s, n_e, rtol=1e-12)


def test_kernel_leaves_its_inputs_and_weights_repeat_rows():
    rng = np.random.default_rng(4)
    X = blob_window(rng, [3, 4, 5])
    reps = rng.integers(0, 4, len(X))
    C, n = BLOBS.copy(), np.array([1.0, 2.0, 3.0])
    Cw, nw = streaming_update(C, n, X, decay_factor=0.8, time_unit='points',
                              sample_weight=reps.astype(float))
    Cr, nr = streaming_update(C, n, np.repeat(X, reps, axis=0), decay_factor=0.8,
                              time_unit='points')
    np.testing.assert_allclose(Cw, Cr, rtol=1e-12)
    np.testing.assert_allclose(nw, nr, rtol=1e-12)
    np.testing.assert_array_equal(C, BLOBS)
    assert n.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(BeammlError, match='decay_factor'):
        streaming_update(C, n, X, decay_factor=1.5)
    with pytest.raises(BeammlError, match='time_unit'):
        streaming_update(C, n, X, decay_factor=0.5, time_unit='seconds')


def test_converges_on_a_stationary_stream_and_follows_moving_blobs():
    rng = np.random.default_rng(5)
    first = blob_window(rng, [30, 30, 30])
    C, _ = kmeans_plusplus(first, 3, random_state=0)
    n = np.zeros(3)
    for t in range(30):
        C, n = streaming_update(C, n, blob_window(rng, [30, 30, 30]), decay_factor=1.0)
    order = np.argsort(C[:, 0] + 2 * C[:, 1])
    np.testing.assert_allclose(C[order], BLOBS[np.argsort(BLOBS[:, 0] + 2 * BLOBS[:, 1])],
                               atol=0.05)
    # the blobs drift by 0.5 per window: with decay 0.5 the centres follow them,
    # with decay 1 they lag behind the running mean
    C_f, n_f, C_1, n_1 = C.copy(), n.copy(), C.copy(), n.copy()
    shift = np.array([0.5, 0.0, 0.0])
    for t in range(1, 21):
        X = blob_window(rng, [30, 30, 30], centres=BLOBS + t * shift, scale=0.3)
        C_f, n_f = streaming_update(C_f, n_f, X, decay_factor=0.5)
        C_1, n_1 = streaming_update(C_1, n_1, X, decay_factor=1.0)
    target = BLOBS + 20 * shift
    lag_f = np.abs(np.sort(C_f[:, 0]) - np.sort(target[:, 0])).max()
    lag_1 = np.abs(np.sort(C_1[:, 0]) - np.sort(target[:, 0])).max()
    assert lag_f < 0.8 < 4.0 < lag_1


# ----------------------------------------------------------------------------- Beam

def points_batch(X, ids, weights=None):
    d = X.shape[1]
    cols = {'id': pa.array(ids, pa.int64()),
            'features': pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(X).ravel(), pa.float64()), d)}
    if weights is not None:
        cols['weight'] = pa.array(weights, pa.float64())
    return pa.RecordBatch.from_pydict(cols)


def streaming_options():
    opts = PipelineOptions([], runner='BundleBasedDirectRunner')
    opts.view_as(StandardOptions).streaming = True
    return opts


_OUT: dict[str, list] = {}


class _Collect(beam.DoFn):
    def __init__(self, key):
        self.key = key

    def process(self, x):
        _OUT.setdefault(self.key, []).append(x)


def collect(pcoll, label):
    key = uuid.uuid4().hex
    pcoll | label >> beam.ParDo(_Collect(key))
    return key


def stream_of(windows, size=10.0, late=None):
    """A TestStream of points batches: windows = {window index: [batch, ...]}, each batch
    stamped inside its window; the watermark passes each window's end in turn."""
    ts = test_stream.TestStream().advance_watermark_to(0)
    for i in sorted(windows):
        for j, b in enumerate(windows[i]):
            ts = ts.add_elements([window.TimestampedValue(b, i * size + 1 + j)])
        ts = ts.advance_watermark_to((i + 1) * size + 0.5)
        if late is not None and i == late[0]:
            ts = ts.add_elements([window.TimestampedValue(late[1], 2.0)])
    return ts.advance_watermark_to_infinity()


def _windows(rng, n_windows, skip=()):
    out, ids = {}, 0
    for i in range(n_windows):
        if i in skip:
            continue
        X = blob_window(rng, [int(rng.integers(2, 9)) for _ in range(3)])
        half = len(X) // 2
        out[i] = [points_batch(X[:half], range(ids, ids + half)),
                  points_batch(X[half:], range(ids + half, ids + len(X)))]
        ids += len(X)
    return out


def test_teststream_updates_equal_the_rule_window_by_window():
    rng = np.random.default_rng(6)
    wins = _windows(rng, 5, skip=(2,))       # window 2 is empty: a discount-only batch
    late = points_batch(np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]), [900, 901])
    C0 = BLOBS + np.array([[1.0, 1, 0], [-1, 0, 1], [0, -1, 1]])
    n0 = [1.0, 2.0, 0.5]
    with beam.Pipeline(options=streaming_options()) as p:
        res = (p | stream_of(wins, late=(1, late))
               | beam.WindowInto(window.FixedWindows(10))
               | StreamingKMeans(init=C0, initial_weights=n0, decay_factor=0.6))
        k_up, k_err = collect(res.updates, 'Updates'), collect(res.errors, 'Errors')
    updates = _OUT.pop(k_up)
    assert [u.window_start.micros // 10**6 for u in updates] == [0, 10, 30, 40]
    C, n = C0.copy(), np.array(n0)
    for u, i in zip(updates, [0, 1, 3, 4]):
        if i == 3:   # the empty window 2 first
            C, n = spark_rule(C, n, np.empty((0, 3)), 0.6, 'batches')
            assert u.empty_windows == 1
        X = np.concatenate([b.column('features').flatten().to_numpy().reshape(-1, 3)
                            for b in wins[i]])
        C, n = spark_rule(C, n, X, 0.6, 'batches')
        np.testing.assert_allclose(u.centers, C, rtol=1e-12)
        np.testing.assert_allclose(u.weights, n, rtol=1e-12)
        assert u.n_points == len(X)
    assert [u.n_updates for u in updates] == [1, 2, 3, 4]
    assert updates[-1].n_points_total == sum(sum(b.num_rows for b in v) for v in wins.values())
    errors = _OUT.pop(k_err)
    assert [e['record']['id'] for e in errors] == [900, 901]
    assert all(e['reason'].startswith('late: window [1970-01-01T00:00:00.000Z') for e in errors)
    assert errors[0]['record']['features'] == [0.0, 0.0, 0.0]


def test_teststream_kmeanspp_seeds_on_the_first_window():
    rng = np.random.default_rng(7)
    wins = _windows(rng, 3)
    with beam.Pipeline(options=streaming_options()) as p:
        res = (p | stream_of(wins) | beam.WindowInto(window.FixedWindows(10))
               | StreamingKMeans(3, random_state=11, time_unit='points', half_life=40))
        key = collect(res.updates, 'Updates')
    updates = _OUT.pop(key)
    a = decay_from_half_life(40)
    Xs = [np.concatenate([b.column('features').flatten().to_numpy().reshape(-1, 3)
                          for b in wins[i]]) for i in range(3)]
    C, _ = kmeans_plusplus(Xs[0], 3, random_state=11)
    n = np.zeros(3)
    assert [u.seeded for u in updates] == [True, False, False]
    for u, X in zip(updates, Xs):
        C, n = spark_rule(C, n, X, a, 'points')
        np.testing.assert_allclose(u.centers, C, rtol=1e-12)
        np.testing.assert_allclose(u.weights, n, rtol=1e-12)


def _args(model_dir, **kw):
    parser = argparse.ArgumentParser()
    ks.add_streaming_args(parser)
    args = parser.parse_args([])
    args.model, args.k, args.init, args.random_state = model_dir, 3, 'k-means++', 5
    for name, value in kw.items():
        setattr(args, name, value)
    return args


def test_pipeline_writes_a_version_per_checkpoint_and_moves_latest(tmp_path):
    rng = np.random.default_rng(8)
    wins = _windows(rng, 5)
    model_dir = str(tmp_path / 'models')
    args = _args(model_dir, decay_factor=0.5, checkpoint_windows=2)
    with beam.Pipeline(options=streaming_options()) as p:
        batches = p | stream_of(wins) | beam.WindowInto(window.FixedWindows(10))
        out = ks.build_streaming(p, args, batches, dimension=3)
        k_up = collect(out['updates'], 'Updates')
        k_v = collect(out['versions'], 'Versions')
    updates = _OUT.pop(k_up)
    written = _OUT.pop(k_v)
    versions = list_versions(model_dir)
    assert len(versions) == 2 == len(written)
    assert versions == [f'{out["run_id"]}-u00000002', f'{out["run_id"]}-u00000004']
    assert latest_version(model_dir) == versions[-1]
    model = CentroidModel.load(model_dir)
    np.testing.assert_array_equal(model.centers, updates[3].centers)
    cfg = model.config
    assert cfg['algorithm'] == ks.ALGORITHM and cfg['decay_factor'] == 0.5
    assert cfg['window_end'] == '1970-01-01T00:00:40.000Z' and cfg['window_seconds'] == 10.0
    assert cfg['n_points_total'] == sum(u.n_points for u in updates[:4])
    assert cfg['cluster_weights'] == updates[3].weights.tolist()
    assert cfg['random_state'] == 5 and model.n_iter == 4
    # a new stream resuming from it keeps the weights and counts
    start = ks.initial_model(_args(model_dir, init=model_dir, k=None))
    assert start['initial_weights'] == cfg['cluster_weights']
    assert start['points_before'] == cfg['n_points_total'] and start['updates_before'] == 4
    np.testing.assert_array_equal(start['init'], model.centers)
    with open(os.path.join(model_dir, versions[0], 'model.json')) as f:
        assert json.load(f)['config']['n_updates'] == 2


def test_latest_never_moves_back(tmp_path):
    from beamml.pipelines.kmeans.streaming import _WriteVersionFn
    from beamml.transforms.kmeans.streaming import ModelUpdate
    from apache_beam.utils.timestamp import Timestamp

    class State:
        def __init__(self):
            self.value = None

        def read(self):
            return self.value

        def write(self, v):
            self.value = v

    def update(i):
        return ModelUpdate(Timestamp(10 * i), Timestamp(10 * i + 10), BLOBS + i, np.ones(3),
                           5, 5 * i, i, np.array([1, 2, 2]), 0.0, 0, None, False)

    model_dir = str(tmp_path)
    fn = _WriteVersionFn(model_dir, 'R', 1, {}, None)
    state = State()
    list(fn.process((0, update(2)), newest=state))
    list(fn.process((0, update(1)), newest=state))     # an older update, late
    assert latest_version(model_dir) == 'R-u00000002'
    assert list_versions(model_dir) == ['R-u00000001', 'R-u00000002']
    list(fn.process((0, update(2)), newest=State()))   # a retry: no error, same version
    assert latest_version(model_dir) == 'R-u00000002'


@pytest.mark.parametrize('argv, message', [
    (['--decay_factor', '1.5'], "--decay_factor: '1.5' is not a fraction between 0 and 1"),
    (['--decay_factor', 'nan'], "--decay_factor: 'nan' is not a fraction"),
    (['--decay_factor', '-0.1'], "--decay_factor: '-0.1' is not a fraction"),
    (['--half_life', '0'], "--half_life: '0' is not a number > 0"),
    (['--half_life', '-2'], "--half_life: '-2' is not a number > 0"),
    (['--half_life', 'inf'], "--half_life: 'inf' is not a number > 0"),
    (['--decay_factor', '0.5', '--half_life', '3'], 'not both'),
    (['--checkpoint_windows', '0'], "--checkpoint_windows: '0' is not an integer >= 1"),
])
def test_flag_validation(argv, message):
    from beamml.pipelines._platform.cli import _Parser
    parser = _Parser(prog='beamml kmeans')   # a usage error is one line, as in the CLI
    ks.add_streaming_args(parser)
    with pytest.raises(BeammlError, match=message) as e:
        ks.streaming_decay(parser.parse_args(argv))
    assert '\n' not in str(e.value)


def test_flag_defaults_and_init_refusals(tmp_path):
    args = _args(str(tmp_path))
    assert ks.streaming_decay(args) == 1.0 and args.time_unit == 'batches'
    assert args.checkpoint_windows == 1
    assert ks.streaming_decay(_args(str(tmp_path), half_life=2.0)) == pytest.approx(0.5 ** 0.5)
    for init in ('k-means||', 'random'):
        with pytest.raises(BeammlError, match='batch seeding'):
            ks.initial_model(_args(str(tmp_path), init=init))
    with pytest.raises(BeammlError, match='--k is required'):
        ks.initial_model(_args(str(tmp_path), k=None))
    np.save(tmp_path / 'c.npy', BLOBS)
    start = ks.initial_model(_args(str(tmp_path), k=None, init=str(tmp_path / 'c.npy')))
    assert start['n_clusters'] == 3 and start['initial_weights'] == 0.0
    with pytest.raises(BeammlError, match='features'):
        ks.initial_model(_args(str(tmp_path), init=str(tmp_path / 'c.npy')), dimension=4)
    with pytest.raises(BeammlError, match='Euclidean'):
        ks.initial_model(_args(str(tmp_path), distance='cosine'))


def test_windows_arriving_out_of_order_are_applied_in_window_order():
    """Batches of later windows arrive first; a window is applied only once the
    watermark passed its end, so its batches arriving after an earlier window's
    update still count."""
    rng = np.random.default_rng(9)
    wins = _windows(rng, 3)
    ts = (test_stream.TestStream().advance_watermark_to(0)
          .add_elements([window.TimestampedValue(wins[2][0], 21),
                         window.TimestampedValue(wins[1][0], 11),
                         window.TimestampedValue(wins[0][1], 2)])
          .add_elements([window.TimestampedValue(wins[0][0], 1)])
          .advance_watermark_to(10.5)
          .add_elements([window.TimestampedValue(wins[1][1], 12),
                         window.TimestampedValue(wins[2][1], 22)])
          .advance_watermark_to_infinity())
    with beam.Pipeline(options=streaming_options()) as p:
        res = (p | ts | beam.WindowInto(window.FixedWindows(10))
               | StreamingKMeans(init=BLOBS, decay_factor=0.8))
        k_up, k_err = collect(res.updates, 'Updates'), collect(res.errors, 'Errors')
    updates = _OUT.pop(k_up)
    assert _OUT.pop(k_err, []) == []
    assert [u.window_start.micros // 10**6 for u in updates] == [0, 10, 20]
    C, n = BLOBS.copy(), np.zeros(3)
    for u, i in zip(updates, range(3)):
        # batch order within a window does not matter up to rounding
        X = np.concatenate([b.column('features').flatten().to_numpy().reshape(-1, 3)
                            for b in wins[i]])
        C, n = spark_rule(C, n, X, 0.8, 'batches')
        np.testing.assert_allclose(u.centers, C, rtol=1e-12)
        assert u.n_points == len(X)


def test_held_windows_lateness_weights_and_counters():
    """Fewer than k points in the first window: it is held, seeds come from the first k
    points, then each held window is its own update; a point within allowed_lateness
    counts, one later is a dead letter moved from records_ok to records_refused;
    a weight column weighs the points."""
    rng = np.random.default_rng(10)
    X0 = BLOBS[:2] + 0.1
    X1 = blob_window(rng, [4, 4, 4])
    w0, w1 = np.array([1.0, 2.0]), rng.integers(0, 3, len(X1)).astype(float)
    b0 = points_batch(X0, [0, 1], w0)
    b1a, b1b = points_batch(X1[:6], range(2, 8), w1[:6]), points_batch(X1[6:], range(8, 14),
                                                                       w1[6:])
    X2 = blob_window(rng, [2, 2, 2])
    b2 = points_batch(X2, range(14, 20), np.ones(6))
    too_late = points_batch(np.array([[1.0, 1.0, 1.0]]), [99], [1.0])
    ts = (test_stream.TestStream().advance_watermark_to(0)
          .add_elements([window.TimestampedValue(b0, 1)])
          .advance_watermark_to(12)
          .add_elements([window.TimestampedValue(b1a, 11)])
          .advance_watermark_to(23)                      # window 1 ended 3 s ago: within 5 s
          .add_elements([window.TimestampedValue(b1b, 15), window.TimestampedValue(b2, 21)])
          .advance_watermark_to(40)
          .add_elements([window.TimestampedValue(too_late, 19)])
          .advance_watermark_to_infinity())
    p = beam.Pipeline(options=streaming_options())
    res = (p | ts | beam.WindowInto(window.FixedWindows(10))
           | StreamingKMeans(3, random_state=3, allowed_lateness=5, decay_factor=0.9))
    k_up, k_err = collect(res.updates, 'Updates'), collect(res.errors, 'Errors')
    p.run().wait_until_finish()
    updates, errors = _OUT.pop(k_up), _OUT.pop(k_err)
    assert [u.window_start.micros // 10**6 for u in updates] == [0, 10, 20]
    assert [u.seeded for u in updates] == [True, True, False]
    pool = np.concatenate([X0, X1])
    C, _ = kmeans_plusplus(pool, 3, sample_weight=np.concatenate([w0, w1]), random_state=3)
    n = np.zeros(3)
    for u, X, w in zip(updates, [X0, X1, X2], [w0, w1, np.ones(6)]):
        C, n = spark_rule(C, n, X, 0.9, 'batches', w)
        np.testing.assert_allclose(u.centers, C, rtol=1e-12)
        np.testing.assert_allclose(u.weights, n, rtol=1e-12)
    assert [e['record']['id'] for e in errors] == [99]
    assert errors[0]['record']['weight'] == 1.0 and errors[0]['file'] is None
    # (the counters: test_late_letters_are_counted; this runner reports only the
    # counters of a TestStream's first elements)


def test_late_letters_are_counted():
    from apache_beam.utils.timestamp import Timestamp
    from beamml.transforms.kmeans.streaming import _LateLettersFn
    batch = points_batch(np.ones((3, 2)), [7, 8, 9]).append_column(
        '_file', pa.array(['a.csv'] * 3).dictionary_encode()).append_column(
        '_row', pa.array([4, 5, 6], pa.int64())).append_column(
        '_line', pa.array([6, 7, 8], pa.int64()))
    p = beam.Pipeline(runner='FnApiRunner')
    letters = (p | beam.Create([(Timestamp(0), Timestamp(10), batch)])
               | beam.ParDo(_LateLettersFn()))
    key = collect(letters, 'Letters')
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()['counters']}
    assert counters == {'records_ok': -3, 'records_refused': 3}
    letters = sorted(_OUT.pop(key), key=lambda e: e['row'])
    assert [(e['file'], e['row'], e['line']) for e in letters] == [
        ('a.csv', 4, 6), ('a.csv', 5, 7), ('a.csv', 6, 8)]
    assert letters[0]['record'] == {'id': 7, 'features': [1.0, 1.0]}


def test_cli_dead_letters_are_where_it_says(tmp_path, capsys):
    """``beamml kmeans --streaming`` on a watched folder prints a dead-letter glob that
    matches the files it wrote (``<run>-<start>-<end>-pane-<i>-<timing>.jsonl``)."""
    import glob
    import json
    from beamml.pipelines.__main__ import main
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.jsonl').write_text(
        '{"id": 1, "features": [0, 0]}\n{"id": 2, "features": [5, 5]}\n'
        '{"id": 3, "features": [0, 1]}\n{"id": 4, "features": ["x", 1]}\n')
    models = str(tmp_path / 'models')
    assert main(['kmeans', '--streaming', '--k', '2', '--dimension', '2', '--input',
                 str(tmp_path / 'in' / '*.jsonl'), '--watch_interval', '0.5', '--window_size',
                 '2', '--model', models, '--stop_after', '3']) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith('dead letters: ')]
    files = glob.glob(line[len('dead letters: '):])
    assert files, (line, os.listdir(os.path.join(models, '_streaming')))
    letters = [json.loads(x) for f in files for x in open(f)]
    assert [(d['row'], d['line']) for d in letters] == [(3, 4)], letters
