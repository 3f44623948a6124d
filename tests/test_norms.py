"""Norm kernels, ComputeNorms, the distributed SortByNorm, and `beamml norms` end to end.

Oracles: numpy's own norms (np.linalg.norm, np.count_nonzero), math.hypot for
the L2 norm of huge or tiny values, and Python's sorted() over (key, id) tuples
for the order.
"""
from __future__ import annotations

import glob
import json
import math
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beamml.pipelines import norms as norms_pipeline
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import features_matrix, points_batch
from beamml.transforms.norms import NORMS, ComputeNorms, WriteSortedShards, all_row_norms, row_norms
from beamml.transforms.sorting import (SORT_KEY, SortByNorm, _SortSampleFn, lex_order,
                                       range_boundaries, shard_of, sort_keys)

ORD = {'l1': 1, 'l2': 2, 'linf': np.inf}


def numpy_norms(X):
    """The independent oracle: numpy's own norm functions."""
    X = np.asarray(X, dtype=np.float64)
    out = {'l0': np.count_nonzero(X, axis=1)}   # a count: int64
    for name, o in ORD.items():
        out[name] = (np.linalg.norm(X, ord=o, axis=1) if X.shape[1]
                     else np.zeros(X.shape[0]))
    return out


def oracle_norms(X):
    """numpy's norms, with the L2 norm from math.hypot (exact for huge or tiny values)."""
    with np.errstate(over='ignore'):
        out = numpy_norms(X)
    out['l2'] = np.array([math.hypot(*row) for row in np.asarray(X, dtype=np.float64)])
    return out


def sample_matrix(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 100.0, size=d)
    X[rng.random((n, d)) < 0.3] = 0.0          # zeros, so l0 varies
    X[rng.random((n, d)) < 0.2] *= -1          # negatives
    return X


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize('shape', [(200, 8), (1, 5), (50, 1), (0, 4), (7, 0), (40, 70),
                                   (30, 300)])
def test_kernels_match_numpy(shape):
    X = sample_matrix(*shape, seed=sum(shape))
    expected = numpy_norms(X)
    got = all_row_norms(X)
    assert set(got) == set(NORMS)
    for name in NORMS:
        dtype = np.int64 if name == 'l0' else np.float64
        assert got[name].shape == (shape[0],) and got[name].dtype == dtype
        assert row_norms(X, name).dtype == dtype
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(row_norms(X, name), expected[name], rtol=1e-12, atol=0,
                                   err_msg=name)
    np.testing.assert_array_equal(got['l0'], expected['l0'])  # exact: a count


def test_kernels_accept_lists_and_ints():
    np.testing.assert_array_equal(row_norms([[3, -4], [0, 0]], 'l2'), [5.0, 0.0])
    np.testing.assert_array_equal(row_norms([[3, -4], [0, 0]], 'l0'), [2.0, 0.0])


def test_l2_at_every_scale_equals_hypot_and_the_shared_abs_path():
    """Rows of every scale, around the thresholds where squares leave float64 (2^+-500,
    2^+-511), mixed huge and tiny entries, zeros, NaN and inf: row_norms (which computes
    the largest entry only of rows whose sum of squares is out of range) gives what
    all_row_norms (the largest entry of every row) gives, and hypot where finite."""
    rng = np.random.default_rng(3)
    exps = rng.choice([-1074, -1030, -540, -511, -500, -499, -300, 0, 300, 499, 500, 511, 540,
                       1000, 1023], size=(4000, 3))
    X = rng.uniform(0.5, 1.0, size=(4000, 3)) * np.exp2(exps.astype(float))
    X[rng.random((4000, 3)) < 0.3] = 0.0
    X[::7] *= -1
    X[1, 1], X[2, 0], X[3, 2] = np.nan, np.inf, -np.inf
    got = row_norms(X, 'l2')
    np.testing.assert_array_equal(got, all_row_norms(X)['l2'])
    ok = np.isfinite(X).all(axis=1)
    expected = np.array([math.hypot(*row) for row in X[ok]])
    np.testing.assert_allclose(got[ok], expected, rtol=1e-14)
    assert np.isnan(got[1]) and np.isinf(got[2]) and np.isinf(got[3])


