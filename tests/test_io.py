"""transforms/io: every format read and written, dead letters, counts, gs:// paths."""
from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.util import assert_that, equal_to

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import (ReadPoints, ReadTable, WriteDeadLetters, WriteTable,
                                  features_matrix, inspect_input, points_batch, read_table_files,
                                  shard_prefix, to_json_lines)


def _points(rng, n=50, d=3):
    return rng.normal(size=(n, d)) * 10


def _write(tmp_path, name, X, ids=None, fmt=None):
    path = str(tmp_path / name)
    fmt = fmt or name.rsplit('.', 1)[1]
    n, d = X.shape
    if fmt == 'npy':
        np.save(path, X)
        return path
    cols = {}
    if ids is not None:
        cols['id'] = ids
    if fmt == 'jsonl':
        with open(path, 'w') as f:
            for i in range(n):
                rec = {'features': X[i].tolist()}
                if ids is not None:
                    rec['id'] = ids[i]
                f.write(json.dumps(rec) + '\n')
        return path
    cols.update({f'x{j}': X[:, j] for j in range(d)})
    t = pa.table(cols)
    if fmt == 'parquet':
        pq.write_table(t, path)
    else:
        pcsv.write_csv(t, path)
    return path


def _read_all(pattern, **kw):
    table, dead = read_table_files(pattern, **kw)
    return table, dead


@pytest.mark.parametrize('fmt', ['parquet', 'csv', 'jsonl', 'npy'])
def test_each_format_reads_exactly(tmp_path, fmt):
    rng = np.random.default_rng(1)
    X = _points(rng)
    ids = None if fmt == 'npy' else list(range(100, 150))
    path = _write(tmp_path, f'p.{fmt}', X, ids)
    table, dead = _read_all(path)
    assert dead == []
    got = table.column('features').combine_chunks().flatten().to_numpy().reshape(-1, 3)
    np.testing.assert_array_equal(got, X)  # CSV and JSON text round-trip float64 exactly
    if fmt == 'npy':
        assert table.column('id').to_pylist()[:2] == ['p.npy:0', 'p.npy:1']
    else:
        assert table.column('id').to_pylist() == ids


def test_ids_default_to_file_and_row(tmp_path):
    X = np.arange(6, dtype=float).reshape(3, 2)
    pcsv.write_csv(pa.table({'a': X[:, 0], 'b': X[:, 1]}), str(tmp_path / 'pts.csv'))
    table, _ = _read_all(str(tmp_path / 'pts.csv'))
    assert table.column('id').to_pylist() == ['pts.csv:0', 'pts.csv:1', 'pts.csv:2']


def test_feature_columns_and_id_column(tmp_path):
    t = pa.table({'user': ['u1', 'u2'], 'a': [1.0, 2.0], 'b': [3.0, 4.0], 'c': [5.0, 6.0]})
    pq.write_table(t, str(tmp_path / 't.parquet'))
    table, _ = _read_all(str(tmp_path / 't.parquet'), id_column='user', feature_columns=['c', 'a'])
    assert table.column('id').to_pylist() == ['u1', 'u2']
    assert table.column('features').to_pylist() == [[5.0, 1.0], [6.0, 2.0]]


def test_parquet_list_column(tmp_path):
    t = pa.table({'id': [1, 2, 3], 'features': [[1.0, 2.0], [3.0], [4.0, 5.0]]})
    pq.write_table(t, str(tmp_path / 'l.parquet'))
    table, dead = _read_all(str(tmp_path / 'l.parquet'))
    assert table.column('id').to_pylist() == [1, 3]
    assert [(d['row'], d['reason']) for d in dead] == [(1, 'dimension 1, expected 2')]


