"""Multiclass, weighted classification (issue 22, part 2): kernels, CombineFns and the CLI
against scikit-learn's precision_recall_fscore_support, confusion_matrix, fbeta_score,
balanced_accuracy_score and accuracy_score, on generated data and on out-of-fold
predictions of a scikit-learn dataset, overall and per slice, every average and
zero_division. Scores (ROC AUC, AP, log loss, reliability): test_evaluate_classification_scores.py.
"""
import glob
import json
import math
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             precision_recall_fscore_support)
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from combiner_contract import assert_same, check_combine_fn
from beamml.pipelines import evaluate
from beamml.transforms.metrics.classification import (WEIGHTS, BalancedAccuracy, ClassAccuracy,
                                                      ClassF1, ClassPrecision, ClassRecall,
                                                      ConfusionMatrix, FBeta, PerClass)
from beamml.transforms.metrics.compute import MetricsCombineFn
from beamml.transforms.metrics.multiclass import (accuracy, balanced_accuracy, class_order,
                                                  labelled_matrix, merge_matrices, prf)
from beamml.transforms.metrics.parsing import parse_classes

AVERAGES = ['binary', 'micro', 'macro', 'weighted', 'none']
ZERO_DIVISIONS = [0.0, 1.0, float('nan')]


def sk_prf(t, p, average, beta, zd, w, pos_label='1', labels=None):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return precision_recall_fscore_support(
            t, p, beta=beta, average=None if average == 'none' else average,
            zero_division=zd, sample_weight=w, pos_label=pos_label, labels=labels)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


def random_case(rng, trial):
    n = int(rng.integers(1, 50))
    k = int(rng.integers(1, 5))
    t = rng.integers(0, k, n).astype(str)
    p = rng.integers(0, k + 1, n).astype(str)   # a class never true (a 0/0 recall)
    w = np.ones(n) if trial % 2 else rng.random(n) * (rng.random(n) > 0.2)
    w[0] = max(w[0], 0.5)   # scikit-learn refuses weights that are all 0
    return t, p, w


# ----------------------------------------------------------------------------- kernels

def test_prf_equals_scikit_learn_for_every_average_zero_division_and_beta():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(36):
        t, p, w = random_case(rng, trial)
        labels, m = labelled_matrix(t, p, w[:, None])
        order = class_order(labels)
        labels, m = [labels[i] for i in order], m[:, order][:, :, order]
        present = set(t) | set(p)
        for average in AVERAGES:
            if average == 'binary' and (len(present) > 2 or (len(present) == 2 and
                                                              '1' not in present)):
                continue   # scikit-learn refuses these
            for zd in ZERO_DIVISIONS:
                for beta in [(1.0, 0.5, 2.0)[trial % 3]]:
                    want = sk_prf(t, p, average, beta, zd, w)
                    got = prf(m, labels, average, beta, zd, '1')
                    for i, name in enumerate(('precision', 'recall', 'fbeta')):
                        assert close(want[i], got[name][0]), (trial, average, zd, beta, name)
                    if average == 'none':
                        assert close(want[3], got['support'][0])
                    checked += 1
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            assert close(balanced_accuracy_score(t, p, sample_weight=w),
                         balanced_accuracy(m, float('nan'))[0][0])
        assert close(accuracy_score(t, p, sample_weight=w), accuracy(m)[0][0])
        assert close(confusion_matrix(t, p, sample_weight=w, labels=labels), m[0])
    assert checked > 400


def test_undefined_cases_are_counted():
    # classes a (true only) and b (predicted only): precision of a, recall of b are 0/0
    labels, m = labelled_matrix(['a', 'a'], ['b', 'b'], np.ones((2, 1)))
    out = prf(m, labels, 'none', 1.0, 1.0)
    assert out['undefined'] == {'precision': 1, 'recall': 1, 'fbeta': 0}
    assert out['precision'][0].tolist() == [1.0, 0.0] and out['recall'][0].tolist() == [0.0, 1.0]
    assert balanced_accuracy(m)[0][0] == 0.0
    assert accuracy(np.zeros((1, 0, 0)), 1.0) == (np.array([1.0]), 1)
    nothing = prf(np.zeros((1, 0, 0)), [], 'macro', 1.0, 1.0)   # no row, no class
    assert nothing['precision'].tolist() == [1.0] and nothing['undefined']['recall'] == 1
    assert balanced_accuracy(np.zeros((1, 0, 0)), 0.0)[1] == 1


