"""`beamml evaluate` on hostile logs: a column missing from a block or a later file, dead
letters with file, row and line, names that clash with the reader's source columns."""
import glob
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from beamml.pipelines import evaluate
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.layout import Layout
from beamml.transforms.io.rows import RowBatch, table_checks
from beamml.transforms.metrics.ranking import _decode_lines, _decode_part, _encode_part


def read_json(path):
    with open(path) as f:
        return json.load(f)


def dead_letters(out):
    rows = []
    for path in glob.glob(os.path.join(out, 'evaluate-errors-*.jsonl')):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return sorted(rows, key=lambda d: (d['file'], d['row']))


def run(tmp_path, pattern, *flags, refused='1', name='eval'):
    out = str(tmp_path / name)
    evaluate.run(['--input', pattern, '--output', out, '--max_refused_fraction', refused,
                  *flags])
    return out, read_json(os.path.join(out, 'metrics.json'))


def assert_classification(overall, t, p):
    t, p = np.asarray(t), np.asarray(p)
    assert overall['precision'] == pytest.approx(precision_score(t, p))
    assert overall['recall'] == pytest.approx(recall_score(t, p))
    assert overall['accuracy'] == pytest.approx(accuracy_score(t, p))
    assert overall['f1'] == pytest.approx(f1_score(t, p))


# ----------------------------------------------------------------------------- case 1

# The brief's file, and the same lines in an order where the JSON reader's bisection
# gives the object without "prediction" a block of its own (no such column at all).
JSON_LOGS = {
    'brief': ('{"truth":1,"prediction":1}\n{bad\n{"truth":0}\n{"truth":1,"prediction":0}\n',
              1, 2, 2),
    'alone': ('{bad\n{"truth":0}\n{"truth":1,"prediction":0}\n{"truth":1,"prediction":1}\n',
              0, 1, 1),
}


@pytest.mark.parametrize('case', list(JSON_LOGS))
def test_json_object_without_prediction_is_refused_not_the_run(tmp_path, case):
    text, bad_row, missing_row, missing_line0 = JSON_LOGS[case]
    (tmp_path / 'l.jsonl').write_text(text)
    out, doc = run(tmp_path, str(tmp_path / 'l.jsonl'), '--task', 'classification')
    assert doc['counts'] == {'records_read': 4, 'records_ok': 2, 'records_refused': 2}
    assert_classification(doc['overall'], [1, 1], [1, 0])
    dead = dead_letters(out)
    assert [d['row'] for d in dead] == sorted([bad_row, missing_row])
    by_row = {d['row']: d for d in dead}
    assert by_row[bad_row]['reason'].startswith('invalid JSON line')
    assert by_row[bad_row]['line'] == bad_row + 1
    miss = by_row[missing_row]
    assert miss['reason'] == "missing prediction ('prediction')"
    assert miss['line'] == missing_line0 + 1
    assert miss['record'] == {'truth': 0} or miss['record'] == {'truth': 0, 'prediction': None}
    assert all(d['file'] == str(tmp_path / 'l.jsonl') for d in dead)


def test_json_missing_column_fails_only_through_max_refused_fraction(tmp_path):
    (tmp_path / 'l.jsonl').write_text(JSON_LOGS['alone'][0])
    out = str(tmp_path / 'eval')
    with pytest.raises(BeammlError) as e:   # the CLI prints it as one line, exit 2
        evaluate.run(['--input', str(tmp_path / 'l.jsonl'), '--task', 'classification',
                      '--output', out])
    msg = e.value.for_cli()
    assert '\n' not in msg and '--max_refused_fraction=0.01' in msg
    # nothing committed: the dead letters are kept beside the destination, and named
    assert msg.endswith('/evaluate-errors-*.jsonl') and '/.beamml-refused-eval-' in msg
    assert not os.path.exists(out)
    (kept,) = glob.glob(msg.rsplit(' ', 1)[1])
    assert len(open(kept).read().splitlines()) == 2


