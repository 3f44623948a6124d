"""Dense id index: kernels, IdIndex, the CombineFn, the transforms and `beamml index_ids`."""
from __future__ import annotations

import glob
import json
import math
import os
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beamml.pipelines import index_ids
from beamml.pipelines._platform.cli import parse_args
from beamml.pipelines._platform.main import record_counts
from beamml.transforms.index import (BuildIdIndex, IdIndex, IndexIds, MinKeyPerIdFn, UnifySchemasFn,
                                     conform_batch, dense_index, first_keys, number_ids,
                                     promote_types, source_keys)
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadTable

EXAMPLE = [15, 12, 14, 10, 1, 2, 1]
EXAMPLE_IDX = [0, 1, 2, 3, 4, 5, 4]


# ----------------------------------------------------------------------------- oracles

def oracle_first_seen(ids) -> dict:
    out: dict = {}
    for v in ids:
        out.setdefault(v, len(out))
    return out


def oracle_sorted(ids) -> dict:
    return {v: i for i, v in enumerate(sorted(set(ids)))}


def random_ids(rng, n, n_distinct, kind):
    raw = rng.integers(0, n_distinct, size=n) * 7 - 50  # negatives too
    if kind == 'int':
        return [int(v) for v in raw]
    return [f'u{v}' for v in raw]


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize('kind', ['int', 'str'])
def test_dense_index_example(kind):
    ids = EXAMPLE if kind == 'int' else [str(v) for v in EXAMPLE]
    table = dense_index(ids)
    assert table.column('id').to_pylist() == list(oracle_first_seen(ids))
    assert table.column('idx').to_pylist() == list(range(6))
    index = IdIndex(ids)
    assert index.get_users_idx(ids).tolist() == EXAMPLE_IDX
    assert index.get_users_id(EXAMPLE_IDX).tolist() == ids


@pytest.mark.parametrize('kind', ['int', 'str'])
def test_dense_index_sorted(kind):
    ids = EXAMPLE if kind == 'int' else [str(v) for v in EXAMPLE]
    index = IdIndex(ids, order='sorted')
    expected = oracle_sorted(ids)
    assert index.ids.tolist() == sorted(set(ids))  # strings: '1' < '10' < ... < '2'
    assert index.get_users_idx(ids).tolist() == [expected[v] for v in ids]


def test_source_keys_order_by_file_then_row():
    rng = np.random.default_rng(0)
    rank = rng.integers(0, 5, 300)
    row = rng.integers(0, 10**9, 300)
    keys = source_keys(rank, row)
    assert (np.argsort(keys, kind='stable') == np.lexsort((row, rank))).all()
    with pytest.raises(ValueError):
        source_keys([0], [-1])
    with pytest.raises(ValueError):
        source_keys([0], [1 << 40])


def test_first_keys_and_number_ids_against_oracle():
    rng = np.random.default_rng(1)
    ids = random_ids(rng, 500, 80, 'str')
    keys = rng.permutation(500) * 3  # any order of positions
    first = first_keys(pa.array(ids), keys)
    expect = {}
    for v, k in zip(ids, keys):
        expect[v] = min(k, expect.get(v, k))
    assert dict(zip(first.column('id').to_pylist(), first.column('key').to_pylist())) == expect
    numbered = number_ids(first, 'first_seen')
    by_key = sorted(expect, key=expect.get)
    assert numbered.column('id').to_pylist() == by_key
    assert number_ids(first, 'sorted').column('id').to_pylist() == sorted(expect)
    with pytest.raises(ValueError, match='null id'):
        first_keys(pa.array([1, None]), [0, 1])
    with pytest.raises(ValueError, match='unknown order'):
        number_ids(first, 'random')


def test_build_id_index_names_its_parameter():
    with pytest.raises(BeammlError, match="unknown order 'random'") as e:
        BuildIdIndex('user_id', ['a.csv'], order='random')
    assert e.value.parameters == ('order',)
    assert e.value.for_cli() == "unknown --order 'random'; one of first_seen, sorted"