def test_l2_does_not_overflow_or_underflow():
    # numpy's plain sqrt(sum x^2) overflows to inf here; beamml scales those rows.
    X = np.array([[1e300, 1e300, 0.0],
                  [-1e300, 3e299, 1.0],
                  [1e-300, 1e-300, 0.0],
                  [3e-170, -4e-170, 0.0],
                  [1e308, 1e308, 0.0],        # true norm 1.41e308 fits float64
                  [1.7e308, 1.7e308, 0.0],    # true norm exceeds float64: inf
                  [3.0, 4.0, 0.0]])
    expected = np.array([math.hypot(*row) for row in X])
    with np.errstate(over='ignore'):
        assert np.isinf(np.linalg.norm(X[0])), 'the oracle for this case is hypot, not numpy'
    got = row_norms(X, 'l2')
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert np.isinf(got[5])
    np.testing.assert_allclose(all_row_norms(X)['l2'], expected, rtol=1e-14)
    # the other norms are numpy's (l1 of the 1.7e308 row overflows, as the sum does)
    with np.errstate(over='ignore'):
        expected_l1 = np.abs(X).sum(axis=1)
    np.testing.assert_array_equal(all_row_norms(X)['l1'], expected_l1)
    np.testing.assert_array_equal(all_row_norms(X)['linf'], np.abs(X).max(axis=1))


def test_non_finite_values():
    X = np.array([[np.inf, 1.0], [np.nan, 0.0], [-np.inf, np.nan]])
    got = all_row_norms(X)
    np.testing.assert_array_equal(got['l0'], [2.0, 1.0, 2.0])
    # l0 of a row with NaN: NaN (and inf) count as non-zero, as in numpy; never NaN itself
    assert got['l0'].dtype == np.int64
    np.testing.assert_array_equal(got['l0'], np.count_nonzero(X, axis=1))
    np.testing.assert_array_equal(row_norms(X, 'l0'), [2, 1, 2])
    wide = np.zeros((2, 300))
    wide[0, :7] = np.nan
    wide[1, 5:] = -np.inf                          # the count_nonzero path (d >= 256)
    assert all_row_norms(wide)['l0'].dtype == np.int64
    np.testing.assert_array_equal(all_row_norms(wide)['l0'], [7, 295])
    assert np.isinf(got['l2'][0]) and np.isinf(got['l1'][0]) and np.isinf(got['linf'][0])
    for name in ('l1', 'l2', 'linf'):
        assert np.isnan(got[name][1]), name
        assert np.isnan(got[name][2]) or np.isinf(got[name][2]), name


def test_kernel_errors():
    with pytest.raises(ValueError, match='2-D'):
        row_norms(np.ones(3))
    with pytest.raises(ValueError, match='unknown norm'):
        row_norms(np.ones((2, 2)), 'l3')
    with pytest.raises(ValueError, match='2-D'):
        all_row_norms(np.ones((2, 2, 2)))


# ----------------------------------------------------------------------------- sort kernels

def _tuple_key(k, i):
    """Python order of (key, id) with NaN keys last: the oracle for the sort helpers."""
    return (math.isnan(k), 0.0 if math.isnan(k) else k, i)


@pytest.mark.parametrize('string_ids', [False, True])
def test_lex_order_and_shard_of_match_brute_force(string_ids):
    rng = np.random.default_rng(3)
    n = 400
    keys = rng.integers(0, 6, n).astype(np.float64)   # many ties
    keys[rng.random(n) < 0.05] = np.nan
    ids = rng.permutation(n)
    if string_ids:
        ids = np.array([f'p{i:04d}' for i in ids], dtype=object)
    order = lex_order(keys, ids)
    expected = sorted(range(n), key=lambda r: _tuple_key(keys[r], ids[r]))
    np.testing.assert_array_equal(order, expected)

    for num_shards in (1, 2, 5, 17):
        bk, bi = range_boundaries(keys[:100], ids[:100], num_shards)
        assert len(bk) == num_shards - 1
        bounds = [_tuple_key(k, i) for k, i in zip(bk, bi)]
        assert bounds == sorted(bounds)
        shard = shard_of(keys, ids, bk, bi)
        brute = [sum(b <= _tuple_key(keys[r], ids[r]) for b in bounds) for r in range(n)]
        np.testing.assert_array_equal(shard, brute)


