"""CentroidModel artifact (local and gs://) and the RunInference CentroidModelHandler."""
from __future__ import annotations

import json
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelMetadata, PredictionResult, RunInference
from apache_beam.testing.util import assert_that

import beamml.transforms.model.artifact as artifact
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.model import (CentroidModel, CentroidModelHandler, latest_version,
                                     list_versions, set_latest)


def make_model(seed=0, k=4, d=3, **kw):
    rng = np.random.default_rng(seed)
    # values whose decimal text is long: round-trip must still be exact
    centers = rng.normal(size=(k, d)) * 1e3 / 7
    meta = dict(input_pattern='gs://b/points/*.parquet', n_iter=5, inertia=123.456789012345678,
                inertia_history=[400.1, 200.2, 150.3, 130.4, 123.456789012345678],
                stop_reason='converged', cluster_sizes=list(range(10, 10 + k)),
                config={'k': np.int64(k), 'tol': 1e-4, 'init': 'k-means++',
                        'random_state': None})
    meta.update(kw)
    return CentroidModel(centers, **meta)


def write(path, text):
    with FileSystems.create(path) as f:
        f.write(text.encode())


def brute_nearest(X, C):
    E = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    return E.argmin(1), np.sqrt(E.min(1))


@pytest.fixture(params=['local', 'gcs'])
def model_dir(request, tmp_path):
    """A model directory on local disk and on the Cloud Storage emulator."""
    if request.param == 'local':
        return str(tmp_path / 'models')
    bucket = request.getfixturevalue('gcs_bucket')
    return f'{bucket}/models'


# ----------------------------------------------------------------------------- artifact

def test_save_load_round_trip_is_exact(model_dir):
    m = make_model()
    vdir = m.save(model_dir)
    assert m.version and vdir.rstrip('/').endswith(m.version)
    assert latest_version(model_dir) == m.version
    for path in (model_dir, vdir, FileSystems.join(vdir, 'model.json')):
        back = CentroidModel.load(path)
        assert back.centers.tobytes() == m.centers.tobytes()  # bit for bit
        assert back.version == m.version and back.created == m.created
        assert (back.k, back.d) == (4, 3)
        assert back.inertia == m.inertia and back.inertia_history == m.inertia_history
        assert back.n_iter == 5 and back.stop_reason == 'converged'
        assert back.cluster_sizes == [10, 11, 12, 13]
        assert back.config == {'k': 4, 'tol': 1e-4, 'init': 'k-means++',
                               'random_state': None}
        assert back.input_pattern == 'gs://b/points/*.parquet'
        assert back == m
        assert back.path.endswith('model.json')


def test_versions_latest_and_rollback(model_dir):
    m1 = make_model(seed=1)
    m1.save(model_dir)
    m2 = make_model(seed=2)
    m2.save(model_dir)
    assert m2.version > m1.version  # UTC timestamps sort by time
    assert list_versions(model_dir) == [m1.version, m2.version]
    assert CentroidModel.load(model_dir).version == m2.version
    set_latest(model_dir, m1.version)  # rollback
    back = CentroidModel.load(model_dir)
    assert back.version == m1.version
    np.testing.assert_array_equal(back.centers, m1.centers)
    set_latest(model_dir, m2.version)  # and forward again
    assert CentroidModel.load(model_dir).version == m2.version
    with pytest.raises(BeammlError, match='no model'):
        set_latest(model_dir, 'v9999')
    assert latest_version(model_dir) == m2.version  # a failed rollback changes nothing


def test_named_versions_are_immutable(model_dir):
    make_model(version='v0001').save(model_dir)
    with pytest.raises(BeammlError, match='already exists'):
        make_model(seed=5, version='v0001').save(model_dir)
    assert CentroidModel.load(model_dir).centers.tobytes() == make_model().centers.tobytes()
    make_model(seed=3, version='v0002').save(model_dir, make_latest=False)
    assert latest_version(model_dir) == 'v0001'  # saved but not promoted


def test_latest_is_written_last(tmp_path, monkeypatch):
    written = []
    real = artifact.write_text
    monkeypatch.setattr(artifact, 'write_text',
                        lambda path, text: (written.append(os.path.basename(path)),
                                            real(path, text)))
    make_model().save(str(tmp_path))
    assert written == ['model.json', 'LATEST']
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