def test_csv_dead_letters_name_file_row_line_and_reason(tmp_path):
    path = str(tmp_path / 'bad.csv')
    with open(path, 'w') as f:
        f.write('id,a,b\n1,2,3\n2,3\n3,4,5,6\n4,x,1\n5,1,2\n6,nan,1\n7,,2\n8,inf,1\n,1,1\n')
    table, dead = _read_all(path)
    assert table.column('id').to_pylist() == [1, 5]
    got = [(d['file'], d['row'], d['line'], d['reason']) for d in dead]
    assert got == [
        (path, 1, 3, 'expected 3 fields, got 2'),
        (path, 2, 4, 'expected 3 fields, got 4'),
        (path, 3, 5, "value in 'a' is not a number"),
        (path, 5, 7, 'NaN feature value'),
        (path, 6, 8, "missing value in 'a'"),
        (path, 7, 9, 'infinite feature value'),
        (path, 8, 10, 'missing id'),
    ]
    assert dead[0]['record'] == '2,3'
    assert dead[2]['record'] == {'id': '4', 'a': 'x', 'b': '1'}


def test_allow_nan_keeps_nan_rows(tmp_path):
    path = str(tmp_path / 'n.csv')
    with open(path, 'w') as f:
        f.write('a,b\n1,nan\n2,inf\n3,4\n')
    table, dead = _read_all(path, allow_nan=True)
    assert dead == [] and table.num_rows == 3
    X = table.column('features').combine_chunks().flatten().to_numpy().reshape(-1, 2)
    assert np.isnan(X[0, 1]) and np.isinf(X[1, 1])


def test_csv_bad_value_after_first_block_is_refused_not_fatal(tmp_path):
    # The typed read fails deep in the file; the file is re-read from there as text.
    n = 300_000
    X = np.arange(2 * n, dtype=float).reshape(n, 2)
    path = str(tmp_path / 'big.csv')
    pcsv.write_csv(pa.table({'a': X[:, 0], 'b': X[:, 1]}), path)
    with open(path, 'a') as f:
        f.write('oops,1\n1,2\n')
    table, dead = _read_all(path)
    assert table.num_rows == n + 1
    assert [(d['row'], d['line'], d['reason']) for d in dead] == [
        (n, n + 2, "value in 'a' is not a number")]
    ids = table.column('id').to_pylist()
    assert len(set(ids)) == len(ids)  # nothing emitted twice


def test_jsonl_dead_letters(tmp_path):
    path = str(tmp_path / 'b.jsonl')
    with open(path, 'w') as f:
        f.write('{"id":"a","features":[1,2]}\n{"id":"b","features":[1,2,3]}\n\n'
                '{"id":"c","features":[1,"x"]}\nnot json\n{"id":"d","features":[1.5,null]}\n'
                '{"id":"e","features":[3,4]}\n{"id":"","features":[3,4]}\n')
    table, dead = _read_all(path)
    assert table.column('id').to_pylist() == ['a', 'e']
    got = [(d['row'], d['line'], d['reason'].split(':')[0]) for d in dead]
    assert got == [(1, 2, 'dimension 3, expected 2'), (2, 4, 'invalid JSON line'),
                   (3, 5, 'invalid JSON line'), (4, 6, "missing value in 'features'"),
                   (6, 8, 'empty id')]


def test_clear_errors_before_the_run(tmp_path):
    with pytest.raises(BeammlError, match='no input file matches'):
        inspect_input(str(tmp_path / 'nothing-*.csv'))
    (tmp_path / 'empty.csv').write_bytes(b'')
    with pytest.raises(BeammlError, match='is empty'):
        inspect_input(str(tmp_path / 'empty.csv'))
    (tmp_path / 'x.txt').write_text('a,b\n1,2\n')
    # The Python API names the parameter; the command line words it as its flag.
    with pytest.raises(BeammlError, match='pass input_format') as e:
        inspect_input(str(tmp_path / 'x.txt'))
    assert '--' not in str(e.value) and 'pass --input_format' in e.value.for_cli()
    (tmp_path / 'y.parquet').write_text('not parquet at all')
    with pytest.raises(BeammlError, match='not a readable parquet'):
        inspect_input(str(tmp_path / 'y.parquet'))
    (tmp_path / 'z.csv').write_text('a,b\n1,2\n')
    with pytest.raises(BeammlError, match="no id column 'user'.*a, b"):
        inspect_input(str(tmp_path / 'z.csv'), id_column='user')
    with pytest.raises(BeammlError, match="no column 'q'"):
        inspect_input(str(tmp_path / 'z.csv'), feature_columns=['q'])
    (tmp_path / 'w.csv').write_text('name,city\nx,y\n')
    with pytest.raises(BeammlError, match='no numeric column'):
        inspect_input(str(tmp_path / 'w.csv'))