def test_range_boundaries_empty_sample():
    bk, bi = range_boundaries(np.empty(0), np.empty(0, np.int64), 4)
    assert len(bk) == 0 and len(bi) == 0
    np.testing.assert_array_equal(shard_of(np.array([1.0]), np.array([3]), bk, bi), [0])


def test_sort_keys_direction():
    norms = np.array([1.0, 3.0, np.nan, 2.0])
    ids = np.arange(4)
    assert list(lex_order(sort_keys(norms, True), ids)) == [1, 3, 0, 2]
    assert list(lex_order(sort_keys(norms, False), ids)) == [0, 3, 1, 2]


def _keyed_batch(ids, keys):
    X = np.zeros((len(ids), 1))
    return points_batch(pa.array(ids, pa.int64()), X).append_column(SORT_KEY, pa.array(keys))


def test_sample_combinefn_add_merge_and_one_shot_agree():
    rng = np.random.default_rng(5)
    keys = rng.normal(size=3000)
    ids = np.arange(3000)
    fn = _SortSampleFn(num_shards=None, sample_size=500, rows_per_shard=1000)
    parts = [(0, 700), (700, 710), (710, 710), (710, 3000)]
    accs = []
    for lo, hi in parts:
        acc = fn.create_accumulator()
        accs.append(fn.add_input(acc, _keyed_batch(ids[lo:hi], keys[lo:hi])))
    merged = fn.merge_accumulators([fn.create_accumulator()] + accs + [fn.create_accumulator()])
    one_shot = fn.create_accumulator()
    for lo, hi in parts:
        one_shot = fn.add_input(one_shot, _keyed_batch(ids[lo:hi], keys[lo:hi]))
    for acc in (merged, one_shot):
        assert acc.num_rows == 3000
        assert len(acc.keys) == 500
        assert len(np.unique(acc.ids)) == 500                  # rows, not duplicates
        np.testing.assert_array_equal(acc.keys, keys[acc.ids])  # key travels with its id
    plan_a, plan_b = fn.extract_output(merged), fn.extract_output(one_shot)
    assert plan_a.num_shards == plan_b.num_shards == 3         # ceil(3000 / 1000)
    np.testing.assert_array_equal(plan_a.boundary_keys, plan_b.boundary_keys)
    # the sample is a fair one: boundaries near the true terciles
    true = np.quantile(keys, [1 / 3, 2 / 3])
    np.testing.assert_allclose(plan_a.boundary_keys, true, atol=0.25)
    empty = fn.extract_output(fn.merge_accumulators([fn.create_accumulator()] * 2))
    assert empty.num_rows == 0 and empty.num_shards == 1 and len(empty.boundary_keys) == 0


# ----------------------------------------------------------------------------- Beam

def make_batches(n, d, seed, n_batches=3, string_ids=False, ties=False, nan=False):
    rng = np.random.default_rng(seed)
    X = (rng.integers(-2, 3, size=(n, d)).astype(np.float64) if ties
         else sample_matrix(n, d, seed))
    if nan:  # as --allow_nan lets through: NaN norms sort last
        X[rng.random(n) < 0.05, 0] = np.nan
    ids = rng.permutation(n) * 3 + 1
    id_arr = (pa.array([f'id{i}' for i in ids]) if string_ids else pa.array(ids, pa.int64()))
    bounds = np.linspace(0, n, n_batches + 1).astype(int)
    return X, ids, [points_batch(id_arr.slice(lo, hi - lo), X[lo:hi])
                    for lo, hi in zip(bounds[:-1], bounds[1:])]