@pytest.mark.parametrize('content,match', [
    ('{"centers": [[1.0, 2.0], [3.0', 'corrupt or incomplete'),
    ('', 'empty'),
    ('{"k": 2, "d": 2}', 'incomplete: no centers'),
    ('{"centers": [[1.0, 2.0], [3.0]]}', 'equally long'),
    ('{"centers": [[1.0, "x"]]}', 'lists of numbers'),
    ('{"centers": [[1.0, NaN]]}', 'NaN'),
    ('{"centers": [[1.0, 2.0]], "k": 3}', 'inconsistent: k=3'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"format": "something.else", "centers": [[1.0]]}', 'not a centroid model'),
    ('{"format_version": 99, "centers": [[1.0]]}', 'upgrade beamml'),
])
def test_corrupt_or_incomplete_model_file_names_the_path(model_dir, content, match):
    path = FileSystems.join(model_dir, 'v1', 'model.json')
    write(path, content)
    for target in (path, FileSystems.join(model_dir, 'v1')):
        with pytest.raises(BeammlError, match=match) as e:
            CentroidModel.load(target)
        assert path in str(e.value)


def test_missing_model_latest_or_version(model_dir):
    with pytest.raises(BeammlError, match='no model at') as e:
        CentroidModel.load(model_dir)
    assert model_dir in str(e.value)
    with pytest.raises(BeammlError, match='no model file'):
        CentroidModel.load(FileSystems.join(model_dir, 'nope', 'model.json'))
    make_model(version='v1').save(model_dir)
    write(FileSystems.join(model_dir, 'LATEST'), 'v2\n')
    with pytest.raises(BeammlError, match="names version 'v2'.*v1"):
        CentroidModel.load(model_dir)
    write(FileSystems.join(model_dir, 'LATEST'), '\n')
    with pytest.raises(BeammlError, match='LATEST is corrupt'):
        CentroidModel.load(model_dir)


def test_constructor_validation_and_dimension_check():
    with pytest.raises(BeammlError, match='shape'):
        CentroidModel(np.ones(3))
    with pytest.raises(BeammlError, match='shape'):
        CentroidModel(np.empty((0, 3)))
    with pytest.raises(BeammlError, match='NaN or infinite'):
        CentroidModel([[np.inf, 1.0]])
    with pytest.raises(BeammlError, match='not a valid name'):
        CentroidModel([[1.0]], version='../evil')
    with pytest.raises(BeammlError, match='cluster_sizes'):
        CentroidModel([[1.0], [2.0]], cluster_sizes=[1])
    m = make_model(version='v3')
    m.check_dimension(3, 'data')
    with pytest.raises(BeammlError, match='model v3 has d=3 features but in.csv has 5'):
        m.check_dimension(5, 'in.csv')


def test_pickles_as_a_side_input_would():
    m = make_model(version='v1')
    _ = m.centers_sq
    back = pickle.loads(pickle.dumps(m))
    assert back == m and not back.centers.flags.writeable
    np.testing.assert_array_equal(back.centers_sq, (m.centers ** 2).sum(1))


def test_json_is_plain_and_exact(tmp_path):
    m = make_model(inertia=float('nan'),
                   inertia_history=[float('inf'), 2.5, float('-inf'), float('nan')],
                   config={'tol': float('inf'), 'k': np.int64(4)})
    m.save(str(tmp_path))
    path = os.path.join(str(tmp_path), m.version, 'model.json')
    with open(path) as f:
        text = f.read()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f'bare {c} in model.json'))
    # the one JSON policy: non-finite floats as strings, JSON stays valid
    assert data['inertia'] == 'NaN'
    assert data['inertia_history'] == ['Infinity', 2.5, '-Infinity', 'NaN']
    assert data['config'] == {'tol': 'Infinity', 'k': 4}
    assert np.array(data['centers']).tobytes() == m.centers.tobytes()
    back = CentroidModel.load(path)  # and they read back as the floats they were
    assert np.isnan(back.inertia)
    np.testing.assert_array_equal(back.inertia_history, [np.inf, 2.5, -np.inf, np.nan])
    assert back == m


def test_model_json_with_null_non_finite_fields_still_loads(tmp_path):
    """Earlier versions wrote every non-finite float as null: those files still load."""
    path = str(tmp_path / 'v1' / 'model.json')
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as f:
        json.dump({'format': 'beamml.centroid_model', 'format_version': 1, 'version': 'v1',
                   'k': 1, 'd': 2, 'n_iter': 3, 'inertia': None,
                   'inertia_history': [10.0, None, 4.0], 'centers': [[1.0, 2.0]]}, f)
    back = CentroidModel.load(path)
    assert back.inertia is None and back.n_iter == 3
    np.testing.assert_array_equal(back.inertia_history, [10.0, np.nan, 4.0])
    np.testing.assert_array_equal(back.centers, [[1.0, 2.0]])