def test_read_points_in_a_pipeline_many_files_and_counts(tmp_path):
    rng = np.random.default_rng(2)
    X1, X2 = _points(rng, 20), _points(rng, 30)
    _write(tmp_path, 'a.csv', X1, list(range(20)))
    path2 = _write(tmp_path, 'b.csv', X2, list(range(20, 50)))
    with open(path2, 'a') as f:
        f.write('99,1\n')
    pattern = str(tmp_path / '*.csv')
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = p | ReadPoints(pattern)
        ids = res.batches | beam.FlatMap(lambda b: b.column('id').to_pylist())
        sums = res.batches | beam.Map(lambda b: float(features_matrix(b).sum())) \
            | beam.CombineGlobally(sum)
        assert_that(ids, equal_to(list(range(50))), label='Ids')
        assert_that(sums, lambda s: np.testing.assert_allclose(s, [X1.sum() + X2.sum()]),
                    label='Sums')
        assert_that(res.errors | beam.Map(lambda d: (os.path.basename(d['file']), d['row'])),
                    equal_to([('b.csv', 30)]), label='Errors')
    result = p.result
    from beamml.pipelines._platform.main import record_counts
    c = record_counts(result)
    assert (c['records_read'], c['records_ok'], c['records_refused']) == (51, 50, 1)


def test_read_points_with_a_given_layout_matches_the_pattern_when_the_graph_runs(tmp_path):
    """ReadPoints(pattern, layout=...) reads nothing when it is built (what a dry run
    needs); the files are matched when the graph runs, including one written since, and
    read as the inspected layout reads them: the same rows and dead letters."""
    from beamml.transforms.io.declared import declared_layout
    rng = np.random.default_rng(5)
    X1, X2 = _points(rng, 20), _points(rng, 30)
    _write(tmp_path, 'a.csv', X1, list(range(20)))
    pattern = str(tmp_path / '*.csv')
    layout = declared_layout(pattern, id_column='id', id_type='int64',
                             feature_columns=['x0', 'x1', 'x2'])
    assert ReadPoints(pattern).layout == layout   # what inspecting the file decides
    given = ReadPoints(pattern, layout=layout)
    assert given.paths is None and given.layout is layout
    path2 = _write(tmp_path, 'b.csv', X2, list(range(20, 50)))   # lands after the build
    with open(path2, 'a') as f:
        f.write('99,1\n')
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = p | given
        ids = res.batches | beam.FlatMap(lambda b: b.column('id').to_pylist())
        assert_that(ids, equal_to(list(range(50))), label='Ids')
        assert_that(res.errors | beam.Map(lambda d: (os.path.basename(d['file']), d['row'])),
                    equal_to([('b.csv', 30)]), label='Errors')
    with pytest.raises(BeammlError, match='give layout or dimension, not both'):
        ReadPoints(pattern, layout=layout, dimension=2)
    with pytest.raises(BeammlError, match='no feature columns'):
        ReadPoints(pattern, layout=declared_layout(pattern, points=False, id_column='id'))
    with pytest.raises(BeammlError, match='no input file matches'):
        with beam.Pipeline(runner='FnApiRunner') as p:
            _ = p | ReadPoints(str(tmp_path / 'none' / '*.csv'), layout=layout)