def test_min_key_per_id_fn_add_merge_and_one_shot_agree():
    rng = np.random.default_rng(2)
    ids = random_ids(rng, 2000, 300, 'int')
    keys = np.arange(2000)
    batches = [first_keys(pa.array(ids[i:i + 97]), keys[i:i + 97]) for i in range(0, 2000, 97)]
    expect = {}
    for v, k in zip(ids, keys):
        expect.setdefault(v, int(k))

    def as_dict(t):
        assert len(set(t.column('id').to_pylist())) == t.num_rows  # each id once
        return dict(zip(t.column('id').to_pylist(), t.column('key').to_pylist()))

    for compact_rows in (1, 50, 1 << 16):  # compaction at every add ... never
        fn = MinKeyPerIdFn(pa.int64(), compact_rows=compact_rows)
        assert as_dict(fn.apply(batches)) == expect
        # several workers, each adding some batches (in reverse order), then merged
        accs = []
        for part in (batches[:5], batches[5:6], [], batches[6:][::-1]):
            acc = fn.create_accumulator()
            for b in part:
                acc = fn.add_input(acc, b)
            accs.append(acc)
        merged = fn.merge_accumulators([fn.create_accumulator()] + accs[::-1])
        assert as_dict(fn.extract_output(fn.compact(merged))) == expect
    empty = MinKeyPerIdFn(pa.string())
    out = empty.extract_output(empty.merge_accumulators(
        [empty.create_accumulator(), empty.create_accumulator()]))
    assert out.num_rows == 0 and out.schema.field('id').type == pa.string()


def test_promote_types_and_conform_batch():
    assert promote_types(pa.int32(), pa.int64()) == pa.int64()
    assert promote_types(pa.int64(), pa.float64()) == pa.float64()
    assert promote_types(pa.null(), pa.string()) == pa.string()
    assert promote_types(pa.float64(), pa.string()) == pa.string()
    with pytest.raises(BeammlError, match="column 'v'"):
        promote_types(pa.list_(pa.int64()), pa.string(), 'v')
    fn = UnifySchemasFn(columns=('b', 'a'))
    schema = fn.apply([pa.schema([('a', pa.int64()), ('b', pa.int64())]),
                       pa.schema([('b', pa.string()), ('c', pa.float64()), ('a', pa.null())])])
    assert schema == pa.schema([('b', pa.string()), ('a', pa.int64()), ('c', pa.float64())])
    batch = conform_batch(pa.RecordBatch.from_pydict({'a': [1, 2], 'b': [3, 4]}), schema)
    assert batch.schema == schema
    assert batch.to_pydict() == {'b': ['3', '4'], 'a': [1, 2], 'c': [None, None]}


# ----------------------------------------------------------------------------- IdIndex

@pytest.mark.parametrize('kind', ['int', 'str'])
def test_id_index_round_trip(kind, tmp_path):
    rng = np.random.default_rng(3)
    ids = random_ids(rng, 3000, 700, kind)
    expect = oracle_first_seen(ids)
    index = IdIndex(np.asarray(ids))
    assert len(index) == len(expect)
    assert index.id_type == (pa.int64() if kind == 'int' else pa.string())
    assert index.ids.tolist() == list(expect)
    idx = index.get_users_idx(ids)
    assert idx.dtype == np.int64 and idx.tolist() == [expect[v] for v in ids]
    assert index.get_users_id(idx).tolist() == ids
    assert index.get_users_idx(ids[5]) == expect[ids[5]]        # scalars
    assert index.get_users_id(expect[ids[5]]) == ids[5]
    assert index.get_users_idx(pa.array(ids[:4])).tolist() == [expect[v] for v in ids[:4]]
    assert index.get_users_idx([]).tolist() == []
    # the same index from its table (rows in any order), a mapping and a saved file
    table = index.to_table()
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    path = str(tmp_path / 'index.parquet')
    index.save(path)
    for other in (IdIndex(shuffled), IdIndex(shuffled.to_batches()[0]), IdIndex(expect),
                  IdIndex(path), IdIndex(str(tmp_path / '*.parquet'))):
        assert other.ids.tolist() == list(expect)
        assert other.get_users_idx(ids[::-1]).tolist() == idx[::-1].tolist()


def test_id_index_strings_long_unicode_and_prefixes():
    ids = ['a', 'ab', 'abc', '', 'é', '日本', 'a\x00b', 'Z']
    index = IdIndex(ids)
    assert index.get_users_idx(ids[::-1]).tolist() == list(range(len(ids)))[::-1]
    with pytest.raises(KeyError, match="'abcd'"):   # longer than every id: cut, then checked
        index.get_users_idx(['abcd'])
    with pytest.raises(KeyError) as e:
        index.get_users_idx(['a\x00'])
    assert repr('a\x00') in e.value.args[0]
    long = [('x' * 100) + str(i % 37) for i in range(200)]  # > 64 bytes: the hash path
    index = IdIndex(long, order='sorted')
    expect = oracle_sorted(long)
    assert index.get_users_idx(long).tolist() == [expect[v] for v in long]
    with pytest.raises(KeyError, match='1 unknown id'):
        index.get_users_idx(['x' * 100])


