"""Score measures (issue 22, part 2b): exact ROC AUC and average precision, log loss and the
reliability table, against scikit-learn's roc_auc_score, average_precision_score, log_loss
and calibration_curve: kernels (ties, weights, any split of the rows), the CombineFn
contract, and the CLI on out-of-fold predictions (binary score and class probabilities),
overall and per slice.
"""
import glob
import json
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.calibration import calibration_curve
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from combiner_contract import assert_same, check_combine_fn
from beamml.pipelines import evaluate
from beamml.transforms.metrics.classification import (WEIGHTS, AveragePrecision, LogLoss,
                                                      Reliability, RocAuc)
from beamml.transforms.metrics.compute import MetricsCombineFn
from beamml.transforms.metrics.scores import (average_precision, log_loss_sums, merge_tables,
                                              reliability_sums, reliability_table, roc_auc,
                                              score_table)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


# ----------------------------------------------------------------------------- kernels

def test_score_kernels_equal_scikit_learn_with_ties_weights_and_any_split():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        n = int(rng.integers(2, 80))
        y = rng.random(n) < 0.4
        s = np.round(rng.random(n), 1) if trial % 3 == 0 else rng.random(n)  # ties
        if trial % 5 == 0:
            s[:] = 0.5   # one score for all
        w = np.ones(n) if trial % 2 else rng.random(n) * (rng.random(n) > 0.2)
        w[0] = max(w[0], 0.5)
        cuts = np.sort(rng.integers(0, n + 1, 3))
        parts = np.split(np.arange(n), cuts)
        table = merge_tables([score_table(s[i], y[i], w[i][:, None]) for i in parts])
        pos, neg = (w * y).sum(), (w * ~y).sum()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            if pos > 0 and neg > 0:
                assert close(roc_auc(table)[0], [roc_auc_score(y, s, sample_weight=w)])
                checked += 1
            else:
                assert roc_auc(table, 0.0) == (np.array([0.0]), 1)
            if pos > 0:
                assert close(average_precision(table)[0],
                             [average_precision_score(y, s, sample_weight=w)])
            else:   # scikit-learn gives 0 (with a warning); counted undefined here
                assert average_precision_score(y, s, sample_weight=w) == 0.0
                assert average_precision(table, 0.0) == (np.array([0.0]), 1)
        if 0 < y.sum() < n:
            sums = log_loss_sums(np.where(y, s, 1 - s), w[:, None])
            assert close(sums[0] / sums[1], [log_loss(y, s, sample_weight=w)])
            prob_true, prob_pred = calibration_curve(y, s, n_bins=7)
            bins = reliability_table(reliability_sums(s, y, np.ones((n, 1)), 7))
            assert close([b['fraction_positive'] for b in bins], prob_true)
            assert close([b['mean_predicted'] for b in bins], prob_pred)
    assert checked > 35


def test_score_table_size_is_the_distinct_scores():
    s = np.repeat([0.1, 0.5, 0.9], 1000)
    table = score_table(s, np.arange(3000) % 2 == 0, np.ones((3000, 1)))
    assert table[0].tolist() == [0.1, 0.5, 0.9] and table[1].tolist() == [[500, 500, 500]]


def test_log_loss_clips_as_scikit_learn():
    y = np.array([1, 0, 1])
    s = np.array([1.0, 0.0, 0.0])   # a certain mistake: clipped to eps
    sums = log_loss_sums(np.where(y == 1, s, 1 - s), np.ones((3, 1)))
    assert close(sums[0] / sums[1], [log_loss(y, s)])


# ----------------------------------------------------------------------------- metrics, CombineFn

def multiclass_case(rng, n, k=3):
    t = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[t]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = np.round(proba, 2)
    proba /= proba.sum(axis=1, keepdims=True)
    return t, proba