def test_later_json_file_without_a_column_is_refused(tmp_path):
    (tmp_path / 'a.jsonl').write_text('{"truth":1,"prediction":1}\n{"truth":0,"prediction":1}\n')
    (tmp_path / 'b.jsonl').write_text('{"truth":1}\n{"truth":0}\n')
    out, doc = run(tmp_path, str(tmp_path / '*.jsonl'), '--task', 'classification')
    assert doc['counts'] == {'records_read': 4, 'records_ok': 2, 'records_refused': 2}
    assert_classification(doc['overall'], [1, 0], [1, 1])
    dead = dead_letters(out)
    assert [(os.path.basename(d['file']), d['row'], d['line']) for d in dead] == [
        ('b.jsonl', 0, 1), ('b.jsonl', 1, 2)]
    assert {d['reason'] for d in dead} == {"missing prediction ('prediction')"}


@pytest.mark.parametrize('fmt', ['csv', 'parquet'])
def test_later_file_without_a_column_has_its_rows_refused(tmp_path, fmt):
    a = pa.table({'truth': [1, 0, 1], 'prediction': [1, 1, 0]})
    b = pa.table({'truth': [1, 0]})
    for name, t in (('a', a), ('b', b)):
        if fmt == 'csv':
            (tmp_path / f'{name}.csv').write_text(
                ','.join(t.column_names) + '\n' + ''.join(
                    ','.join(str(v) for v in r.values()) + '\n' for r in t.to_pylist()))
        else:
            pq.write_table(t, tmp_path / f'{name}.parquet')
    out, doc = run(tmp_path, str(tmp_path / f'*.{fmt}'), '--task', 'classification')
    assert doc['counts'] == {'records_read': 5, 'records_ok': 3, 'records_refused': 2}
    assert_classification(doc['overall'], [1, 0, 1], [1, 1, 0])
    dead = dead_letters(out)
    assert [(os.path.basename(d['file']), d['row']) for d in dead] == [
        (f'b.{fmt}', 0), (f'b.{fmt}', 1)]
    assert [d['line'] for d in dead] == ([2, 3] if fmt == 'csv' else [None, None])
    assert {d['reason'] for d in dead} == {
        "missing prediction ('prediction'): the file has no such column"}
    assert [d['record'] for d in dead] == [{'truth': 1}, {'truth': 0}]


def test_ranking_json_blocks_without_a_column_are_refused(tmp_path):
    lines = ['{bad',
             '{"q_id":1,"truth_relevance":1}',                    # no rank, alone
             '{"q_id":1,"predicted_rank":0,"truth_relevance":1}',
             '{"q_id":1,"predicted_rank":1,"truth_relevance":0}']
    (tmp_path / 'a.jsonl').write_text('\n'.join(lines) + '\n')
    (tmp_path / 'b.jsonl').write_text('{"q_id":2,"predicted_rank":0}\n')   # no relevance
    (tmp_path / 'c.jsonl').write_text('{"predicted_rank":0,"truth_relevance":1}\n')  # no q_id
    out, doc = run(tmp_path, str(tmp_path / '*.jsonl'), '--task', 'ranking', '--cutoff', '2')
    assert doc['counts'] == {'records_read': 6, 'records_ok': 2, 'records_refused': 4}
    o = doc['overall']
    assert o['n_queries'] == 1
    assert o['average_query_precision'] == pytest.approx(0.5)
    assert o['mean_average_precision'] == pytest.approx(1.0)
    got = [(os.path.basename(d['file']), d['row'], d['line'], d['reason'])
           for d in dead_letters(out)]
    assert got[0][:3] == ('a.jsonl', 0, 1) and got[0][3].startswith('invalid JSON line')
    assert got[1:] == [
        ('a.jsonl', 1, 2, "missing predicted_rank ('predicted_rank')"),
        ('b.jsonl', 0, 1, "missing truth_relevance ('truth_relevance')"),
        ('c.jsonl', 0, 1, "missing q_id ('q_id')")]


def test_json_block_without_the_slice_key_is_the_null_slice(tmp_path):
    # In one JSON block an object without the key has a null value (slice "model=null");
    # an object alone in its block, or a later file without the key, is treated the same,
    # so the slices do not depend on how the reader cut the file.
    (tmp_path / 'a.jsonl').write_text(
        '{bad\n{"truth":1,"prediction":1}\n'
        '{"truth":1,"prediction":0,"model":"m"}\n{"truth":0,"prediction":0}\n')
    (tmp_path / 'b.jsonl').write_text('{"truth":0,"prediction":1}\n')
    out, doc = run(tmp_path, str(tmp_path / '*.jsonl'), '--task', 'classification',
                   '--slice_by', 'model')
    assert doc['counts'] == {'records_read': 5, 'records_ok': 4, 'records_refused': 1}
    assert set(doc['slices']) == {'model=m', 'model=null'}
    assert_classification(doc['slices']['model=null'], [1, 0, 0], [1, 0, 1])
    assert doc['slices']['model=m']['accuracy'] == 0.0