def test_id_index_key_errors():
    index = IdIndex(EXAMPLE)
    with pytest.raises(KeyError) as e:
        index.get_users_idx([15, 99, 1, 98])
    assert '2 unknown id(s): 99, 98' in str(e.value)
    with pytest.raises(KeyError, match=r"14 unknown id\(s\): 100, 101, .* and 4 more"):
        index.get_users_idx(list(range(100, 114)))
    with pytest.raises(KeyError, match="'abc'"):
        index.get_users_idx(['abc'])
    with pytest.raises(KeyError, match='None'):
        index.get_users_idx([15, None])
    assert index.get_users_idx(['15', ' 12']).tolist() == [0, 1]  # text that is an id
    with pytest.raises(KeyError, match=r'2 idx out of range \[0, 6\): 6, -1'):
        index.get_users_id([0, 6, -1])
    with pytest.raises(KeyError, match='out of range'):
        index.get_users_id(6)
    with pytest.raises(TypeError, match='integers'):
        index.get_users_id([0.5])
    strings = IdIndex(['15', '12'])
    assert strings.get_users_idx([12]).tolist() == [1]  # numbers asked as their text
    with pytest.raises(KeyError, match="'13'"):
        strings.get_users_idx(['13'])


def test_id_index_refuses_bad_tables():
    with pytest.raises(ValueError, match='not unique: 5'):
        IdIndex(pa.table({'id': [5, 6, 5], 'idx': [0, 1, 2]}))
    with pytest.raises(ValueError, match="not unique: 'a'"):
        IdIndex(pa.table({'id': ['a', 'a'], 'idx': [0, 1]}))
    with pytest.raises(ValueError, match='permutation'):
        IdIndex(pa.table({'id': [5, 6], 'idx': [0, 2]}))
    with pytest.raises(ValueError, match='permutation'):
        IdIndex(pa.table({'id': [5, 6], 'idx': [1, 1]}))
    with pytest.raises(ValueError, match='columns id and idx'):
        IdIndex(pa.table({'user': [5], 'idx': [0]}))
    with pytest.raises(ValueError, match='null id'):
        IdIndex(pa.table({'id': [5, None], 'idx': [0, 1]}))
    with pytest.raises(ValueError, match='only when'):
        IdIndex(pa.table({'id': [5], 'idx': [0]}), order='sorted')
    with pytest.raises(TypeError, match='integers or strings'):
        IdIndex([1.5, 2.5])
    with pytest.raises(FileNotFoundError):
        IdIndex('/nonexistent/dir/index-*.parquet')
    empty = IdIndex([])
    assert len(empty) == 0 and empty.get_users_idx([]).tolist() == []
    with pytest.raises(KeyError):
        empty.get_users_idx(['x'])


# ----------------------------------------------------------------------------- pipelines

def write_input(path, columns: dict, fmt: str):
    """Write a small input file; columns: name -> list (None = missing)."""
    if fmt == 'parquet':
        pq.write_table(pa.table(columns), path)
        return
    names = list(columns)
    rows = list(zip(*columns.values()))
    with open(path, 'w') as f:
        if fmt == 'csv':
            f.write(','.join(names) + '\n')
            for r in rows:
                f.write(','.join('' if v is None else str(v) for v in r) + '\n')
        else:
            for r in rows:
                f.write(json.dumps(dict(zip(names, r))) + '\n')


def read_output(pattern) -> pa.Table:
    files = sorted(glob.glob(pattern))
    assert files, f'no output matches {pattern}'
    if pattern.endswith('.parquet'):
        return pa.concat_tables([pq.read_table(f) for f in files])
    if pattern.endswith('.csv'):
        return pa.concat_tables([pcsv.read_csv(f) for f in files])
    rows = [json.loads(ln) for f in files for ln in open(f) if ln.strip()]
    return pa.Table.from_pylist(rows)


def read_errors(prefix) -> list[dict]:
    return [json.loads(ln) for f in sorted(glob.glob(f'{prefix}-errors-*.jsonl'))
            for ln in open(f) if ln.strip()]


