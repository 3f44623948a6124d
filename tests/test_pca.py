"""Exact one-pass PCA against scikit-learn's PCA (svd_solver='full': it centres the data
before its SVD, so it is exact also far from the origin): the numpy fit, the CombineFn
over batches in any merge order, the projection, the model file, the edge cases, and
``beamml pca`` end to end."""
from __future__ import annotations

import glob
import json
import os
import warnings

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that

from beamml.pipelines.__main__ import main
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import points_batch
from beamml.transforms.pca import (ComputePCA, PCACombineFn, PCAModel, PCAStats, ProjectPCA,
                                   projection_schema)

sklearn_decomposition = pytest.importorskip('sklearn.decomposition')
RTOL = 1e-9


def sklearn_pca(X, n_components):
    return sklearn_decomposition.PCA(n_components, svd_solver='full').fit(X)


def data(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == 'random':
        return rng.normal(size=(300, 5))
    if kind == 'offset':   # far from the origin: raw sums of squares lose the variance
        return rng.normal(size=(400, 4)) * [1.0, 2.0, 0.5, 3.0] + 1e6
    if kind == 'correlated':   # variances from ~25 down to ~1e-4
        mix = np.array([[5.0, 0, 0, 0], [4.0, 1.0, 0, 0], [0, 0.5, 0.2, 0], [1, 0, 0, 0.01]])
        return rng.normal(size=(500, 4)) @ mix.T + [3.0, -7.0, 100.0, 0.5]
    if kind == 'd1':
        return rng.normal(size=(50, 1)) * 4.0 + 2.0
    raise ValueError(kind)


def assert_same_pca(model: PCAModel, X: np.ndarray, n_components: int):
    ref = sklearn_pca(X, n_components)
    assert model.n_samples == len(X) and model.n_components == n_components
    np.testing.assert_allclose(model.mean, ref.mean_, rtol=1e-13)
    np.testing.assert_allclose(model.explained_variance, ref.explained_variance_, rtol=RTOL)
    np.testing.assert_allclose(model.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=RTOL)
    assert model.components.shape == ref.components_.shape
    for got, want in zip(model.components, ref.components_):   # up to sign
        sign = np.sign(got @ want)
        np.testing.assert_allclose(got, sign * want, atol=1e-9)
    # the sign rule: the entry of largest magnitude is positive
    top = np.abs(model.components).argmax(axis=1)
    assert (model.components[np.arange(n_components), top] > 0).all()
    np.testing.assert_allclose(np.linalg.norm(model.components, axis=1), 1.0, rtol=1e-12)


CASES = [('random', 2), ('random', 5), ('offset', 2), ('offset', 4), ('correlated', 3),
         ('correlated', 4), ('d1', 1)]


@pytest.mark.parametrize('kind, n_components', CASES)
def test_fit_equals_sklearn(kind, n_components):
    X = data(kind)
    assert_same_pca(PCAModel.fit(X, n_components), X, n_components)


def _batches(X, rng, n_parts=9):
    cuts = np.sort(rng.choice(np.arange(1, len(X)), n_parts - 2, replace=False))
    bounds = np.r_[0, cuts, cuts[0], len(X)]   # a repeated cut: an empty batch
    bounds.sort()
    return [points_batch(pa.array(np.arange(lo, hi)), X[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize('kind, n_components', CASES)
def test_combiner_in_any_merge_order_equals_sklearn(kind, n_components):
    X = data(kind, seed=1)
    rng = np.random.default_rng(2)
    batches = _batches(X, rng)
    assert any(b.num_rows == 0 for b in batches) and len({b.num_rows for b in batches}) > 3
    fn = PCACombineFn()
    for trial in range(3):   # batches in random groups, groups merged in random order
        order = rng.permutation(len(batches))
        groups = np.array_split(order, rng.integers(1, len(batches)))
        accs = []
        for g in groups:
            acc = fn.create_accumulator()
            for i in g:
                acc = fn.add_input(acc, batches[i])
            accs.append(acc)
        accs.insert(int(rng.integers(len(accs) + 1)), fn.create_accumulator())
        stats = fn.extract_output(fn.merge_accumulators(accs))
        assert_same_pca(PCAModel.from_stats(stats, n_components), X, n_components)


def test_far_from_the_origin_raw_sums_would_fail():
    """The 1e6 offset case can tell: X^T X - n mean mean^T (scikit-learn's covariance_eigh
    solver does this) is off by far more than the 1e-9 the centred sums keep."""
    X = data('offset')
    ref = sklearn_pca(X, 4).explained_variance_
    n, mean = len(X), X.mean(axis=0)
    raw = (X.T @ X - n * np.outer(mean, mean)) / (n - 1)
    raw_variance = np.sort(np.linalg.eigvalsh(raw))[::-1]
    assert np.abs(raw_variance / ref - 1).max() > 1e-6
    np.testing.assert_allclose(PCAModel.fit(X, 4).explained_variance, ref, rtol=RTOL)


def test_transform_equals_sklearn_up_to_sign():
    X = data('offset', seed=3)
    model, ref = PCAModel.fit(X, 3), sklearn_pca(X, 3)
    got, want = model.transform(X), ref.transform(X)
    signs = np.sign(np.einsum('ij,ij->j', got, want))
    np.testing.assert_allclose(got, want * signs, atol=1e-8)
    assert model.transform(X[:0]).shape == (0, 3)


def test_project_pca_in_a_pipeline_with_a_side_input_and_a_model():
    X = data('correlated', seed=4)
    rng = np.random.default_rng(5)
    batches = _batches(X, rng)
    want = sklearn_pca(X, 2).transform(X)

    def check(out):
        table = pa.Table.from_batches(out)
        assert table.schema.equals(projection_schema(pa.int64(), 2))
        ids = table.column('id').to_numpy()
        assert sorted(ids.tolist()) == list(range(len(X)))
        P = np.asarray(table.column('projection').combine_chunks().flatten()).reshape(-1, 2)
        signs = np.sign(np.einsum('ij,ij->j', P, want[ids]))
        np.testing.assert_allclose(P, want[ids] * signs, atol=1e-9)

    with beam.Pipeline(runner='FnApiRunner') as p:
        points = p | beam.Create(batches, reshuffle=False)
        model = points | 'Fit' >> ComputePCA(2)
        assert_that(points | 'BySide' >> ProjectPCA(model), check, label='CheckSide')
        assert_that(points | 'ByModel' >> ProjectPCA(PCAModel.fit(X, 2)), check,
                    label='CheckModel')
        assert_that(model, lambda ms: assert_same_pca(ms[0], X, 2), label='CheckModelFit')


def test_compute_pca_of_nothing():
    def empty():
        return beam.Create([], reshuffle=False).with_output_types(pa.RecordBatch)

    with pytest.raises(Exception, match='PCA needs at least one row'):
        with beam.Pipeline(runner='FnApiRunner') as p:
            _ = p | empty() | ComputePCA(1)
    with beam.Pipeline(runner='FnApiRunner') as p:   # allow_empty: no model, no projection
        points = p | empty()
        model = points | ComputePCA(1, allow_empty=True)
        assert_that(model, lambda ms: len(ms) == 0 or pytest.fail(str(ms)), label='NoModel')
        assert_that(points | ProjectPCA(model), lambda out: len(out) == 0 or pytest.fail(),
                    label='NoRows')


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize('X, n_components, message', [
    (np.zeros((0, 3)), 1, 'at least one row'),
    (np.ones((5, 3)), 0, 'n_components must be >= 1'),
    (np.ones((5, 3)), 2.0, 'n_components must be an integer'),
    (np.arange(15.0).reshape(5, 3), 4, r'min\(n_samples, n_features\) = min\(5, 3\) = 3'),
    (np.arange(6.0).reshape(2, 3), 3, r'min\(2, 3\) = 2'),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), 1, 'NaN or inf'),
    (np.array([[1.0, 2.0], [np.inf, 3.0]]), 1, 'row 1 of a batch of 2 holds NaN or inf'),
    (np.array([[1e200, 0.0], [-1e200, 1.0]]), 1, 'overflows float64'),
    (np.arange(3.0), 1, 'must be 2-D'),
])
def test_refused_fits_are_one_line(X, n_components, message):
    with pytest.raises(BeammlError, match=message) as e:
        PCAModel.fit(X, n_components)
    assert '\n' not in str(e.value)


def test_nan_in_a_batch_names_the_row_id():
    batch = points_batch(pa.array(['a', 'b', 'c']), np.array([[1.0, 2], [3, np.nan], [5, 6]]))
    fn = PCACombineFn()
    with pytest.raises(BeammlError, match="the row with id 'b' holds NaN or inf"):
        fn.add_input(fn.create_accumulator(), batch)


def test_one_point_and_constant_points_as_sklearn():
    """One point: variance 0/0 (ddof=1) = NaN, ratio NaN; constant points: variance 0,
    ratio 0/0 = NaN: what scikit-learn gives."""
    one = np.array([[1.0, 2.0, 3.0]])
    model = PCAModel.fit(one, 1)
    with warnings.catch_warnings():   # scikit-learn's 0/0
        warnings.simplefilter('ignore', RuntimeWarning)
        ref = sklearn_pca(one, 1)
    assert np.isnan(ref.explained_variance_).all() and np.isnan(ref.explained_variance_ratio_)
    assert np.isnan(model.explained_variance).all()
    assert np.isnan(model.explained_variance_ratio).all()
    np.testing.assert_array_equal(model.mean, one[0])
    assert model.n_samples == 1
    np.testing.assert_allclose(model.transform(one), 0.0)
    with pytest.raises(BeammlError, match=r'min\(1, 3\) = 1'):
        PCAModel.fit(one, 2)

    same = np.repeat(one, 4, axis=0) + 1e6
    model = PCAModel.fit(same, 2)
    with warnings.catch_warnings():   # scikit-learn's 0/0
        warnings.simplefilter('ignore', RuntimeWarning)
        ref = sklearn_pca(same, 2)
    np.testing.assert_array_equal(model.explained_variance, ref.explained_variance_)   # 0
    assert np.isnan(model.explained_variance_ratio).all()
    assert np.isnan(ref.explained_variance_ratio_).all()
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(2), atol=1e-12)


def test_stats_of_different_dimensions_do_not_merge():
    a, b = PCAStats.of(np.ones((2, 3))), PCAStats.of(np.ones((2, 2)))
    with pytest.raises(BeammlError, match='3 and 2 features'):
        a.merge(b)


# ----------------------------------------------------------------------------- the file

def test_dict_and_file_round_trip(tmp_path):
    model = PCAModel.fit(data('offset'), 2)
    doc = model.to_dict()
    assert set(doc) == {'mean', 'components', 'explained_variance',
                        'explained_variance_ratio', 'n_samples'}
    assert np.array(doc['components']).shape == (2, 4)
    json.dumps(doc, allow_nan=False)
    for target in (str(tmp_path / 'm.json'), str(tmp_path / 'folder')):
        if not target.endswith('.json'):
            os.makedirs(target)
        written = model.save(target)
        assert written.endswith('.json') and os.path.exists(written)
        back = PCAModel.load(target)
        for name in ('mean', 'components', 'explained_variance', 'explained_variance_ratio'):
            np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
        assert back.n_samples == model.n_samples and back.n_components == 2
    nan_model = PCAModel.fit(np.array([[1.0, 2.0]]), 1)   # NaN variance: "NaN" in JSON
    nan_model.save(str(tmp_path / 'nan.json'))
    assert '"NaN"' in (tmp_path / 'nan.json').read_text()
    assert np.isnan(PCAModel.load(str(tmp_path / 'nan.json')).explained_variance).all()


def test_save_and_load_on_cloud_storage(gcs_bucket):
    model = PCAModel.fit(data('random'), 3)
    model.save(f'{gcs_bucket}/pca/run1')
    back = PCAModel.load(f'{gcs_bucket}/pca/run1/pca.json')
    np.testing.assert_array_equal(back.components, model.components)


@pytest.mark.parametrize('change, message', [
    (lambda d: d.pop('mean'), 'no mean'),
    (lambda d: d.update(components=[[1.0, 0.0, 0.0]]), 'inconsistent PCA model'),
    (lambda d: d.update(explained_variance=['x', 1.0]), "'x' is not a number"),
    (lambda d: d.update(n_samples=2.5), 'n_samples must be an integer'),
    (lambda d: d.update(n_samples=0), 'n_samples=0'),
])
def test_bad_model_documents_are_one_line(change, message, tmp_path):
    doc = PCAModel.fit(data('random'), 2).to_dict()
    change(doc)
    with pytest.raises(BeammlError, match=message):
        PCAModel.from_dict(doc)
    (tmp_path / 'bad.json').write_text('{"mean": [1')
    with pytest.raises(BeammlError, match='not valid JSON'):
        PCAModel.load(str(tmp_path / 'bad.json'))
    with pytest.raises(BeammlError, match='cannot read the PCA model'):
        PCAModel.load(str(tmp_path / 'none'))


# ----------------------------------------------------------------------------- the CLI

def write_csv(path, X, bad_rows=()):
    with open(path, 'w') as f:
        f.write('id,' + ','.join(f'x{j}' for j in range(X.shape[1])) + '\n')
        for i, row in enumerate(X):
            f.write(f'{i},' + ','.join(repr(float(v)) for v in row) + '\n')
        for line in bad_rows:
            f.write(line + '\n')


def test_cli_end_to_end(tmp_path, capsys):
    X = data('offset', seed=6)[:120, :3]
    write_csv(tmp_path / 'p.csv', X, bad_rows=['900,1,,2', '901,1,2,abc'])
    out = tmp_path / 'out'
    rc = main(['pca', '--input', str(tmp_path / 'p.csv'), '--n_components', '2',
               '--output', str(out), '--write_projection', '--max_refused_fraction', '0.05'])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    doc = json.loads((out / 'pca.json').read_text())
    assert set(doc) == {'mean', 'components', 'explained_variance',
                        'explained_variance_ratio', 'n_samples'}
    assert doc['n_samples'] == 120
    assert_same_pca(PCAModel.from_dict(doc), X, 2)
    ratios = ' '.join(f'{r:.6g}' for r in doc['explained_variance_ratio'])
    assert f'explained_variance_ratio: {ratios}' in printed
    assert f'model: {out}/pca.json' in printed
    assert 'records_read=122 records_ok=120 records_refused=2' in printed
    # the projections: every accepted row once, as scikit-learn's transform up to sign
    files = sorted(glob.glob(str(out / 'projection' / 'part-*-of-*.parquet')))
    assert files
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.num_rows == 120 and table.column_names == ['id', 'projection']
    ids = table.column('id').to_numpy()
    assert sorted(ids.tolist()) == list(range(120))
    P = np.asarray(table.column('projection').combine_chunks().flatten()).reshape(-1, 2)
    want = sklearn_pca(X, 2).transform(X)[ids]
    np.testing.assert_allclose(P, want * np.sign(np.einsum('ij,ij->j', P, want)), atol=1e-8)
    # the dead letters, and the commit
    letters = [json.loads(line) for f in glob.glob(str(out / 'pca-errors-*.jsonl'))
               for line in open(f)]
    assert sorted(str(d['record']['id']) for d in letters) == ['900', '901']
    assert {d['reason'] for d in letters} >= {"missing value in 'x1'"}
    success = json.loads((out / '_SUCCESS').read_text())
    assert success['pipeline'] == 'pca' and success['counts']['records_refused'] == 2
    # a rerun of a complete destination does nothing
    assert main(['pca', '--input', str(tmp_path / 'p.csv'), '--n_components', '2',
                 '--output', str(out), '--write_projection', '--max_refused_fraction', '0.05']) == 0
    assert 'is complete' in capsys.readouterr().out


def test_cli_csv_projection_without_project_flag(tmp_path, capsys):
    X = data('random', seed=7)[:40]
    write_csv(tmp_path / 'p.csv', X)
    assert main(['pca', '--input', str(tmp_path / 'p.csv'), '--n_components', '5',
                 '--output', str(tmp_path / 'o') + '/']) == 0
    assert not (tmp_path / 'o' / 'projection').exists()
    np.testing.assert_allclose(PCAModel.load(str(tmp_path / 'o')).explained_variance_ratio,
                               sklearn_pca(X, 5).explained_variance_ratio_, rtol=RTOL)
    assert 'projection:' not in capsys.readouterr().out


@pytest.mark.parametrize('flags, rows, message', [
    (['--n_components', '4'], None, '--n_components 4 is more than the 3 feature(s)'),
    (['--n_components', '0'], None, "--n_components: '0' is not an integer >= 1"),
    (['--n_components', '3'], 2, 'n_components=3 must be <= min(n_samples, n_features) '
                                 '= min(2, 3) = 2'),
    (['--n_components', '1', '--allow_nan'], 'nan',
     "the row with id 1 holds NaN or inf: read the points without allowing NaN"),
    (['--n_components', '1', '--max_refused_fraction', '1'], 'bad',
     'PCA needs at least one row, and none was accepted: 2 record(s) read, 2 refused'),
])
def test_cli_refusals_are_one_line_exit_2(flags, rows, message, tmp_path, capsys):
    X = data('random', seed=8)[:10, :3]
    if rows == 'nan':
        X[1, 2] = np.nan
    elif rows == 'bad':
        X = X[:0]
    elif rows is not None:
        X = X[:rows]
    write_csv(tmp_path / 'p.csv', X, bad_rows=['98,1,,2', '99,,3,4'] if rows == 'bad' else ())
    rc = main(['pca', '--input', str(tmp_path / 'p.csv'), '--output', str(tmp_path / 'o')]
              + flags)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'beamml pca: error' in line]
    assert rc == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / 'o').exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.beamml-')]