def test_later_csv_without_the_slice_column_has_its_rows_refused(tmp_path):
    (tmp_path / 'a.csv').write_text('truth,prediction,model\n1,1,m\n0,0,\n')
    (tmp_path / 'b.csv').write_text('truth,prediction\n1,0\n')
    out, doc = run(tmp_path, str(tmp_path / '*.csv'), '--task', 'classification',
                   '--slice_by', 'model')
    assert doc['counts'] == {'records_read': 3, 'records_ok': 2, 'records_refused': 1}
    assert set(doc['slices']) == {'model=m', 'model=null'}
    (d,) = dead_letters(out)
    assert (os.path.basename(d['file']), d['row'], d['line']) == ('b.csv', 0, 2)
    assert d['reason'] == "missing slice column 'model': the file has no such column"


# ----------------------------------------------------------------------------- case 2, 3

def test_csv_value_errors_carry_their_line(tmp_path):
    (tmp_path / 'l.csv').write_text('truth,prediction\n1,1\nx,0\n0,1\n1,\n"0",yes\n')
    out, doc = run(tmp_path, str(tmp_path / 'l.csv'), '--task', 'classification')
    assert doc['counts'] == {'records_read': 5, 'records_ok': 2, 'records_refused': 3}
    assert_classification(doc['overall'], [1, 0], [1, 1])
    got = [(d['row'], d['line'], d['reason'], d['record']) for d in dead_letters(out)]
    assert got == [
        (1, 3, "truth ('truth') is not a binary label (0/1, true/false, T/F)",
         {'truth': 'x', 'prediction': '0'}),
        (3, 5, "missing prediction ('prediction')", {'truth': '1', 'prediction': None}),
        (4, 6, "prediction ('prediction') is not a binary label (0/1, true/false, T/F)",
         {'truth': '0', 'prediction': 'yes'})]


def test_parquet_dead_letters_have_a_row_and_no_line(tmp_path):
    pq.write_table(pa.table({'truth': [1, None, 0], 'prediction': [1, 1, 7]}),
                   tmp_path / 'l.parquet')
    out, doc = run(tmp_path, str(tmp_path / 'l.parquet'), '--task', 'classification')
    got = [(d['row'], d['line'], d['reason']) for d in dead_letters(out)]
    assert got == [(1, None, "missing truth ('truth')"),
                   (2, None, "prediction ('prediction') is not a binary label "
                             "(0/1, true/false, T/F)")]
    assert all(d['file'] == str(tmp_path / 'l.parquet') for d in dead_letters(out))


def test_ranking_dead_letters_name_file_row_and_line(tmp_path):
    (tmp_path / 'a.csv').write_text(
        'q_id,predicted_rank,truth_relevance\n'
        '1,0,1\n1,1,0\n'
        '2,x,1\n2,0,maybe\n'        # query 2: every row refused (bad rank, bad relevance)
        '3,0,1\n3,-1,1\n')          # a rank < 0
    (tmp_path / 'b.csv').write_text('q_id,predicted_rank,truth_relevance\n'
                                    '4,0,0\n1,1,1\n')  # (1, 1) again: a duplicate
    out, doc = run(tmp_path, str(tmp_path / '*.csv'), '--task', 'ranking', '--cutoff', '1')
    assert doc['counts'] == {'records_read': 8, 'records_ok': 4, 'records_refused': 4}
    assert doc['overall']['n_queries'] == 3   # 1, 3, 4 (all rows of 2 refused)
    got = [(os.path.basename(d['file']), d['row'], d['line'], d['reason'])
           for d in dead_letters(out)]
    assert got == [
        ('a.csv', 2, 4, "predicted_rank ('predicted_rank') is not an integer >= 0"),
        ('a.csv', 3, 5, "truth_relevance ('truth_relevance') is not a finite number or "
                        "true/false"),
        ('a.csv', 5, 7, "predicted_rank ('predicted_rank') is not an integer >= 0"),
        ('b.csv', 1, 3, 'duplicate (q_id, predicted_rank) pair; the row kept is a.csv:1')]