def run_index(tmp_path, pattern, *flags, output_format='parquet'):
    out = str(tmp_path / 'out' / 'users')
    result = index_ids.run(['--input', pattern, '--output', out,
                            '--output_format', output_format, *flags])
    id2idx = read_output(f'{out}-id2idx-*.parquet')
    encoded = read_output(f'{out}-encoded-*.{output_format}')
    return out, id2idx, encoded, record_counts(result)


@pytest.mark.parametrize('kind, fmt, order, output_format', [
    ('int', 'csv', 'first_seen', 'csv'),
    ('str', 'parquet', 'first_seen', 'jsonl'),
    ('int', 'jsonl', 'sorted', 'parquet'),
    ('str', 'csv', 'sorted', 'parquet'),
])
def test_index_ids_example(tmp_path, capsys, kind, fmt, order, output_format):
    ids = EXAMPLE if kind == 'int' else [f'u{v}' for v in EXAMPLE]
    write_input(tmp_path / f'events.{fmt}', {'user_id': ids, 'pos': list(range(7))}, fmt)
    out, id2idx, encoded, counts = run_index(
        tmp_path, str(tmp_path / f'events.{fmt}'), '--id_column', 'user_id',
        '--order', order, output_format=output_format)
    expect = (oracle_first_seen if order == 'first_seen' else oracle_sorted)(ids)
    assert id2idx.schema.field('id').type == (pa.int64() if kind == 'int' else pa.string())
    assert id2idx.sort_by('idx').column('id').to_pylist() == list(
        sorted(expect, key=expect.get))
    assert os.path.exists(f'{out}-id2idx-00000-of-00001.parquet')
    assert sorted(zip(encoded.column('user_id').to_pylist(), encoded.column('idx').to_pylist())
                  ) == sorted((v, expect[v]) for v in ids)
    if fmt != 'jsonl':  # see test_index_ids_jsonl_keeps_every_column
        assert encoded.column_names == ['user_id', 'pos', 'idx']
        got = encoded.sort_by('pos').to_pydict()
        assert got['user_id'] == ids
        assert got['idx'] == [expect[v] for v in ids]
        if order == 'first_seen':
            assert got['idx'] == EXAMPLE_IDX
    assert 'records_read=7 records_ok=7 records_refused=0' in capsys.readouterr().out
    assert counts['records_read'] == 7 and read_errors(out) == []


def test_index_ids_files_in_name_order(tmp_path):
    # b.csv is written first and holds the smaller ids: a.csv still comes first
    write_input(tmp_path / 'b.csv', {'user_id': [1, 7, 9], 'pos': [3, 4, 5]}, 'csv')
    write_input(tmp_path / 'a.csv', {'user_id': [9, 5, 9], 'pos': [0, 1, 2]}, 'csv')
    _, id2idx, encoded, _ = run_index(tmp_path, str(tmp_path / '*.csv'), '--id_column',
                                      'user_id')
    assert id2idx.sort_by('idx').column('id').to_pylist() == [9, 5, 1, 7]
    assert encoded.sort_by('pos').column('idx').to_pylist() == [0, 1, 0, 2, 3, 0]


@pytest.mark.parametrize('fmt, kind, order', [
    ('csv', 'int', 'first_seen'), ('parquet', 'str', 'sorted'), ('jsonl', 'int', 'sorted'),
    ('csv', 'str', 'first_seen'),
])
def test_index_ids_random_against_oracle(tmp_path, fmt, kind, order):
    rng = np.random.default_rng(4)
    sizes = [150, 1, 230]
    all_ids = random_ids(rng, sum(sizes), 90, kind)
    score = np.round(rng.normal(size=sum(sizes)), 3).tolist()
    for i in (2, 0, 1):  # written out of name order
        lo, n = sum(sizes[:i]), sizes[i]
        write_input(tmp_path / f'part-{i}.{fmt}',
                    {'pos': list(range(lo, lo + n)), 'user_id': all_ids[lo:lo + n],
                     'score': score[lo:lo + n]}, fmt)
    expect = (oracle_first_seen if order == 'first_seen' else oracle_sorted)(all_ids)
    out, id2idx, encoded, counts = run_index(tmp_path, str(tmp_path / f'*.{fmt}'),
                                             '--id_column', 'user_id', '--order', order)
    assert dict(zip(id2idx.column('id').to_pylist(),
                    id2idx.column('idx').to_pylist())) == expect
    assert sorted(zip(encoded.column('user_id').to_pylist(),
                      encoded.column('idx').to_pylist())) == sorted(
        (v, expect[v]) for v in all_ids)
    if fmt != 'jsonl':  # see test_index_ids_jsonl_keeps_every_column
        got = encoded.sort_by('pos')
        assert got.column('pos').to_pylist() == list(range(len(all_ids)))
        assert got.column('user_id').to_pylist() == all_ids
        assert got.column('idx').to_pylist() == [expect[v] for v in all_ids]
        assert got.column_names == ['pos', 'user_id', 'score', 'idx']
        assert np.allclose(got.column('score').to_numpy(), score)
    assert counts['records_read'] == counts['records_ok'] == len(all_ids)