@pytest.mark.parametrize('field,value', [('inertia', 'abc'), ('inertia', True),
                                         ('inertia_history', [1.0, 'nan'])])
def test_float_fields_accept_only_numbers_and_the_non_finite_names(tmp_path, field, value):
    path = str(tmp_path / 'model.json')
    with open(path, 'w') as f:
        json.dump({'centers': [[1.0]], field: value}, f)
    with pytest.raises(BeammlError, match=f'corrupt: {field} must hold numbers'):
        CentroidModel.load(path)


# ----------------------------------------------------------------------------- handler

def test_handler_run_inference_direct(tmp_path):
    m = make_model(k=5, d=4)
    m.save(str(tmp_path))
    h = CentroidModelHandler(str(tmp_path))
    loaded = h.load_model()
    X = np.random.default_rng(1).normal(size=(20, 4)) * 200
    xs = list(X)
    out = list(h.run_inference(xs, loaded))
    labels, dist = brute_nearest(X, m.centers)
    assert [r.inference[0] for r in out] == labels.tolist()
    np.testing.assert_allclose([r.inference[1] for r in out], dist, rtol=1e-12)
    assert {r.model_id for r in out} == {m.version}
    assert all(r.example is x for r, x in zip(out, xs))
    # 2-D examples: one (labels, distances) per example
    out2 = list(h.run_inference([X[:3], X[3:10]], loaded))
    np.testing.assert_array_equal(out2[1].inference[0], labels[3:10])
    with pytest.raises(BeammlError, match='features'):
        h.run_inference([np.ones(3)], loaded)
    assert h.batch_elements_kwargs() == {'min_batch_size': 1, 'max_batch_size': 4096}
    assert h.get_num_bytes([np.ones(4), np.ones(4)]) == 64


def test_handler_update_model_path_switches_model(tmp_path):
    d = str(tmp_path)
    m1 = make_model(seed=1, version='v1')
    m1.save(d)
    m2 = make_model(seed=2, version='v2')
    m2.save(d)
    h = CentroidModelHandler(os.path.join(d, 'v1'))
    assert h.load_model().version == 'v1'
    h.update_model_path(os.path.join(d, 'v2', 'model.json'))
    assert h.model_path.endswith(os.path.join('v2', 'model.json'))
    loaded = h.load_model()
    assert loaded.version == 'v2'
    res = list(h.run_inference([np.zeros(3)], loaded))
    assert res[0].model_id == 'v2'
    assert res[0].inference[0] == int(brute_nearest(np.zeros((1, 3)), m2.centers)[0][0])
    h.update_model_path(None)  # no update: keeps the current path
    assert h.load_model().version == 'v2'


def _check_predictions(X, centers, version):
    labels, dist = brute_nearest(X, centers)
    expected = {tuple(x): (int(c), float(r)) for x, c, r in zip(X, labels, dist)}

    def check(results):
        assert len(results) == len(X)
        for r in results:
            assert isinstance(r, PredictionResult)
            assert r.model_id == version
            c, dd = expected[tuple(r.example)]
            assert r.inference[0] == c
            assert abs(r.inference[1] - dd) <= 1e-9 * max(1.0, dd)
    return check


def test_run_inference_pipeline(model_dir):
    m = make_model(k=6, d=3)
    m.save(model_dir)
    X = np.random.default_rng(2).normal(size=(50, 3)) * 300
    with beam.Pipeline(runner='FnApiRunner') as p:
        preds = (p | beam.Create(list(X))
                 | RunInference(CentroidModelHandler(model_dir, max_batch_size=16)))
        assert_that(preds, _check_predictions(X, m.centers, m.version))


def test_run_inference_side_input_model_update(tmp_path):
    """RunInference(handler, model_metadata_pcoll=...) loads the model the side input names."""
    d = str(tmp_path)
    m1 = make_model(seed=1, version='v1')
    m1.save(d)
    m2 = make_model(seed=2, version='v2')
    m2.save(d, make_latest=False)
    X = np.random.default_rng(3).normal(size=(30, 3)) * 300
    assert (brute_nearest(X, m1.centers)[0] != brute_nearest(X, m2.centers)[0]).any()
    with beam.Pipeline(runner='FnApiRunner') as p:
        meta = p | 'Meta' >> beam.Create(
            [ModelMetadata(model_id=os.path.join(d, 'v2', 'model.json'), model_name='v2')])
        preds = (p | 'Points' >> beam.Create(list(X))
                 | RunInference(CentroidModelHandler(d), model_metadata_pcoll=meta))
        assert_that(preds, _check_predictions(X, m2.centers, 'v2'))