@pytest.mark.parametrize('kwargs, shape', [
    (dict(dimension=4), ('parquet', ('features',), True, 4, None, 'string')),
    (dict(feature_columns=['a', 'b'], id_column='k', id_type='int64'),
     ('parquet', ('a', 'b'), False, 2, 'k', 'int64')),
    (dict(feature_columns=['v'], dimension=3), ('parquet', ('v',), True, 3, None, 'string')),
    (dict(feature_columns=['v'], list_features=False), ('parquet', ('v',), False, 1, None,
                                                       'string')),
    (dict(input_format='npy', dimension=5), ('npy', ('features',), True, 5, None, 'string')),
])
def test_declared_layout_shapes(kwargs, shape):
    from beamml.transforms.io.declared import declared_layout
    lay = declared_layout('gs://b/in/*.parquet', **kwargs)
    assert (lay.input_format, lay.feature_columns, lay.list_features, lay.dimension,
            lay.id_column, lay.id_type) == shape


@pytest.mark.parametrize('pattern, kwargs, message', [
    ('in/*.parquet', {}, r'^not read: pass dimension \(the number of features\)$'),
    ('in/*.parquet', dict(feature_columns=['f']), r"pass dimension \(the length of the lists "
                                                   r"in 'f'\)$"),
    ('in/*.csv', dict(dimension=2), 'pass feature_columns$'),
    ('in/*', dict(dimension=2), 'pass input_format$'),
    ('in/*.npy', {}, 'pass dimension$'),
    ('in/*.csv', dict(feature_columns=['a', 'b'], dimension=3), 'but dimension is 3'),
    ('in/*.npy', dict(dimension=2, id_column='id'), 'drop id_column'),
])
def test_declared_layout_names_what_is_missing(pattern, kwargs, message):
    from beamml.transforms.io.declared import declared_layout
    with pytest.raises(BeammlError, match=message) as e:
        declared_layout(pattern, why='not read', **kwargs)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('fmt', ['parquet', 'csv', 'jsonl'])
def test_write_table_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(3)
    X = _points(rng, 40, 4)
    ids = pa.array(np.arange(40, dtype=np.int64))
    from beamml.transforms.io import points_batch
    batches = [points_batch(ids[:25], X[:25], score=X[:25, 0]),
               points_batch(ids[25:], X[25:], score=X[25:, 0])]
    prefix = str(tmp_path / 'out' / 'pts')
    with beam.Pipeline(runner='FnApiRunner') as p:
        _ = p | beam.Create(batches) | WriteTable(prefix, fmt, num_shards=2)
    files = sorted(glob.glob(prefix + f'-?????-of-00002.{fmt}'))
    assert len(files) == 2
    table, dead = _read_all(prefix + f'-*.{fmt}',
                            feature_columns=None if fmt == 'jsonl' else
                            [f'features_{j}' for j in range(4)] if fmt == 'csv' else ['features'])
    assert dead == []
    order = np.argsort(table.column('id').to_numpy())
    got = table.column('features').combine_chunks().flatten().to_numpy().reshape(-1, 4)[order]
    np.testing.assert_array_equal(got, X)


@pytest.mark.parametrize('folder', ['out', '.beamml-tmp-pts-20261207T000000Z-abc123'])
def test_an_earlier_runs_shards_go_except_in_a_dated_runs_own_folder(tmp_path, folder):
    """A prefix written twice with another shard count: the first run's shards are removed,
    and the second run's paths are its output. A dated run's temporary folder is new, so
    nothing is looked for there: no gathering step, and the same files."""
    from beamml.transforms.core.objects import in_run_temporary
    from beamml.transforms.io import points_batch
    X = _points(np.random.default_rng(4), 30, 2)
    batch = points_batch(pa.array(np.arange(30, dtype=np.int64)), X)
    prefix = str(tmp_path / folder / 'pts')
    for shards in (3, 2):
        p = beam.Pipeline(runner='FnApiRunner')
        written = p | beam.Create([batch]) | WriteTable(prefix, 'parquet', num_shards=shards)
        assert_that(written | beam.FlatMap(lambda x: x if isinstance(x, list) else [x])
                    | beam.Map(os.path.basename),
                    equal_to([f'pts-{i:05d}-of-{shards:05d}.parquet' for i in range(shards)]))
        p.run().wait_until_finish()
        labels = {t.full_label for t in p.transforms_stack[0].parts
                  for t in _walk(t)}
        assert any(label.endswith('ListShards') for label in labels) != in_run_temporary(prefix)
    files = sorted(os.path.basename(f) for f in glob.glob(prefix + '-*.parquet'))
    if in_run_temporary(prefix):     # never the case: each dated run writes a new folder
        assert len(files) == 5
    else:
        assert files == ['pts-00000-of-00002.parquet', 'pts-00001-of-00002.parquet']