def test_index_ids_jsonl_keeps_every_column(tmp_path):
    write_input(tmp_path / 'e.jsonl', {'user_id': [3, 4, 3], 'item': ['a', 'b', 'c']}, 'jsonl')
    _, _, encoded, _ = run_index(tmp_path, str(tmp_path / 'e.jsonl'), '--id_column', 'user_id')
    assert encoded.column_names == ['user_id', 'item', 'idx']


def test_index_ids_dead_letters(tmp_path, capsys):
    (tmp_path / 'a.csv').write_text('user_id,item\nx,1\n,2\n  ,3\ny,4\nx,5\n')
    write_input(tmp_path / 'b.jsonl', {'user_id': [7, None, 8, 7]}, 'jsonl')
    with open(tmp_path / 'b.jsonl', 'a') as f:
        f.write('{"other": 1}\n')
    out, id2idx, encoded, counts = run_index(
        tmp_path, str(tmp_path / 'a.csv'), '--id_column', 'user_id',
        '--max_refused_fraction', '1')
    assert id2idx.sort_by('idx').column('id').to_pylist() == ['x', 'y']
    assert sorted(encoded.column('item').to_pylist()) == [1, 4, 5]
    assert encoded.sort_by('item').column('idx').to_pylist() == [0, 1, 0]
    errors = sorted(read_errors(out), key=lambda d: d['row'])
    assert [(os.path.basename(d['file']), d['row'], d['line'], d['reason'])
            for d in errors] == [('a.csv', 1, 3, 'missing id'), ('a.csv', 2, 4, 'empty id')]
    assert counts == {**counts, 'records_read': 5, 'records_ok': 3, 'records_refused': 2}
    assert 'records_read=5 records_ok=3 records_refused=2' in capsys.readouterr().out

    out, id2idx, encoded, counts = run_index(
        tmp_path / 'j', str(tmp_path / 'b.jsonl'), '--id_column', 'user_id',
        '--max_refused_fraction', '1')
    assert id2idx.sort_by('idx').column('id').to_pylist() == [7, 8]
    assert encoded.column('idx').to_pylist() == [0, 1, 0]
    assert sorted((d['row'], d['reason']) for d in read_errors(out)) == [
        (1, 'missing id'), (4, 'missing id')]
    assert counts['records_read'] == counts['records_ok'] + counts['records_refused'] == 5


def test_index_ids_mixed_csv_types(tmp_path):
    # a.csv: numeric scores; b.csv: a score that is text and an id that is not an
    # integer (the block is then parsed as text): each column keeps the type the first
    # file gives it, and only the rows of a value that is not of it are refused
    (tmp_path / 'a.csv').write_text('user_id,score\n5,1.5\n6,2\n')
    (tmp_path / 'b.csv').write_text('user_id,score\n6,n/a\nseven,3\n 5,4\n')
    out, id2idx, encoded, counts = run_index(tmp_path, str(tmp_path / '*.csv'),
                                             '--id_column', 'user_id',
                                             '--max_refused_fraction', '1')
    assert id2idx.schema.field('id').type == pa.int64()
    assert id2idx.sort_by('idx').column('id').to_pylist() == [5, 6]
    assert encoded.schema.field('user_id').type == pa.int64()
    assert encoded.schema.field('score').type == pa.float64()
    rows = sorted(zip(encoded.column('user_id').to_pylist(), encoded.column('score').to_pylist(),
                      encoded.column('idx').to_pylist()))
    assert rows == [(5, 1.5, 0), (5, 4.0, 0), (6, 2.0, 1)]
    assert sorted((d['row'], d['reason'], d['record']) for d in read_errors(out)) == [
        (0, "value in 'score' is not a number", {'user_id': 6, 'score': 'n/a'}),
        (1, 'id is not an integer', {'user_id': 'seven', 'score': '3'})]
    assert counts['records_read'] == 5 and counts['records_refused'] == 2