def test_translates_to_a_dataflow_batch_job_offline(gcs_bucket):
    """The graph with --write_projection builds as a Dataflow batch job (nothing is submitted)."""
    from apache_beam.io.filesystems import FileSystems
    from beamml.pipelines import pca
    from beamml.pipelines._platform.cli import parse_args
    with FileSystems.create(f'{gcs_bucket}/in/p.csv') as f:
        f.write(b'id,a,b\n1,0,0\n2,1,1\n3,5,4\n4,6,6\n')
    args, options = parse_args(pca.PCAOptions, [
        '--runner', 'DataflowRunner', '--dry_run', 'True', '--project', 'beamml-test',
        '--region', 'us-central1', '--temp_location', f'{gcs_bucket}/tmp',
        '--input', f'{gcs_bucket}/in/*.csv', '--feature_columns', 'a,b',
        '--n_components', '2', '--write_projection',
        '--output', f'{gcs_bucket}/out/pca/'], prog='t')
    assert args.write_projection   # and --project is Beam's, the Google Cloud project
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    assert options.view_as(GoogleCloudOptions).project == 'beamml-test'
    p = beam.Pipeline(options=options)
    pca.build(p, args)
    job = p.run().job
    assert job.proto.type == 1   # JOB_TYPE_BATCH
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {'ReadPoints', 'ComputePCA', 'ProjectPCA', 'WriteModel', 'WriteProjection',
            'WriteDeadLetters'} <= names, sorted(n for n in names if '/' not in n)