def _walk(transform):
    yield transform
    for part in transform.parts:
        yield from _walk(part)


def test_write_empty_output_keeps_schema(tmp_path):
    schema = pa.schema([('id', pa.int64()), ('l2', pa.float64())])
    prefix = str(tmp_path / 'empty')
    with beam.Pipeline(runner='FnApiRunner') as p:
        _ = p | beam.Create([]) | WriteTable(prefix, 'parquet', schema=schema)
    (path,) = glob.glob(prefix + '-*.parquet')
    assert pq.read_table(path).schema.equals(schema)


def test_json_lines_writer_is_valid_json():
    t = pa.table({'id': ['a"b', 'c\\d\n'], 'x': [1.5, float('nan')], 'n': [1, None],
                  'v': pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64(), 2)),
                  'ok': [True, False]})
    lines = to_json_lines(t).decode().splitlines()
    assert [json.loads(x) for x in lines] == [
        {'id': 'a"b', 'x': 1.5, 'n': 1, 'v': [1.0, 2.0], 'ok': True},
        {'id': 'c\\d\n', 'x': 'NaN', 'n': None, 'v': [3.0, 4.0], 'ok': False}]


def test_read_table_keeps_columns_and_source(tmp_path):
    path = str(tmp_path / 'log.csv')
    with open(path, 'w') as f:
        f.write('user_id,item,truth\n15,a,1\n12,b,0\n,c,1\n14,d,T\n')
    with beam.Pipeline(runner='FnApiRunner') as p:
        r = p | ReadTable(path, id_column='user_id', source_columns=True)
        rows = r.batches | beam.FlatMap(lambda b: b.to_pylist())
        assert_that(rows, equal_to([
            {'user_id': 15, 'item': 'a', 'truth': '1', '_file': path, '_row': 0,
             '_line': 2},
            {'user_id': 12, 'item': 'b', 'truth': '0', '_file': path, '_row': 1,
             '_line': 3},
            {'user_id': 14, 'item': 'd', 'truth': 'T', '_file': path, '_row': 3,
             '_line': 5}]))
        assert_that(r.errors | beam.Map(lambda d: (d['row'], d['reason'])),
                    equal_to([(2, 'missing id')]), label='Errors')


def test_gcs_read_and_write(gcs_bucket, tmp_path):
    rng = np.random.default_rng(4)
    X = _points(rng, 30)
    local = _write(tmp_path, 'p.parquet', X, list(range(30)))
    with open(local, 'rb') as src, FileSystems.create(f'{gcs_bucket}/in/p.parquet') as dst:
        dst.write(src.read())
    prefix = f'{gcs_bucket}/out/pts'
    with beam.Pipeline(runner='FnApiRunner') as p:
        res = p | ReadPoints(f'{gcs_bucket}/in/*.parquet')
        res.batches | WriteTable(prefix, 'parquet')
        res.errors | WriteDeadLetters(prefix)
    table, dead = _read_all(prefix + '-*.parquet')
    assert dead == [] and sorted(table.column('id').to_pylist()) == list(range(30))
    errs = FileSystems.match([prefix + '-errors-*.jsonl'])[0].metadata_list
    assert len(errs) == 1 and errs[0].size_in_bytes == 0