def test_labelled_matrices_merge_by_the_union_of_their_labels():
    rng = np.random.default_rng(1)
    t = rng.choice(['x', 'y', 'z', '10', '9'], 90)
    p = rng.choice(['x', 'y', 'z', '10'], 90)
    w = rng.random((90, 3))
    whole = labelled_matrix(t, p, w)
    acc = ((), None)
    for lo in range(0, 90, 17):
        part = labelled_matrix(t[lo:lo + 17], p[lo:lo + 17], w[lo:lo + 17])
        before = part[1].copy()
        acc = merge_matrices(acc, part)
        assert np.array_equal(part[1], before)   # the other one is never changed
    assert acc[0] == whole[0] and np.allclose(acc[1], whole[1], rtol=1e-13)


def test_class_order_is_numeric_for_integers_and_text_otherwise():
    assert [['10', '9', '-1'][i] for i in class_order(['10', '9', '-1'])] == ['-1', '9', '10']
    assert [['b', 'a', '10'][i] for i in class_order(['b', 'a', '10'])] == ['10', 'a', 'b']


def test_parse_classes():
    labels, missing, invalid = parse_classes(pa.array([1.0, 2.5, None, float('nan'), 3.0]))
    assert labels.to_pylist()[0] == '1' and labels.to_pylist()[4] == '3'
    assert missing.tolist() == [False, False, True, False, False]
    assert invalid.tolist() == [False, True, False, True, False]
    labels, missing, invalid = parse_classes(pa.array([' cat', 'Cat', '', None]))
    assert labels.to_pylist()[:2] == ['cat', 'Cat'] and missing.tolist() == [0, 0, 1, 1]
    assert parse_classes(pa.array([True, False]))[0].to_pylist() == ['1', '0']
    assert parse_classes(pa.array([7, -2]))[0].to_pylist() == ['7', '-2']


# ----------------------------------------------------------------------------- metrics, CombineFn

def test_metrics_on_arrays_equal_scikit_learn():
    rng = np.random.default_rng(2)
    t = rng.choice(['a', 'b', 'c'], 60)
    p = rng.choice(['a', 'b', 'c'], 60)
    w = rng.random(60)
    for average in ('micro', 'macro', 'weighted'):
        want = sk_prf(t, p, average, 2.0, 0.0, w)
        assert close(ClassPrecision(average=average)(truth=t, prediction=p, sample_weight=w),
                     want[0])
        assert close(ClassRecall(average=average)(truth=t, prediction=p, sample_weight=w),
                     want[1])
        assert close(FBeta(average=average, beta=2.0)(truth=t, prediction=p, sample_weight=w),
                     want[2])
    assert ClassPrecision(average='none')(truth=t, prediction=p).keys() == {'a', 'b', 'c'}
    assert close(BalancedAccuracy()(truth=t, prediction=p, sample_weight=w),
                 balanced_accuracy_score(t, p, sample_weight=w))
    cm = ConfusionMatrix()(truth=t, prediction=p)
    assert cm == {'labels': ['a', 'b', 'c'], 'matrix': confusion_matrix(t, p).tolist()}


def row_batches(t, p, w, model, cuts):
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        ww = w[lo:hi][:, None]
        out.append(pa.RecordBatch.from_arrays(
            [pa.array(t[lo:hi]), pa.array(p[lo:hi]),
             pa.FixedSizeListArray.from_arrays(pa.array(ww.reshape(-1)), 1),
             pa.array(model[lo:hi])], names=['truth', 'prediction', WEIGHTS, 'model']))
    return out