def test_ranking_duplicates_from_json_and_parquet_carry_line_or_none(tmp_path):
    (tmp_path / 'a.jsonl').write_text(
        '{"q_id":"a","predicted_rank":0,"truth_relevance":1}\n\n'
        '{"q_id":"a","predicted_rank":0,"truth_relevance":0}\n')
    out, _ = run(tmp_path, str(tmp_path / 'a.jsonl'), '--task', 'ranking')
    (d,) = dead_letters(out)
    assert (d['row'], d['line']) == (1, 3) and 'a.jsonl:0' in d['reason']
    pq.write_table(pa.table({'q_id': [5, 5, 5], 'predicted_rank': [0, 1, 1],
                             'truth_relevance': [1, 0, 1]}), tmp_path / 'p.parquet')
    out, _ = run(tmp_path, str(tmp_path / 'p.parquet'), '--task', 'ranking', name='eval2')
    (d,) = dead_letters(out)
    assert (d['row'], d['line']) == (2, None) and d['file'].endswith('p.parquet')


@pytest.mark.parametrize('fmt', ['csv', 'jsonl', 'parquet'])
def test_a_duplicate_dead_letter_holds_the_row_as_read(tmp_path, fmt):
    """The duplicate (q_id, predicted_rank) is found after the rows were parsed and
    shuffled; its dead letter's record is still the row as read, every column with its
    own value (not the parsed q_id, rank and relevance), as a bad row's record is."""
    rows = [{'q_id': 7, 'predicted_rank': 0, 'truth_relevance': 2.5, 'doc': 'd1', 'model': 'm'},
            {'q_id': 7, 'predicted_rank': 1, 'truth_relevance': 0.0, 'doc': 'd2', 'model': 'm'},
            {'q_id': 8, 'predicted_rank': -1, 'truth_relevance': 1.0, 'doc': 'd3',
             'model': 'm'},
            {'q_id': 7, 'predicted_rank': 0, 'truth_relevance': 0.5, 'doc': 'd9', 'model': 'n'}]
    path = tmp_path / f'logs.{fmt}'
    if fmt == 'parquet':
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == 'jsonl':
        path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    else:
        path.write_text('q_id,predicted_rank,truth_relevance,doc,model\n' + ''.join(
            ','.join(str(v) for v in r.values()) + '\n' for r in rows))
    out, _ = run(tmp_path, str(path), '--task', 'ranking')
    bad, duplicate = dead_letters(out)
    assert 'not an integer >= 0' in bad['reason'] and bad['record'] == rows[2]
    assert duplicate['reason'] == ('duplicate (q_id, predicted_rank) pair; the row kept is '
                                   f'logs.{fmt}:0')
    assert (duplicate['row'], duplicate['line']) == (3, {'csv': 5, 'jsonl': 4}.get(fmt))
    assert duplicate['record'] == rows[3], duplicate


@pytest.mark.parametrize('case', ['consecutive', 'blank_lines', 'shuffled', 'unknown',
                                  'some_unknown', 'none'])
def test_fragment_encoding_keeps_the_lines(case):
    rng = np.random.default_rng(3)
    n = 300
    q = np.sort(rng.integers(0, 40, n))
    rank = np.concatenate([np.arange(c) for c in np.unique(q, return_counts=True)[1]])
    row = np.arange(n) + 10
    line = row + 2 + (np.cumsum(rng.random(n) < 0.05) if case != 'consecutive' else 0)
    if case == 'shuffled':
        perm = rng.permutation(n)
        q, rank, row, line = q[perm], rank[perm], row[perm], line[perm]
    if case == 'unknown':
        line = np.full(n, -1)
    if case == 'some_unknown':
        line[::7] = -1
    part = _encode_part('f', q, rank, rng.random(n) < 0.5, row,
                        None, None if case == 'none' else line)
    part = pickle.loads(pickle.dumps(part))
    want = np.full(n, -1) if case == 'none' else line
    np.testing.assert_array_equal(_decode_lines(part), want)
    np.testing.assert_array_equal(_decode_part(part)[4](), row)
    if case == 'consecutive':   # line - row is one constant: a single run
        assert part[7][0] == 'd' and part[7][1][0] == 'r' and len(part[7][1][1][1]) == 1