def test_jsonl_ids_of_mixed_types_cost_only_their_lines(tmp_path):
    path = str(tmp_path / 'm.jsonl')
    with open(path, 'w') as f:
        f.write('{"id": 1, "features": [1, 2]}\n{"id": "", "features": [1, 2]}\n'
                '{"id": 3, "features": [3, 4], "extra": "x"}\n{"features": [5, 6]}\n'
                '{"id": "seven", "features": [7, 8]}\n')
    table, dead = _read_all(path)
    # One string id among integers: ids are strings (an integer id column needs every
    # present id to be a number); the numbers are not made strings but refused, as are
    # '' and a missing key.
    assert table.column('id').to_pylist() == ['seven']
    number = 'id is a number, the id column holds strings'
    assert [(d['row'], d['reason']) for d in dead] == [
        (0, number), (1, 'empty id'), (2, number), (3, 'missing id')]
    path2 = str(tmp_path / 'n.jsonl')
    with open(path2, 'w') as f:
        f.write('{"id": 1, "features": [1, 2]}\n{"id": "", "features": [1, 2]}\n'
                '{"id": 3, "features": [3, 4]}\n')
    table, dead = _read_all(path2)
    assert table.column('id').to_pylist() == [1, 3]
    assert [(d['row'], d['reason']) for d in dead] == [(1, 'empty id')]


def test_read_table_jsonl_keeps_every_field(tmp_path):
    path = str(tmp_path / 't.jsonl')
    with open(path, 'w') as f:
        f.write('{"q": 1, "rank": 0, "rel": 1}\n{"q": 1, "rank": 1, "rel": 0}\n')
    with beam.Pipeline(runner='FnApiRunner') as p:
        r = p | ReadTable(path)
        assert_that(r.batches | beam.FlatMap(lambda b: b.to_pylist()),
                    equal_to([{'q': 1, 'rank': 0, 'rel': 1}, {'q': 1, 'rank': 1, 'rel': 0}]))