def class_metrics(average, zd):
    return [ClassAccuracy(zero_division=zd), ClassPrecision(average=average, zero_division=zd),
            ClassRecall(average=average, zero_division=zd),
            ClassF1(average=average, zero_division=zd),
            FBeta(average=average, beta=0.5, zero_division=zd),
            BalancedAccuracy(zero_division=zd), ConfusionMatrix(), PerClass(beta=0.5)]


def test_the_combine_fn_keeps_the_contract_and_equals_scikit_learn_per_slice():
    rng = np.random.default_rng(3)
    n = 150
    t = rng.choice(['3', '1', '2', '10'], n)
    p = np.where(rng.random(n) < 0.6, t, rng.choice(['3', '1', '2'], n))
    w = rng.random(n) + 0.1
    model = rng.choice(['a', 'b', 'c'], n)
    cuts = [0, 1, 40, 41, 90, 150]
    fn = MetricsCombineFn(class_metrics('macro', float('nan')), slice_by=['model'])
    inputs = row_batches(t, p, w, model, cuts)

    def equal(a, b):
        assert_same(a, b, rtol=1e-12, atol=1e-12)

    def empty(out):
        assert out['slices'] == {} and out['overall']['confusion_matrix'] == {
            'labels': [], 'matrix': []}
        assert out['overall']['undefined']['accuracy'] == 1
        assert out['overall']['undefined']['precision'] == 1
    check_combine_fn(fn, inputs, equal, empty)
    out = fn.apply(inputs)
    slices = [(None, np.ones(n, bool))] + [(f'model={m}', model == m) for m in 'abc']
    for average in ('binary', 'micro', 'weighted', 'none'):   # (macro: below)
        for zd in ZERO_DIVISIONS:
            other = MetricsCombineFn(class_metrics(average, zd), slice_by=['model']).apply(
                inputs)
            for key, rows in slices:
                section = other['overall'] if key is None else other['slices'][key]
                labels = section['confusion_matrix']['labels']
                if average == 'binary':
                    continue   # (four classes: scikit-learn refuses 'binary')
                want = sk_prf(t[rows], p[rows], average, 0.5, zd, w[rows], labels=labels)
                got = section['fbeta']
                got = [got[c] for c in labels] if average == 'none' else got
                assert close(got, want[2]), (average, zd, key)
    for key, rows in slices:
        section = out['overall'] if key is None else out['slices'][key]
        tt, pp, ww = t[rows], p[rows], w[rows]
        want = sk_prf(tt, pp, 'macro', 1.0, float('nan'), ww)
        assert close(section['precision'], want[0]) and close(section['recall'], want[1])
        assert close(section['f1'], want[2])
        assert close(section['fbeta'], sk_prf(tt, pp, 'macro', 0.5, float('nan'), ww)[2])
        assert close(section['accuracy'], accuracy_score(tt, pp, sample_weight=ww))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            assert close(section['balanced_accuracy'],
                         balanced_accuracy_score(tt, pp, sample_weight=ww))
        labels = section['confusion_matrix']['labels']
        assert labels == sorted(set(tt) | set(pp), key=int)   # numeric order
        assert close(section['confusion_matrix']['matrix'],
                     confusion_matrix(tt, pp, sample_weight=ww, labels=labels))
        per = sk_prf(tt, pp, 'none', 0.5, 0.0, ww, labels=labels)
        assert close([section['per_class'][c]['fbeta'] for c in labels], per[2])
        assert close([section['per_class'][c]['support'] for c in labels], per[3])


# ----------------------------------------------------------------------------- the CLI

def read_json(path):
    with open(path) as f:
        return json.load(f)


def dead_letters(out):
    rows = []
    for path in glob.glob(os.path.join(out, 'evaluate-errors-*.jsonl')):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