def test_compute_norms_in_pipeline():
    X, ids, batches = make_batches(300, 5, seed=11)
    expected = numpy_norms(X)
    by_id = {int(i): tuple(expected[k][r] for k in NORMS) for r, i in enumerate(ids)}

    def rows(batch):
        assert batch.schema.field('l0').type == pa.int64()
        out = []
        for r, i in enumerate(batch.column('id').to_pylist()):
            got = tuple(batch.column(k)[r].as_py() for k in NORMS)
            out.append((i, bool(np.allclose(got, by_id[i], rtol=1e-12))))
        return out

    with beam.Pipeline(runner='FnApiRunner') as p:
        out = (p | beam.Create(batches) | 'Norms' >> ComputeNorms()
               | beam.FlatMap(rows))
        assert_that(out, equal_to([(int(i), True) for i in ids]))


def check_sorted_shards(num_shards, expected_ids):
    """A checker for assert_that: shards 0..N-1 present, concatenated order == expected."""
    def check(shards):
        shards = sorted(shards, key=lambda s: s.index)
        assert [s.index for s in shards] == list(range(num_shards))
        assert {s.num_shards for s in shards} == {num_shards}
        got = [i for s in shards if s.table.num_rows for i in s.table.column('id').to_pylist()]
        assert got == list(expected_ids), 'order across and within shards'
        for s in shards:
            assert SORT_KEY not in s.table.column_names
    return check


@pytest.mark.parametrize('norm,descending,num_shards,string_ids,ties,nan', [
    ('l2', True, 1, False, False, False),
    ('l2', True, 4, False, False, True),
    ('l1', False, 3, False, True, True),
    ('l0', True, 5, True, True, False),
    ('linf', False, 2, True, False, False),
])
def test_sort_by_norm_order(norm, descending, num_shards, string_ids, ties, nan):
    X, ids, batches = make_batches(600, 4, seed=num_shards, string_ids=string_ids, ties=ties,
                                   nan=nan)
    norms = numpy_norms(X)[norm]
    assert np.isnan(norms).any() == nan
    id_values = [f'id{i}' for i in ids] if string_ids else [int(i) for i in ids]
    expected = [id_values[r] for r in sorted(range(len(ids)), key=lambda r: _tuple_key(
        -norms[r] if descending else norms[r], id_values[r]))]
    if norm == 'l1':  # this case reads the norm from a column, as the pipeline does
        batches = [b.append_column('l1', pa.array(row_norms(features_matrix(b), 'l1')))
                   for b in batches]
    with beam.Pipeline(runner='FnApiRunner') as p:
        shards = (p | beam.Create(batches)
                  | 'Sort' >> SortByNorm(norm, descending=descending, num_shards=num_shards,
                                         sample_size=64))
        assert_that(shards, check_sorted_shards(num_shards, expected))


def test_sort_by_norm_default_shards_and_balance():
    X, ids, batches = make_batches(1000, 3, seed=2, n_batches=4)
    norms = numpy_norms(X)['l2']
    expected = [int(ids[r]) for r in sorted(range(len(ids)), key=lambda r: (-norms[r], ids[r]))]

    def check(shards):
        check_sorted_shards(4, expected)(shards)
        sizes = [s.table.num_rows for s in shards]
        assert min(sizes) > 100, sizes   # sampled boundaries: roughly even shards

    with beam.Pipeline(runner='FnApiRunner') as p:
        shards = p | beam.Create(batches) | 'Sort' >> SortByNorm('l2', rows_per_shard=250)
        assert_that(shards, check)