@pytest.mark.parametrize('average', ['macro', 'weighted', 'micro', 'none'])
def test_one_vs_rest_measures_equal_scikit_learn(average):
    rng = np.random.default_rng(1)
    t, proba = multiclass_case(rng, 300)
    w = rng.random(300) + 0.2
    classes = ['0', '1', '2']
    truth = t.astype(str)
    kw = dict(classes=classes, average=average)
    sk_avg = None if average == 'none' else average
    for metric, oracle in ((RocAuc(**kw), lambda: roc_auc_score(
            t, proba, multi_class='ovr', average=sk_avg, sample_weight=w)),
            (AveragePrecision(**kw), lambda: average_precision_score(
                t, proba, average=sk_avg, sample_weight=w))):
        got = metric(truth=truth, score=proba, sample_weight=w)
        got = [got[c] for c in classes] if average == 'none' else got
        assert close(got, oracle()), metric.name
    assert close(LogLoss(classes=classes)(truth=truth, score=proba, sample_weight=w),
                 log_loss(t, proba, sample_weight=w))


def score_batches(truth, score, w, model, cuts):
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        cols = {'truth': pa.array(truth[lo:hi]),
                WEIGHTS: pa.FixedSizeListArray.from_arrays(pa.array(w[lo:hi]), 1),
                'model': pa.array(model[lo:hi])}
        if score.ndim == 1:
            cols['score'] = pa.array(score[lo:hi])
        else:
            cols.update({f'score_{i}': pa.array(score[lo:hi, i]) for i in range(score.shape[1])})
        out.append(pa.RecordBatch.from_pydict(cols))
    return out


@pytest.mark.parametrize('kind', ['binary', 'classes'])
def test_the_combine_fn_keeps_the_contract_and_equals_scikit_learn_per_slice(kind):
    rng = np.random.default_rng(2)
    n = 160
    if kind == 'binary':
        t = (rng.random(n) < 0.4).astype(int)
        score = np.round(np.clip(rng.normal(0.4 + 0.2 * t, 0.2), 0, 1), 2)   # ties
        classes = None
    else:
        t, score = multiclass_case(rng, n)
        classes = ['0', '1', '2']
    w = rng.random(n) + 0.1
    model = rng.choice(['a', 'b'], n)
    kw = dict(classes=classes, average='macro')
    fn = MetricsCombineFn([RocAuc(**kw), AveragePrecision(**kw), LogLoss(**kw),
                           Reliability(n_bins=5, **kw)], slice_by=['model'])
    inputs = score_batches(t.astype(str), score, w, model, [0, 1, 50, 51, 120, 160])

    def equal(a, b):
        assert_same(a, b, rtol=1e-12, atol=1e-12)

    def empty(out):
        assert out['slices'] == {} and out['overall']['undefined']['roc_auc'] == (
            1 if classes is None else 3)
    check_combine_fn(fn, inputs, equal, empty)
    out = fn.apply(inputs)
    for key, rows in ((None, np.ones(n, bool)), ('model=a', model == 'a'),
                      ('model=b', model == 'b')):
        sec = out['overall'] if key is None else out['slices'][key]
        tt, ss, ww = t[rows], score[rows], w[rows]
        assert close(sec['roc_auc'], roc_auc_score(tt, ss, sample_weight=ww, multi_class='ovr'))
        assert close(sec['average_precision'], average_precision_score(tt, ss, sample_weight=ww))
        assert close(sec['log_loss'], log_loss(tt, ss, sample_weight=ww))
        if classes is None:   # weighted bins, brute force: (lower, upper], 0 in the first
            for b in sec['reliability']:
                inside = ((ss > b['bin_lower']) | (ss == 0)) & (ss <= b['bin_upper'])
                inside &= (ss > 0) | (b['bin_lower'] == 0)
                assert close(b['weight'], ww[inside].sum())
                assert close(b['mean_predicted'], np.average(ss[inside], weights=ww[inside]))
                assert close(b['fraction_positive'], np.average(tt[inside], weights=ww[inside]))
            assert close(sum(b['weight'] for b in sec['reliability']), ww.sum())


def test_log_loss_of_scores_that_are_not_probabilities_is_undefined():
    fn = MetricsCombineFn([LogLoss(), RocAuc(), Reliability()])
    batch = score_batches(np.array(['1', '0', '1']), np.array([2.5, -1.0, 0.3]),
                          np.ones(3), np.array(['a'] * 3), [0, 3])
    out = fn.apply(batch)['overall']
    assert out['roc_auc'] == 1.0 and out['log_loss'] == 0.0 and out['reliability'] == []
    assert out['undefined'] == {'log_loss': 2, 'roc_auc': 0}