@pytest.fixture(scope='module')
def wine_logs(tmp_path_factory):
    """Out-of-fold predictions of a logistic regression on scikit-learn's wine data
    (cross_val_predict), class names as text, a weight and a slice column."""
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500))
    proba = cross_val_predict(model, X, y, cv=5, method='predict_proba')
    names = np.array(['barolo', 'grignolino', 'barbera'])
    rng = np.random.default_rng(5)
    truth, pred = names[y], names[proba.argmax(axis=1)]
    weight = np.round(rng.random(len(y)) * 3, 2)
    region = rng.choice(['north', 'south'], len(y))
    path = tmp_path_factory.mktemp('wine') / 'logs.parquet'
    pq.write_table(pa.table({'truth': truth, 'prediction': pred, 'weight': weight,
                             'region': region, 'p_barolo': proba[:, 0],
                             'p_grignolino': proba[:, 1], 'p_barbera': proba[:, 2]}), path)
    return {'path': str(path), 'truth': truth, 'prediction': pred, 'weight': weight,
            'region': region, 'proba': proba, 'classes': list(names)}


@pytest.mark.parametrize('average, zero_division', [('weighted', 'nan'), ('none', '1')])
def test_cli_on_out_of_fold_predictions_equals_scikit_learn(tmp_path, wine_logs, average,
                                                             zero_division):
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', wine_logs['path'], '--task', 'classification', '--average',
                  average, '--weight_column', 'weight', '--beta', '2', '--slice_by', 'region',
                  '--zero_division', zero_division, '--output', out])
    doc = read_json(os.path.join(out, 'metrics.json'))
    n = len(wine_logs['truth'])
    assert doc['counts'] == {'records_read': n, 'records_ok': n, 'records_refused': 0}
    zd = {'0': 0.0, '1': 1.0, 'nan': float('nan')}[zero_division]
    for key in [None, 'region=north', 'region=south']:
        rows = np.ones(n, bool) if key is None else wine_logs['region'] == key.split('=')[1]
        t, p, w = wine_logs['truth'][rows], wine_logs['prediction'][rows], \
            wine_logs['weight'][rows]
        section = doc['overall'] if key is None else doc['slices'][key]
        for beta, names in ((1.0, ('precision', 'recall', 'f1')), (2.0, (None, None, 'fbeta'))):
            want = sk_prf(t, p, average, beta, zd, w)
            for i, name in enumerate(names):
                if name is None:
                    continue
                got = section[name]
                if average == 'none':
                    labels = sorted(set(t) | set(p))
                    got = [got[c] for c in labels]
                got = np.array(got, dtype=float) if not isinstance(got, str) else float(got)
                assert close(got, want[i]), (key, name)
        assert close(section['accuracy'], accuracy_score(t, p, sample_weight=w))
        assert close(section['balanced_accuracy'], balanced_accuracy_score(t, p, sample_weight=w))
        cm = section['confusion_matrix']
        assert close(cm['matrix'], confusion_matrix(t, p, sample_weight=w, labels=cm['labels']))


def test_cli_binary_with_pos_label_and_integer_classes(tmp_path):
    rng = np.random.default_rng(6)
    t = rng.choice([2, 7], 80)
    p = np.where(rng.random(80) < 0.7, t, 9 - t)
    path = tmp_path / 'logs.csv'
    with open(path, 'w') as f:
        f.write('truth,prediction\n' + ''.join(f'{a},{b}\n' for a, b in zip(t, p)))
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(path), '--task', 'classification', '--pos_label', '7',
                  '--output', out])
    o = read_json(os.path.join(out, 'metrics.json'))['overall']
    want = precision_recall_fscore_support(t, p, pos_label=7, average='binary')
    assert close([o['precision'], o['recall'], o['f1']], want[:3])
    assert o['confusion_matrix'] == {'labels': ['2', '7'],
                                     'matrix': confusion_matrix(t, p).tolist()}