def test_sort_by_norm_empty_input(tmp_path):
    with beam.Pipeline(runner='FnApiRunner') as p:
        shards = (p | beam.Create([], reshuffle=False).with_output_types(pa.RecordBatch)
                  | 'Sort' >> SortByNorm('l2', num_shards=3))
        assert_that(shards, check_sorted_shards(3, []), label='Check3')
        default = (p | 'Empty' >> beam.Create([]).with_output_types(pa.RecordBatch)
                   | 'SortDefault' >> SortByNorm('l2'))
        assert_that(default, check_sorted_shards(1, []), label='Check1')
        schema = pa.schema([('id', pa.int64()), ('features', pa.list_(pa.float64(), 2))])
        default | 'Write' >> WriteSortedShards(str(tmp_path / 'empty'), 'csv', schema=schema)
    files = sorted(glob.glob(str(tmp_path / 'empty-*')))
    assert [os.path.basename(f) for f in files] == ['empty-00000-of-00001.csv']
    assert pcsv.read_csv(files[0]).num_rows == 0


def test_sort_by_norm_rejects_bad_arguments():
    with pytest.raises(BeammlError, match='unknown norm'):
        SortByNorm('l3')
    with pytest.raises(BeammlError, match='num_shards') as e:
        SortByNorm('l2', num_shards=0)
    # a transform names its parameter; the command line words it as its flag
    assert '--' not in str(e.value)
    assert e.value.for_cli() == '--num_shards must be >= 1, got 0'
    with pytest.raises(BeammlError) as e:
        SortByNorm('l2', rows_per_shard=0)
    assert e.value.for_cli() == '--rows_per_shard must be >= 1, got 0'
    with pytest.raises(BeammlError, match="unknown output_format 'xml'") as e:
        WriteSortedShards('out', 'xml')
    assert e.value.for_cli().startswith("unknown --output_format 'xml'; one of parquet")


# ----------------------------------------------------------------------------- run([...])

def write_points(path, X, ids):
    cols = {'id': pa.array(ids, pa.int64())}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(X.shape[1])})
    pq.write_table(pa.table(cols), path)


def read_output(pattern, fmt):
    """The output files in name order, concatenated, as a Table (features as a matrix)."""
    files = sorted(glob.glob(pattern))
    assert files, pattern
    if fmt == 'parquet':
        tables = [pq.read_table(f) for f in files]
    elif fmt == 'csv':
        tables = [pcsv.read_csv(f) for f in files]
    else:
        tables = [pjson.read_json(f) for f in files if os.path.getsize(f)]
    return files, pa.concat_tables(tables, promote_options='permissive')


def features_of(table, fmt, d):
    if fmt == 'csv':
        return np.column_stack([table.column(f'features_{j}').to_numpy() for j in range(d)])
    return np.array(table.column('features').to_pylist(), dtype=np.float64).reshape(-1, d)


@pytest.fixture(scope='module')
def points_file(tmp_path_factory):
    d = tmp_path_factory.mktemp('points')
    X = sample_matrix(500, 6, seed=21)
    X[10] = 0.0
    X[11] = [1e300, -1e300, 0, 0, 0, 0]
    ids = np.random.default_rng(1).permutation(500).astype(np.int64)
    path = str(d / 'points.parquet')
    write_points(path, X, ids)
    return path, X, ids


@pytest.mark.parametrize('fmt', ['parquet', 'csv', 'jsonl'])
def test_run_norms(points_file, tmp_path, fmt, capsys):
    path, X, ids = points_file
    out = str(tmp_path / 'out' / 'norms')
    norms_pipeline.run(['--input', path, '--output', out, '--output_format', fmt])
    assert 'records_read=500 records_ok=500 records_refused=0' in capsys.readouterr().out
    _, table = read_output(f'{out}-?????-of-?????.{fmt}', fmt)
    assert table.column_names == ['id', 'l0', 'l1', 'l2', 'linf']
    assert table.schema.field('l0').type == pa.int64()   # written as integers in every format
    got_ids = table.column('id').to_numpy()
    assert sorted(got_ids) == sorted(ids)
    row = {int(i): r for r, i in enumerate(ids)}
    take = np.array([row[int(i)] for i in got_ids])
    expected = oracle_norms(X[take])
    for name in NORMS:
        np.testing.assert_allclose(table.column(name).to_numpy(), expected[name], rtol=1e-12)
    l2 = table.column('l2').to_numpy()
    assert l2[np.flatnonzero(got_ids == ids[11])[0]] == pytest.approx(math.sqrt(2) * 1e300)