# ----------------------------------------------------------------------------- the CLI

def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_cli_binary_score_on_out_of_fold_predictions(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500))
    p = cross_val_predict(model, X, y, cv=5, method='predict_proba')[:, 1]
    p = np.round(p, 3)   # ties
    rng = np.random.default_rng(3)
    w = np.round(rng.random(len(y)) * 2, 2)
    site = rng.choice(['x', 'y'], len(y))
    pq.write_table(pa.table({'truth': y, 'prediction': (p >= 0.5).astype(int), 'p': p,
                             'w': w, 'site': site}), tmp_path / 'logs.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'classification',
                  '--score_column', 'p', '--weight_column', 'w', '--slice_by', 'site',
                  '--reliability_bins', '8', '--output', out])
    doc = read_json(os.path.join(out, 'metrics.json'))
    for key, rows in ((None, np.ones(len(y), bool)), ('site=x', site == 'x'),
                      ('site=y', site == 'y')):
        sec = doc['overall'] if key is None else doc['slices'][key]
        yy, pp, ww = y[rows], p[rows], w[rows]
        assert close(sec['roc_auc'], roc_auc_score(yy, pp, sample_weight=ww))
        assert close(sec['average_precision'], average_precision_score(yy, pp, sample_weight=ww))
        assert close(sec['log_loss'], log_loss(yy, pp, sample_weight=ww))
    # the reliability table without weights: calibration_curve
    out2 = str(tmp_path / 'eval2')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'classification',
                  '--score_column', 'p', '--metrics', 'reliability,roc_auc',
                  '--reliability_bins', '8', '--output', out2])
    rel = read_json(os.path.join(out2, 'metrics.json'))['overall']['reliability']
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8)
    assert close([b['fraction_positive'] for b in rel], prob_true)
    assert close([b['mean_predicted'] for b in rel], prob_pred)


def test_cli_class_probabilities_and_refused_rows(tmp_path):
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500))
    proba = cross_val_predict(model, X, y, cv=5, method='predict_proba')
    names = np.array(['barolo', 'grignolino', 'barbera'])
    table = pa.table({'truth': names[y], 'prediction': names[proba.argmax(1)],
                      'pa': proba[:, 0], 'pb': proba[:, 1], 'pc': proba[:, 2]})
    bad = pa.table({'truth': ['nebbiolo', 'barolo', 'barolo'], 'prediction': ['barolo'] * 3,
                    'pa': [0.5, 1.5, None], 'pb': [0.25, 0.0, 0.5], 'pc': [0.25, 0.0, 0.5]})
    pq.write_table(pa.concat_tables([table, bad]), tmp_path / 'logs.parquet')
    out = str(tmp_path / 'eval')
    evaluate.run(['--input', str(tmp_path / 'logs.parquet'), '--task', 'classification',
                  '--probability_columns', 'barolo=pa,grignolino=pb,barbera=pc',
                  '--average', 'weighted', '--output', out, '--max_refused_fraction', '0.1'])
    doc = read_json(os.path.join(out, 'metrics.json'))
    n = len(y)
    assert doc['counts'] == {'records_read': n + 3, 'records_ok': n, 'records_refused': 3}
    reasons = []
    for path in glob.glob(os.path.join(out, 'evaluate-errors-*.jsonl')):
        with open(path) as f:
            reasons += [json.loads(line)['reason'] for line in f if line.strip()]
    assert sorted(reasons) == [
        "missing probability of class 'barolo' ('pa')",
        "probability of class 'barolo' ('pa') is not a number in [0, 1]",
        "truth ('truth') is not one of the classes of the probability columns"]
    o = doc['overall']
    assert close(o['roc_auc'], roc_auc_score(y, proba, multi_class='ovr', average='weighted'))
    assert close(o['average_precision'], average_precision_score(y, proba, average='weighted'))
    assert close(o['log_loss'], log_loss(y, proba))
    assert set(o['reliability']) == set(names)