def test_cli_refuses_unusable_rows_as_dead_letters(tmp_path):
    rows = [{'truth': 'a', 'prediction': 'a', 'w': 1.0},
            {'truth': 'b', 'prediction': 'a', 'w': 2.0},
            {'truth': None, 'prediction': 'a', 'w': 1.0},       # missing truth
            {'truth': 'a', 'prediction': 'b', 'w': -1.0},       # negative weight
            {'truth': 'a', 'prediction': 'b', 'w': math.nan},   # NaN weight
            {'truth': 'b', 'prediction': ' ', 'w': 1.0}]        # blank prediction
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / 'logs.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'classification',
                  '--average', 'macro', '--weight_column', 'w', '--output', out,
                  '--max_refused_fraction', '1'])
    doc = read_json(os.path.join(out, 'metrics.json'))
    assert doc['counts'] == {'records_read': 6, 'records_ok': 2, 'records_refused': 4}
    reasons = sorted(d['reason'] for d in dead_letters(out))
    assert reasons == ["missing prediction ('prediction')", "missing truth ('truth')",
                       "sample weight ('w') is not a finite number >= 0",
                       "sample weight ('w') is not a finite number >= 0"]
    assert doc['overall']['confusion_matrix'] == {'labels': ['a', 'b'],
                                                  'matrix': [[1.0, 0.0], [2.0, 0.0]]}


def test_without_the_new_flags_classification_is_the_binary_path():
    import argparse
    from beamml.pipelines.evaluate import classification
    from beamml.transforms.metrics import CLASSIFICATION_METRICS

    def args(*flags):
        ap = argparse.ArgumentParser()
        evaluate.EvaluateOptions._add_argparse_args(ap)
        return ap.parse_args(['--task', 'classification', *flags])
    plain = args()
    assert not classification.active(plain)
    assert [type(m) for m in evaluate.metric_list(plain)] == list(CLASSIFICATION_METRICS.values())
    assert type(evaluate.parse_logs(plain, {'truth': 't', 'prediction': 'p'}, [], 'int64',
                                    'csv')).__name__ == 'ParsePredictionLogs'
    for flags in (['--average', 'macro'], ['--weight_column', 'w'], ['--beta', '2'],
                  ['--pos_label', 'x'], ['--score_column', 's'], ['--metrics', 'roc_auc'],
                  ['--confidence_intervals', 'poisson_bootstrap']):
        assert classification.active(args(*flags)), flags


# ----------------------------------------------------------------------------- hostile input

from hypothesis import given, settings, strategies as st   # noqa: E402

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(['a', 'b', ' ', '', '1', '0.5', 'nan', 'T']))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_VALUES, _VALUES, _VALUES, _VALUES), min_size=1, max_size=12),
       st.sampled_from(['binary', 'classes']))
def test_the_parser_never_fails_and_every_row_is_kept_or_refused_once(values, labels):
    from beamml.transforms.metrics.class_logs import (ClassificationColumns,
                                                      _ParseClassificationFn)
    cols = {}
    for name, i in (('truth', 0), ('prediction', 1), ('w', 2), ('p', 3)):
        try:
            cols[name] = pa.array([v[i] for v in values])
        except (pa.ArrowInvalid, pa.ArrowTypeError):   # mixed types: as text (a CSV would)
            cols[name] = pa.array([None if v[i] is None else str(v[i]) for v in values])
    batch = pa.RecordBatch.from_pydict({**cols, '_file': ['f'] * len(values),
                                        '_row': list(range(len(values)))})
    spec = ClassificationColumns(labels=labels, weight='w', score='p', num_bootstrap=3)
    out = list(_ParseClassificationFn(spec, 'jsonl').process(batch))
    kept = sum(o.num_rows for o in out if isinstance(o, pa.RecordBatch))
    refused = [o.value for o in out if not isinstance(o, pa.RecordBatch)]
    assert kept + len(refused) == len(values)
    assert sorted(d['row'] for d in refused) == sorted(set(d['row'] for d in refused))
    for o in out:
        if isinstance(o, pa.RecordBatch):
            w = o.column(WEIGHTS).flatten().to_numpy()
            assert np.isfinite(w).all() and (w >= 0).all()
            assert np.isfinite(o.column('score').to_numpy()).all()
            assert '' not in o.column('truth').to_pylist()