@pytest.mark.parametrize('fmt,norm,ascending,num_shards', [
    ('parquet', 'l2', False, 3),
    ('csv', 'l0', True, 2),
    ('jsonl', 'linf', False, None),
])
def test_run_sorted(points_file, tmp_path, fmt, norm, ascending, num_shards):
    path, X, ids = points_file
    out = str(tmp_path / 'sorted')
    argv = ['--input', path, '--output', out, '--output_format', fmt, '--order', norm]
    argv += ['--ascending'] if ascending else []
    argv += ['--num_shards', str(num_shards)] if num_shards else []
    norms_pipeline.run(argv)
    files, table = read_output(f'{out}-?????-of-?????.{fmt}', fmt)
    n_files = num_shards or 1
    assert [os.path.basename(f) for f in files] == [
        f'sorted-{i:05d}-of-{n_files:05d}.{fmt}' for i in range(n_files)]
    norms = oracle_norms(X)[norm]
    key = norms if ascending else -norms
    expected_rows = sorted(range(len(ids)), key=lambda r: (key[r], ids[r]))
    np.testing.assert_array_equal(table.column('id').to_numpy(), ids[expected_rows])
    np.testing.assert_allclose(features_of(table, fmt, X.shape[1]), X[expected_rows])
    np.testing.assert_allclose(table.column(norm).to_numpy(), norms[expected_rows], rtol=1e-12)
    if norm == 'l0':
        assert table.schema.field('l0').type == pa.int64()
        np.testing.assert_array_equal(table.column('l0').to_numpy(),
                                      np.count_nonzero(X[expected_rows], axis=1))


@pytest.mark.parametrize('fmt', ['parquet', 'csv', 'jsonl'])
@pytest.mark.parametrize('sort', [None, 'l0'])
def test_run_l0_of_rows_with_nan_and_inf(tmp_path, fmt, sort):
    """With --allow_nan, l0 of a row with NaN or inf is its count of non-zero entries
    (NaN and inf count, as in numpy), an int64 in every format; the other norms of a
    NaN row are NaN. Sorted by l0, such rows take their place by that count."""
    rng = np.random.default_rng(8)
    X = rng.integers(-1, 2, size=(60, 4)).astype(np.float64)
    X[::7, 1] = np.nan
    X[3::11, 2] = np.inf
    X[5] = [np.nan, 0.0, 0.0, 0.0]
    ids = rng.permutation(60).astype(np.int64)
    src = str(tmp_path / 'nan.parquet')
    write_points(src, X, ids)
    out = str(tmp_path / 'o' / 'n')
    argv = ['--input', src, '--output', out, '--output_format', fmt, '--allow_nan']
    norms_pipeline.run(argv + (['--order', 'l0', '--num_shards', '2'] if sort else []))
    files = sorted(glob.glob(f'{out}-?????-of-?????.{fmt}'))
    if fmt == 'jsonl':  # only id and l0: how NaN floats are spelled is the writer's business
        records = [json.loads(line) for f in files for line in open(f)]
        assert all(type(r['l0']) is int for r in records)
        table = pa.table({'id': [r['id'] for r in records], 'l0': [r['l0'] for r in records]})
    elif fmt == 'csv':
        table = pa.concat_tables([pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(
            include_columns=['id', 'l0'])) for f in files])
    else:
        table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.schema.field('l0').type == pa.int64()
    got_ids = table.column('id').to_numpy()
    row = {int(i): r for r, i in enumerate(ids)}
    take = np.array([row[int(i)] for i in got_ids])
    count = np.count_nonzero(X, axis=1)
    np.testing.assert_array_equal(table.column('l0').to_numpy(), count[take])
    if fmt == 'parquet':
        nan_rows = np.isnan(X[take]).any(axis=1)
        assert nan_rows.any()
        for name in ('l1', 'l2', 'linf'):
            assert np.isnan(table.column(name).to_numpy()[nan_rows]).all(), name
    if sort:  # l0 descending, ties by id: NaN rows are not sent last
        expected = sorted(range(len(ids)), key=lambda r: (-count[r], ids[r]))
        np.testing.assert_array_equal(got_ids, ids[expected])