def test_index_ids_a_later_file_changes_no_column_type(tmp_path):
    """Issue 18: one string id in a later file turned the integer column v into text for
    every row. Now only the offending row is refused, and v stays an integer column."""
    for name, bad, reason, record in (
            ('id', 'x,30', 'id is not an integer', {'user_id': 'x', 'v': '30'}),
            ('v', '4,abc', "value in 'v' is not an integer", {'user_id': 4, 'v': 'abc'}),
            ('both', '5,2.5', "value in 'v' is not an integer", {'user_id': 5, 'v': '2.5'})):
        d = tmp_path / name
        d.mkdir()
        (d / 'a.csv').write_text('user_id,v\n1,10\n2,20\n')
        (d / 'b.csv').write_text(f'user_id,v\n{bad}\n3,40\n')
        out, id2idx, encoded, counts = run_index(d, str(d / '*.csv'), '--id_column', 'user_id',
                                                 '--max_refused_fraction', '1')
        assert encoded.schema.field('v').type == pa.int64()
        assert sorted(zip(encoded.column('user_id').to_pylist(),
                          encoded.column('v').to_pylist())) == [(1, 10), (2, 20), (3, 40)]
        assert [(os.path.basename(e['file']), e['row'], e['line'], e['reason'], e['record'])
                for e in read_errors(out)] == [('b.csv', 0, 2, reason, record)]
        assert counts['records_read'] == 4 and counts['records_ok'] == 3