@pytest.mark.parametrize('fmt', ['parquet', 'npy'])
def test_large_files_are_split_into_work_items_with_true_row_numbers(tmp_path, fmt):
    from beamml.transforms.io import plan_reads
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 3))
    X[777, 1] = np.nan  # its dead letter must name row 777 of the file
    if fmt == 'parquet':
        path = str(tmp_path / 'big.parquet')
        pq.write_table(pa.table({f'x{j}': X[:, j] for j in range(3)}), path, row_group_size=100)
    else:
        path = str(tmp_path / 'big.npy')
        np.save(path, X)
    paths, layout = inspect_input(path)
    items = plan_reads(path, layout, split_rows=250)
    assert [part[:2] for _, part in items] == [(0, 300), (300, 600), (600, 900), (900, 1000)] \
        if fmt == 'parquet' else [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert plan_reads(path, layout, split_rows=5000) == [(path, None)]
    import beamml.transforms.io.sources as tio
    old = tio.SPLIT_ROWS
    tio.SPLIT_ROWS = 250
    try:
        with beam.Pipeline(runner='FnApiRunner') as p:
            res = p | ReadPoints(path)
            rows = res.batches | beam.FlatMap(
                lambda b: zip(b.column('id').to_pylist(), features_matrix(b)[:, 0].tolist()))
            expected = [(f'big.{fmt}:{i}', X[i, 0]) for i in range(1000) if i != 777]
            assert_that(rows, equal_to(expected))
            assert_that(res.errors | beam.Map(lambda d: (d['row'], d['reason'])),
                        equal_to([(777, 'NaN feature value')]), label='Errors')
    finally:
        tio.SPLIT_ROWS = old


def test_json_lines_writes_non_finite_floats_as_strings():
    t = pa.table({'x': [1.5, float('nan'), float('inf'), float('-inf'), None],
                  'v': pa.array([[1.0, float('inf')], [float('nan'), 2.0], [0.0, 0.0],
                                 [float('-inf'), 1e308], None], pa.list_(pa.float64())),
                  'word': ['NaN', 'Infinity', '-Infinity', 'nan', None]})
    lines = to_json_lines(t).decode().splitlines()
    assert lines[1].startswith('{"x": "NaN", "v": ["NaN",2]')
    assert [json.loads(x) for x in lines] == [
        {'x': 1.5, 'v': [1.0, 'Infinity'], 'word': 'NaN'},
        {'x': 'NaN', 'v': ['NaN', 2.0], 'word': 'Infinity'},
        {'x': 'Infinity', 'v': [0.0, 0.0], 'word': '-Infinity'},
        {'x': '-Infinity', 'v': ['-Infinity', 1e308], 'word': 'nan'},
        {'x': None, 'v': None, 'word': None}]   # null stays a missing value
    # Text spelled like a non-finite float is escaped, so it is not read as a float.
    assert '"word": "NaN"' not in lines[0] and '"word": "nan"' in lines[3]


def test_json_lines_output_reads_back_unchanged(tmp_path):
    # The norms case: two 1.3e308 entries sum to l1 = inf, written "Infinity".
    X = np.array([[1.3e308, 1.3e308], [1.0, np.nan], [-np.inf, 2.0], [3.0, 4.0]])
    with np.errstate(over='ignore'):
        l1 = np.abs(X).sum(axis=1)
    batch = points_batch(pa.array(['a', 'NaN', 'c', 'd']), X, l1=l1,
                         note=pa.array(['Infinity', None, 'x', 'NaN']))
    out = str(tmp_path / 'out' / 'pts')
    with beam.Pipeline(runner='FnApiRunner') as p:
        _ = p | beam.Create([batch]) | WriteTable(out, 'jsonl')
    (path,) = glob.glob(out + '-*.jsonl')
    text = open(path).read()
    assert '"l1": "Infinity"' in text and '"features": [1,"NaN"]' in text
    with beam.Pipeline(runner='FnApiRunner') as p:
        r = p | ReadTable(path)
        assert_that(r.batches | beam.FlatMap(lambda b: b.to_pylist()),
                    lambda rows: _same_rows(rows, batch.to_pylist()))
    table, dead = read_table_files(path, allow_nan=True)
    assert dead == [] and table.column('id').to_pylist() == ['a', 'NaN', 'c', 'd']
    np.testing.assert_array_equal(features_matrix(table.to_batches()[0]), X)  # NaN where NaN
    table, dead = read_table_files(path, feature_columns=['l1'], allow_nan=True)
    np.testing.assert_array_equal(features_matrix(table.to_batches()[0]).ravel(), l1)
    # ReadPoints keeps its allow_nan rule: without it the non-finite rows are refused.
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == ['a', 'd']
    assert [(d['row'], d['reason']) for d in dead] == [
        (1, 'NaN feature value'), (2, 'infinite feature value')]
    # Dead letters follow the one JSON policy too.
    assert [d['record']['features'] for d in dead] == [[1.0, 'NaN'], ['-Infinity', 2.0]]


def _same_rows(got, want):
    assert len(got) == len(want)
    for g, w in zip(sorted(got, key=lambda r: r['id']), sorted(want, key=lambda r: r['id'])):
        assert g.keys() == w.keys() and g['id'] == w['id'] and g['note'] == w['note']
        np.testing.assert_array_equal(g['features'], w['features'])
        np.testing.assert_array_equal(g['l1'], w['l1'])


def test_json_lines_reader_takes_non_finite_words_only_as_values(tmp_path):
    path = str(tmp_path / 'w.jsonl')
    with open(path, 'w') as f:
        f.write('{"id": "NaN", "x": "Infinity", "y": 1, "NaN": "text"}\n'
                '{"id": "b", "x": 2, "y": "-Infinity", "NaN": "NaN"}\n'
                '{"id": "c", "x": ["NaN"], "y": 3, "NaN": "z"}\n')
    table, dead = read_table_files(path, feature_columns=['x', 'y'], allow_nan=True)
    assert table.column('id').to_pylist() == ['NaN', 'b']   # the id stays text
    assert table.column('features').to_pylist() == [[np.inf, 1.0], [2.0, -np.inf]]
    assert [(d['row'], d['reason'].split(':')[0]) for d in dead] == [(2, 'invalid JSON line')]


def test_dead_letter_records_follow_the_json_policy(tmp_path):
    path = str(tmp_path / 'bad.jsonl')
    with open(path, 'wb') as f:
        f.write(b'{"id": "a", "features": [1, 2]}\n{"id": "b", "features": [1, \xff]}\n')
    table, dead = read_table_files(path)
    assert table.column('id').to_pylist() == ['a']
    assert dead[0]['record'] == '{"id": "b", "features": [1, \\xff]}'  # the byte, escaped
    path = str(tmp_path / 'n.parquet')
    pq.write_table(pa.table({'id': [1, 2], 'a': [np.nan, -np.inf], 'b': [2.0, 1.0]}), path)
    _, dead = read_table_files(path)   # non-finite floats as documents.to_jsonable writes them
    assert [d['record'] for d in dead] == [{'id': 1, 'a': 'NaN', 'b': 2.0},
                                           {'id': 2, 'a': '-Infinity', 'b': 1.0}]
    path = str(tmp_path / 'n.csv')
    with open(path, 'w') as f:
        f.write('id,a,b\n1,nan,2\n2,-inf,1\n3,1e400,0\n')
    _, dead = read_table_files(path)   # a CSV record is the text of the file
    assert [d['record'] for d in dead] == [{'id': '1', 'a': 'nan', 'b': '2'},
                                           {'id': '2', 'a': '-inf', 'b': '1'},
                                           {'id': '3', 'a': '1e400', 'b': '0'}]


def test_shard_prefix_a_trailing_slash_is_a_directory(tmp_path):
    assert shard_prefix('out/norms') == 'out/norms'
    assert shard_prefix('out/norms', 'errors') == 'out/norms-errors'
    assert shard_prefix('out/') == 'out/part'
    assert shard_prefix('gs://b/out/', 'errors') == 'gs://b/out/errors'
    assert WriteDeadLetters.glob('out/') == 'out/errors-*.jsonl'
    assert WriteDeadLetters.glob('out/norms') == 'out/norms-errors-*.jsonl'
    out = str(tmp_path / 'out') + '/'
    batch = points_batch(pa.array([1, 2]), np.ones((2, 2)))
    with beam.Pipeline(runner='FnApiRunner') as p:
        _ = p | beam.Create([batch]) | WriteTable(out, 'parquet')
        _ = p | 'Errors' >> beam.Create([{'reason': 'x'}]) | WriteDeadLetters(out)
    assert sorted(os.listdir(out)) == ['errors-00000-of-00001.jsonl',
                                       'part-00000-of-00001.parquet']
    assert glob.glob(WriteDeadLetters.glob(out)) == [out + 'errors-00000-of-00001.jsonl']


def test_inspect_input_names_parameters_not_flags(tmp_path):
    path = str(tmp_path / 'p.csv')
    with open(path, 'w') as f:
        f.write('a,b\n1,2\n')
    with pytest.raises(BeammlError) as e:
        inspect_input(path, dimension=0)
    assert '--' not in str(e.value) and 'dimension must be >= 1' in str(e.value)
    assert e.value.for_cli() == '--dimension must be >= 1, got 0'
    with pytest.raises(BeammlError) as e:
        inspect_input(path, dimension=3)
    assert '--' not in str(e.value) and 'but --dimension is 3' in e.value.for_cli()
    with open(str(tmp_path / 'w.csv'), 'w') as f:
        f.write('name,city\nx,y\n')
    with pytest.raises(BeammlError) as e:
        inspect_input(str(tmp_path / 'w.csv'))
    assert '--' not in str(e.value) and e.value.for_cli().endswith('pass --feature_columns')