def test_run_sorted_replaces_stale_shards(points_file, tmp_path):
    path, _, _ = points_file
    out = str(tmp_path / 'again')
    norms_pipeline.run(['--input', path, '--output', out, '--order', 'l2', '--num_shards', '3'])
    norms_pipeline.run(['--input', path, '--output', out, '--order', 'l2', '--num_shards', '2',
                        '--overwrite'])
    files = sorted(os.path.basename(f) for f in glob.glob(f'{out}-*.parquet'))
    assert files == ['again-00000-of-00002.parquet', 'again-00001-of-00002.parquet']


def write_bad_csv(path, n_good=300):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(n_good, 3))
    lines = ['id,a,b,c'] + [f'{i},{x[0]!r},{x[1]!r},{x[2]!r}' for i, x in enumerate(X.tolist())]
    lines.insert(5, '9001,1.0,oops,2.0')   # data row 4, line 6: not a number
    lines.insert(9, '9002,1.0')            # data row 8, line 10: too few fields
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return X


@pytest.mark.parametrize('sort', [None, 'l2'])
def test_run_dead_letters_and_counts(tmp_path, capsys, sort):
    src = str(tmp_path / 'bad.csv')
    X = write_bad_csv(src)
    out = str(tmp_path / 'o' / 'norms')
    argv = ['--input', src, '--output', out, '--max_refused_fraction', '0.05']
    norms_pipeline.run(argv + (['--order', sort] if sort else []))
    printed = capsys.readouterr().out
    assert (f'records_read=302 records_ok=300 records_refused=2 '
            f'errors={out}-errors-*.jsonl') in printed
    errors = [json.loads(line) for f in sorted(glob.glob(f'{out}-errors-*.jsonl'))
              for line in open(f)]
    by_line = {e['line']: e for e in errors}
    assert sorted(by_line) == [6, 10]
    assert by_line[6]['row'] == 4 and 'not a number' in by_line[6]['reason']
    assert by_line[6]['file'] == src and by_line[6]['record']['b'] == 'oops'
    assert 'fields' in by_line[10]['reason']
    _, table = read_output(f'{out}-?????-of-?????.parquet', 'parquet')
    assert table.num_rows == 300
    order = np.argsort(table.column('id').to_numpy()) if not sort else np.arange(300)
    got_ids = table.column('id').to_numpy()[order]
    np.testing.assert_allclose(table.column('l2').to_numpy()[order],
                               np.linalg.norm(X[got_ids], axis=1), rtol=1e-12)
    if sort:
        assert np.all(np.diff(table.column('l2').to_numpy()) <= 0)


def test_run_refused_fraction_exceeded(tmp_path):
    src = str(tmp_path / 'bad.csv')
    write_bad_csv(src, n_good=20)
    out = str(tmp_path / 'norms')
    with pytest.raises(BeammlError, match=r'2 of 22 records .*--max_refused_fraction=0.01.*'
                                          + 'norms-errors-'):
        norms_pipeline.run(['--input', src, '--output', out])
    assert not glob.glob(f'{out}-*'), 'nothing is committed'
    (kept,) = glob.glob(f'{tmp_path}/.beamml-refused-norms-*/norms-errors-*.jsonl')
    assert len(open(kept).read().splitlines()) == 2, 'the dead letters are kept beside it'


@pytest.mark.parametrize('flags,message', [
    (['--num_shards', '0'], "--num_shards: '0' is not an integer >= 1"),
    (['--ascending'], '--ascending .* needs --order'),
])
def test_run_rejects_bad_flags(points_file, tmp_path, flags, message):
    path, _, _ = points_file
    with pytest.raises(BeammlError, match=message):
        norms_pipeline.run(['--input', path, '--output', str(tmp_path / 'x')] + flags)
    assert not os.listdir(tmp_path)
