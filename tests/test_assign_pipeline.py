"""`beamml assign` end to end: run([...]) into tmp_path (and gs://), checked against numpy."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

from beamml.pipelines import assign
from beamml.pipelines._platform.main import main_wrapper
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import CentroidModel, set_latest


def brute(X, C):
    E = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    return E.argmin(1), np.sqrt(E.min(1)), np.sqrt(E)


def make_points(path, n=300, d=3, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 4
    cols = {'id': pa.array(np.arange(n, dtype=np.int64) if ids is None else ids)}
    cols.update({f'x{j}': pa.array(X[:, j]) for j in range(d)})
    table = pa.table(cols)
    if path.endswith('.csv'):
        pcsv.write_csv(table, path)
    else:
        with FileSystems.create(path) as f:
            pq.write_table(table, f)
    return X


def save_model(model_dir, k=4, d=3, seed=1, version=None):
    C = np.random.default_rng(seed).normal(size=(k, d)) * 4
    m = CentroidModel(C, version=version)
    m.save(model_dir)
    return m


def read_output(prefix, fmt='parquet'):
    paths = sorted(p.path for r in FileSystems.match([f'{prefix}-?????-of-?????.{fmt}'])
                   for p in r.metadata_list)
    assert paths, f'no output at {prefix}'
    tables = []
    for p in paths:
        with FileSystems.open(p) as f:
            tables.append(pq.read_table(f) if fmt == 'parquet' else pcsv.read_csv(f))
    return pa.concat_tables(tables).sort_by('id')


def dead_letters(prefix):
    out = []
    for p in glob.glob(f'{prefix}-errors-*.jsonl'):
        with open(p) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def test_assign_parquet_matches_numpy(tmp_path, capsys):
    X = make_points(str(tmp_path / 'pts.parquet'))
    m = save_model(str(tmp_path / 'models'))
    out = str(tmp_path / 'out' / 'assigned')
    assign.run(['--input', str(tmp_path / 'pts.parquet'), '--model', str(tmp_path / 'models'),
                '--output', out])
    t = read_output(out)
    assert t.schema == pa.schema([('id', pa.int64()), ('cluster', pa.int64()),
                                  ('distance', pa.float64()), ('model_version', pa.string())])
    labels, dist, _ = brute(X, m.centers)
    np.testing.assert_array_equal(t.column('id').to_numpy(), np.arange(len(X)))
    np.testing.assert_array_equal(t.column('cluster').to_numpy(), labels)
    np.testing.assert_allclose(t.column('distance').to_numpy(), dist, rtol=1e-12)
    assert set(t.column('model_version').to_pylist()) == {m.version}
    summary = assign.read_summary(out)
    assert summary['cluster_sizes'] == np.bincount(labels, minlength=4).tolist()
    assert summary['model_version'] == m.version and summary['points'] == len(X)
    printed = capsys.readouterr().out
    assert 'records_read=300 records_ok=300 records_refused=0' in printed
    assert 'cluster sizes: ' + ' '.join(map(str, summary['cluster_sizes'])) in printed
    assert dead_letters(out) == []


def test_all_distances_csv_output_and_string_ids(tmp_path):
    ids = [f'p{i}' for i in range(120)]
    X = make_points(str(tmp_path / 'pts.csv'), n=120, d=2, ids=ids)
    m = save_model(str(tmp_path / 'models'), k=3, d=2)
    out = str(tmp_path / 'assigned')
    assign.run(['--input', str(tmp_path / 'pts.csv'), '--model', str(tmp_path / 'models'),
                '--output', out, '--all_distances', '--output_format', 'csv'])
    t = read_output(out, 'csv')
    assert t.column_names == ['id', 'cluster', 'distance', 'distances_0', 'distances_1',
                              'distances_2', 'model_version']
    order = np.argsort(ids)
    labels, dist, every = brute(X[order], m.centers)
    assert t.column('id').to_pylist() == sorted(ids)
    np.testing.assert_array_equal(t.column('cluster').to_numpy(), labels)
    for j in range(3):
        np.testing.assert_allclose(t.column(f'distances_{j}').to_numpy(), every[:, j],
                                   rtol=1e-12)


def test_all_distances_parquet_column(tmp_path):
    X = make_points(str(tmp_path / 'pts.parquet'), n=50)
    m = save_model(str(tmp_path / 'm'), k=5)
    out = str(tmp_path / 'a')
    assign.run(['--input', str(tmp_path / 'pts.parquet'), '--model', str(tmp_path / 'm'),
                '--output', out, '--all_distances'])
    t = read_output(out)
    assert t.schema.field('distances').type == pa.list_(pa.float64(), 5)
    every = np.array(t.column('distances').to_pylist())
    np.testing.assert_allclose(every, brute(X, m.centers)[2], rtol=1e-12)


def test_model_dimension_is_checked_before_the_run(tmp_path):
    make_points(str(tmp_path / 'pts.parquet'), d=3)
    m = save_model(str(tmp_path / 'models'), d=4, version='v1')
    out = str(tmp_path / 'out' / 'a')
    with pytest.raises(BeammlError, match='model v1 .* has d=4 features but the input .* has 3'):
        assign.run(['--input', str(tmp_path / 'pts.parquet'), '--model',
                    str(tmp_path / 'models'), '--output', out])
    assert not glob.glob(out + '*')  # nothing ran
    assert m.d == 4


def test_missing_or_corrupt_model_is_a_clear_error(tmp_path, capsys):
    make_points(str(tmp_path / 'pts.parquet'))
    args = ['--input', str(tmp_path / 'pts.parquet'), '--output', str(tmp_path / 'a')]
    code = main_wrapper(assign.run, args + ['--model', str(tmp_path / 'nothing')],
                        prog='beamml assign')
    err = capsys.readouterr().err
    assert code == 2 and 'beamml assign: error: no model at' in err
    assert str(tmp_path / 'nothing') in err
    bad = tmp_path / 'models' / 'v1' / 'model.json'
    bad.parent.mkdir(parents=True)
    bad.write_text('{"centers": [[1.0, 2.0, 3.0], [4.0, ')
    with pytest.raises(BeammlError, match='corrupt or incomplete') as e:
        assign.run(args + ['--model', str(tmp_path / 'models' / 'v1')])
    assert str(bad) in str(e.value)


def test_latest_and_rollback_choose_the_model(tmp_path):
    X = make_points(str(tmp_path / 'pts.parquet'))
    d = str(tmp_path / 'models')
    m1 = save_model(d, seed=1, version='v1')
    m2 = save_model(d, seed=2, version='v2')
    runs = {}
    for name in ('latest', 'rollback', 'explicit'):
        if name == 'rollback':
            set_latest(d, 'v1')
        model = os.path.join(d, 'v2', 'model.json') if name == 'explicit' else d
        out = str(tmp_path / name)
        assign.run(['--input', str(tmp_path / 'pts.parquet'), '--model', model,
                    '--output', out])
        runs[name] = read_output(out)
    for name, m in (('latest', m2), ('rollback', m1), ('explicit', m2)):
        t = runs[name]
        assert set(t.column('model_version').to_pylist()) == {m.version}
        np.testing.assert_array_equal(t.column('cluster').to_numpy(),
                                      brute(X, m.centers)[0])


def test_dead_letters_and_accounting(tmp_path, capsys):
    # a CSV with a bad value (refused by the reader) and a NaN (let through by
    # --allow_nan, then refused by the assignment step: no nearest centre)
    rows = ['id,x0,x1', '0,1.0,2.0', '1,oops,2.0', '2,nan,1.0', '3,-1.0,0.5', '4,3.0,3.0']
    (tmp_path / 'pts.csv').write_text('\n'.join(rows) + '\n')
    m = save_model(str(tmp_path / 'models'), k=2, d=2)
    out = str(tmp_path / 'a')
    assign.run(['--input', str(tmp_path / 'pts.csv'), '--model', str(tmp_path / 'models'),
                '--output', out, '--allow_nan', '--max_refused_fraction', '0.5'])
    printed = capsys.readouterr().out
    assert 'records_read=5 records_ok=3 records_refused=2' in printed
    t = read_output(out)
    assert t.column('id').to_pylist() == [0, 3, 4]
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, 3.0]])
    np.testing.assert_array_equal(t.column('cluster').to_numpy(), brute(X, m.centers)[0])
    letters = sorted(dead_letters(out), key=lambda e: str(e['record']))
    assert len(letters) == 2
    reasons = ' | '.join(e['reason'] for e in letters)
    assert 'cannot assign' in reasons and "'x0'" in reasons
    # above the refused fraction: the run fails with a clear message
    with pytest.raises(BeammlError, match='were refused'):
        assign.run(['--input', str(tmp_path / 'pts.csv'), '--model', str(tmp_path / 'models'),
                    '--output', str(tmp_path / 'b'), '--allow_nan'])


def test_assign_on_gcs(gcs_bucket):
    X = make_points(f'{gcs_bucket}/in/pts.parquet', n=200)
    m = save_model(f'{gcs_bucket}/models', k=3)
    out = f'{gcs_bucket}/out/assigned'
    assign.run(['--input', f'{gcs_bucket}/in/*.parquet', '--model', f'{gcs_bucket}/models',
                '--output', out])
    t = read_output(out)
    np.testing.assert_array_equal(t.column('cluster').to_numpy(), brute(X, m.centers)[0])
    assert set(t.column('model_version').to_pylist()) == {m.version}
    assert assign.read_summary(out)['points'] == 200