def test_index_ids_json_and_parquet_columns_keep_their_type(tmp_path):
    rows = [{'id': 1, 'v': 1, 's': 'a', 'b': True, 'o': {'k': 1}, 't': '2020-01-01'},
            {'id': 2, 'v': 2.0, 's': 'b', 'b': False, 'o': {'k': 2}, 't': 'x'},
            {'id': 3, 'v': 2.5}, {'id': 4, 's': 5}, {'id': 5, 'v': '7'}, {'id': 6, 'b': 1},
            {'id': 7, 't': '2020-01-02 03:04:05'}, {'id': 8, 's': 'NaN'}]
    (tmp_path / 'a.jsonl').write_text(json.dumps(rows[0]) + '\n')
    (tmp_path / 'b.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows[1:]))
    out, _, encoded, counts = run_index(tmp_path, str(tmp_path / '*.jsonl'), '--id_column', 'id',
                                        '--max_refused_fraction', '1')
    types = dict(zip(encoded.schema.names, encoded.schema.types))
    assert (types['v'], types['s'], types['b'], types['t']) == (
        pa.int64(), pa.string(), pa.bool_(), pa.string())
    got = {r['id']: r for r in encoded.to_pylist()}
    assert sorted(got) == [1, 2, 7, 8]
    assert (got[2]['v'], got[7]['t'], got[1]['o'], got[8]['s']) == (
        2, '2020-01-02 03:04:05', {'k': 1}, 'NaN')   # text stays text
    assert [(e['row'], e['reason']) for e in read_errors(out)] == [
        (1, "value in 'v' is not an integer (a number with a fraction)"),
        (2, "value in 's' is a number, the column holds text"),
        (3, "value in 'v' is text, the column holds a number"),
        (4, "value in 'b' is a number, the column holds a boolean")]
    assert counts['records_read'] == 8 and counts['records_refused'] == 4

    p = tmp_path / 'p'
    p.mkdir()
    pq.write_table(pa.table({'id': [1], 'v': [1], 'c': ['p']}), str(p / 'a.parquet'))
    pq.write_table(pa.table({'id': [2], 'v': pa.array([2], pa.int32()),
                             'c': pa.array(['q'], pa.large_string())}), str(p / 'b.parquet'))
    pq.write_table(pa.table({'id': [3], 'v': ['3'], 'c': ['r']}), str(p / 'c.parquet'))
    pq.write_table(pa.table({'id': [4, 5], 'v': [4.0, 4.5],
                             'c': pa.array(['s', 't']).dictionary_encode()}),
                   str(p / 'd.parquet'))
    out, _, encoded, _ = run_index(p, str(p / '*.parquet'), '--id_column', 'id',
                                   '--max_refused_fraction', '1')
    assert encoded.schema.field('v').type == pa.int64()
    assert encoded.schema.field('c').type == pa.string()
    assert sorted((r['id'], r['v'], r['c']) for r in encoded.to_pylist()) == [
        (1, 1, 'p'), (2, 2, 'q'), (4, 4, 's')]
    assert [(os.path.basename(e['file']), e['reason']) for e in read_errors(out)] == [
        ('c.parquet', "value in 'v' is text, the column holds a number"),
        ('d.parquet', "value in 'v' is not an integer (a number with a fraction)")]


def _python_to_type(values, source, want):
    """The rule, value by value in plain Python: (the value in ``want`` or None, refused)."""
    out = []
    for v in values:
        if v is None:
            out.append((None, False))
        elif want == 'int64' and source == 'float64':
            ok = math.isfinite(v) and v == int(v) and abs(v) < 2 ** 53
            out.append((int(v) if ok else None, not ok))
        elif want == 'int64' and source in ('uint64', 'int64'):
            ok = -2 ** 63 <= v < 2 ** 63
            out.append((v if ok else None, not ok))
        elif want == 'int64':   # CSV text
            ok = re.fullmatch(r'\s*[-+]?[0-9]+\s*', v) and -2 ** 63 <= int(v) < 2 ** 63
            out.append((int(v) if ok else None, not ok))
        elif want == 'float64':   # from int64: only when the float is that integer
            ok = int(float(v)) == v
            out.append((float(v) if ok else None, not ok))
        else:   # float32 from float64
            with np.errstate(over='ignore'):
                f = float(np.float32(v))
            ok = f == v or (math.isnan(f) and math.isnan(v))
            out.append((f if ok else None, not ok))
    return out


@pytest.mark.parametrize('source, want', [('float64', 'int64'), ('uint64', 'int64'),
                                          ('string', 'int64'), ('int64', 'float64'),
                                          ('float64', 'float32')])
def test_to_type_against_python(source, want):
    from beamml.transforms.io.casts import to_type
    rng = np.random.default_rng(7)
    n = 2000
    if source == 'float64':
        v = np.concatenate([rng.integers(-10 ** 6, 10 ** 6, n) * 1.0, rng.normal(size=n) * 1e3,
                            [np.nan, np.inf, -np.inf, 2.0 ** 53, 2.0 ** 63, -2.0 ** 63, 0.1,
                             1e300, float(np.float32(0.1))]])
        values = [None if i % 97 == 0 else float(x) for i, x in enumerate(v)]
    elif source == 'uint64':
        values = [int(x) for x in rng.integers(0, 2 ** 64 - 1, n, dtype=np.uint64)] + [
            2 ** 63 - 1, 2 ** 63, 0]
    elif source == 'int64':
        values = [int(x) for x in rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64)] + [
            2 ** 53, 2 ** 53 + 1, -2 ** 63, 2 ** 63 - 1, 7]
    else:
        values = [rng.choice(['7', ' -3 ', '+5', '007', '1.5', 'x', '', '9223372036854775807',
                              '9223372036854775808', '-9223372036854775808', '1e3', '٣'])
                  for _ in range(300)]
    arr = pa.array(values, getattr(pa, source)())
    got, refusals = to_type(arr, getattr(pa, want)(), text=source == 'string')
    refused = np.zeros(len(values), bool)
    for mask, _ in refusals:
        refused |= mask
    expect = _python_to_type(values, source, want)
    if source == 'string':   # a blank text is a missing value, not a refused one
        expect = [(None, False) if not v.strip() else e for v, e in zip(values, expect)]
    assert got.type == getattr(pa, want)()

    def key(v):   # NaN equals NaN here
        return 'nan' if isinstance(v, float) and math.isnan(v) else v
    assert [(key(g), r) for g, r in zip(got.to_pylist(), refused.tolist())] == [
        (key(e), r) for e, r in expect]


def test_index_ids_flag_and_input_errors(tmp_path, capsys):
    write_input(tmp_path / 'e.csv', {'user_id': [1, 2], 'idx': [0, 0]}, 'csv')
    write_input(tmp_path / 'f.csv', {'user_id': [1, 2], 'item': [0, 0]}, 'csv')
    with pytest.raises(BeammlError, match='the following arguments are required: --id_column'):
        index_ids.run(['--input', str(tmp_path / 'f.csv'), '--output', str(tmp_path / 'o')])
    with pytest.raises(BeammlError, match="no id column 'uid'; its columns are user_id, item"):
        index_ids.run(['--input', str(tmp_path / 'f.csv'), '--id_column', 'uid',
                       '--output', str(tmp_path / 'o')])
    with pytest.raises(BeammlError, match="already has a column 'idx'"):
        index_ids.run(['--input', str(tmp_path / 'e.csv'), '--id_column', 'user_id',
                       '--output', str(tmp_path / 'o')])
    with pytest.raises(BeammlError, match="--order: invalid choice: 'random'"):
        index_ids.run(['--input', str(tmp_path / 'f.csv'), '--id_column', 'user_id',
                       '--output', str(tmp_path / 'o'), '--order', 'random'])