def test_index_ids_output_has_no_line_column_and_refuses_a_later_source_key(tmp_path):
    from beamml.pipelines import index_ids
    (tmp_path / 'a.csv').write_text('user_id,v\n7,a\n3,b\n')
    out = str(tmp_path / 'o' / 'users')
    index_ids.run(['--input', str(tmp_path / 'a.csv'), '--id_column', 'user_id',
                   '--output', out, '--output_format', 'csv'])
    (shard,) = glob.glob(f'{out}-encoded-*.csv')
    assert open(shard).readline().strip().replace('"', '') == 'user_id,v,idx'
    (tmp_path / 'b.jsonl').write_text('{"user_id":1}\n')
    (tmp_path / 'c.jsonl').write_text('{"user_id":2,"_row":9}\n')
    with pytest.raises(BeammlError) as e:
        index_ids.run(['--input', str(tmp_path / '*.jsonl'), '--id_column', 'user_id',
                       '--output', str(tmp_path / 'o2' / 'users')])
    msg = e.value.for_cli()
    assert '\n' not in msg and "'_row'" in msg and 'c.jsonl' in msg


# ----------------------------------------------------------------------------- source columns

def test_table_checks_appends_the_line_column():
    layout = Layout(input_format='csv', columns=('id', 'v'), id_column='id', id_type='string',
                    feature_columns=(), list_features=False, dimension=0)
    t = pa.record_batch({'id': pa.array(['a', None, 'c']), 'v': pa.array([1, 2, 3])})
    rb = RowBatch(t, np.array([0, 1, 3]), np.array([2, 3, 6]))
    out, dead = table_checks(rb, layout, 'f.csv', source_columns=True)
    assert SOURCE_COLUMNS == ('_file', '_row', '_line')
    assert out.column_names == ['id', 'v', '_file', '_row', '_line']
    assert out.column('_row').to_pylist() == [0, 3]
    assert out.column('_line').to_pylist() == [2, 6]
    assert out.schema.field('_line').type == pa.int64()
    assert [(d['row'], d['line']) for d in dead] == [(1, 3)]
    rb = RowBatch(t.slice(0, 1), np.array([7]), None)   # a binary format: no lines
    out, _ = table_checks(rb, layout, 'f.parquet', source_columns=True)
    assert out.column('_line').to_pylist() == [None]
    assert out.schema.field('_line').type == pa.int64()
    out, _ = table_checks(rb, layout, 'f.parquet', source_columns=False)
    assert out.column_names == ['id', 'v']


@pytest.mark.parametrize('column', ['_file', '_row', '_line'])
def test_a_log_column_named_like_a_source_column_is_an_error(tmp_path, column):
    (tmp_path / 'a.csv').write_text(f'truth,prediction,{column}\n1,1,5\n')
    with pytest.raises(BeammlError, match=f"'{column}'.*rename"):
        evaluate.run(['--input', str(tmp_path / 'a.csv'), '--task', 'classification',
                      '--output', str(tmp_path / 'out')])
    assert not os.path.exists(tmp_path / 'out' / 'metrics.json')


def test_a_later_json_key_named_like_a_source_column_is_one_line(tmp_path):
    (tmp_path / 'a.jsonl').write_text('{"truth":1,"prediction":1}\n')
    (tmp_path / 'b.jsonl').write_text('{"truth":1,"prediction":1,"_line":4}\n')
    with pytest.raises(BeammlError) as e:
        evaluate.run(['--input', str(tmp_path / '*.jsonl'), '--task', 'classification',
                      '--output', str(tmp_path / 'out')])
    msg = e.value.for_cli()
    assert '\n' not in msg and "'_line'" in msg and 'b.jsonl' in msg and 'rename' in msg


def test_slice_by_a_source_column_is_refused(tmp_path):
    (tmp_path / 'a.csv').write_text('truth,prediction\n1,1\n')
    with pytest.raises(BeammlError, match="cannot --slice_by '_line'"):
        evaluate.run(['--input', str(tmp_path / 'a.csv'), '--task', 'classification',
                      '--slice_by', '_line', '--output', str(tmp_path / 'out')])