def test_index_ids_transform_many_small_batches(tmp_path):
    """The composite on batches of 7 rows, so ids meet across batches of one file."""
    rng = np.random.default_rng(5)
    ids = random_ids(rng, 120, 25, 'str')
    write_input(tmp_path / 'b.parquet', {'user_id': ids[50:], 'pos': list(range(50, 120))},
                'parquet')
    write_input(tmp_path / 'a.parquet', {'user_id': ids[:50], 'pos': list(range(50))},
                'parquet')
    expect = oracle_first_seen(ids)
    read = ReadTable(str(tmp_path / '*.parquet'), id_column='user_id', source_columns=True,
                     batch_rows=7)
    with beam.Pipeline(runner='FnApiRunner') as p:
        rows = p | 'Read' >> read
        out = rows.batches | 'Index' >> IndexIds('user_id', read.paths, id_type=pa.string(),
                                                 columns=read.layout.columns)
        pairs = out['id2idx'] | 'Pairs' >> beam.FlatMap(
            lambda t: zip(t.column('id').to_pylist(), t.column('idx').to_pylist()))
        assert_that(pairs, equal_to(list(expect.items())), label='CheckId2Idx')
        encoded = out['encoded'] | 'Rows' >> beam.FlatMap(lambda b: b.to_pylist())
        assert_that(encoded, equal_to([{'user_id': v, 'pos': i, 'idx': expect[v]}
                                       for i, v in enumerate(ids)]), label='CheckEncoded')


def test_index_ids_on_cloud_storage(gcs_bucket):
    """gs:// in and out (local emulator), and IdIndex saved to and loaded from gs://."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(f'{gcs_bucket}/in/b.csv') as f:
        f.write(b'user_id,item\n1,a\n9,b\n')
    with FileSystems.create(f'{gcs_bucket}/in/a.csv') as f:
        f.write(b'user_id,item\n9,c\n5,d\n')
    out = f'{gcs_bucket}/out/users'
    index_ids.run(['--input', f'{gcs_bucket}/in/*.csv', '--id_column', 'user_id',
                   '--output', out])
    index = IdIndex(f'{out}-id2idx-*.parquet')
    assert index.ids.tolist() == [9, 5, 1]
    assert index.get_users_idx([1, 9, 5]).tolist() == [2, 0, 1]
    with FileSystems.open(FileSystems.match([f'{out}-encoded-*.parquet'])[0]
                          .metadata_list[0].path) as f:
        encoded = pq.read_table(f)
    assert sorted(encoded.to_pylist(), key=lambda r: r['item']) == [
        {'user_id': 1, 'item': 'a', 'idx': 2}, {'user_id': 9, 'item': 'b', 'idx': 0},
        {'user_id': 9, 'item': 'c', 'idx': 0}, {'user_id': 5, 'item': 'd', 'idx': 1}]
    index.save(f'{gcs_bucket}/saved/index.parquet')
    assert IdIndex(f'{gcs_bucket}/saved/index.parquet').ids.tolist() == [9, 5, 1]


def test_index_ids_dataflow_translation_offline(gcs_bucket):
    """The job translates to a Dataflow batch job with our labels; nothing is submitted."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(f'{gcs_bucket}/in/a.csv') as f:
        f.write(b'user_id,item\n1,a\n')
    args, options = parse_args(index_ids.IndexIdsOptions, [
        '--input', f'{gcs_bucket}/in/*.csv', '--id_column', 'user_id',
        '--output', f'{gcs_bucket}/out/u', '--runner', 'DataflowRunner', '--dry_run', 'True',
        '--project', 'beamml-test', '--region', 'us-central1',
        '--temp_location', f'{gcs_bucket}/tmp'], prog='t')
    p = beam.Pipeline(options=options)
    index_ids.build(p, args)
    job = p.run().job
    assert job.proto.type == 1  # JOB_TYPE_BATCH
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {'ReadTable', 'IndexIds', 'IndexIds/BuildIdIndex', 'IndexIds/EncodeIds',
            'WriteId2Idx', 'WriteEncoded', 'WriteErrors'} <= names
