"""Poisson bootstrap confidence intervals (issue 22, part 3): the weights, coverage on
simulated data with a known truth (in numpy, on the kernels), agreement with a plain numpy
bootstrap (scikit-learn with each replicate's weights as sample_weight) through the
CombineFn and the CLI, and determinism with --random_state.
"""
import json
import os
import warnings
from math import erf, sqrt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import f1_score, roc_auc_score

from beamml.pipelines import evaluate
from beamml.transforms.metrics.bootstrap import (bootstrap_interval, poisson_weights, row_keys,
                                                 text_keys)
from beamml.transforms.metrics.classification import WEIGHTS, ClassF1, RocAuc
from beamml.transforms.metrics.compute import MetricsCombineFn
from beamml.transforms.metrics.multiclass import accuracy, labelled_matrix
from beamml.transforms.metrics.scores import roc_auc, score_table


def test_poisson_weights_are_poisson_1_and_a_function_of_key_replicate_and_seed():
    keys = row_keys('logs/a.parquet', np.arange(20000))
    w = poisson_weights(keys, 50, random_state=7)
    assert w.shape == (20000, 50)
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    pmf = np.array([np.mean(w == k) for k in range(5)])
    want = np.exp(-1) / np.array([1, 1, 2, 6, 24])
    assert np.allclose(pmf, want, atol=0.005)
    # per row: the same whatever rows come with it (batches, bundles)
    assert np.array_equal(poisson_weights(keys[123:130], 50, 7), w[123:130])
    assert not np.array_equal(poisson_weights(keys[:100], 50, 8), w[:100])
    assert not np.array_equal(row_keys('logs/b.parquet', np.arange(5)), keys[:5])
    # replicates are not correlated with each other
    c = np.corrcoef(w[:, :10].T)
    assert np.abs(c[np.triu_indices(10, 1)]).max() < 0.05
    assert np.array_equal(text_keys(np.array([3, 4])), text_keys(np.array([3, 4])))
    assert len(set(text_keys(np.array(['q1', 'q2', 'q3'])).tolist())) == 3


def test_interval_is_the_percentiles_and_the_standard_deviation():
    r = np.arange(101, dtype=float)
    ci = bootstrap_interval(r, 0.9)
    assert np.allclose([ci['lower'], ci['upper']], [5.0, 95.0])
    assert np.isclose(ci['standard_error'], np.std(r, ddof=1))
    ci = bootstrap_interval(np.array([[1.0, np.nan], [3.0, np.nan]]))
    assert ci['lower'][0] == 1.05 and np.isnan(ci['lower'][1])


def _phi(x):
    return 0.5 * (1 + erf(x / sqrt(2)))


def _coverage(reps, n, b, seed, draw):
    hits = 0
    for rep in range(reps):
        rng = np.random.default_rng(seed + rep)
        value, truth, positive, score_or_pred = draw(rng, n)
        w = np.concatenate([np.ones((n, 1)),
                            poisson_weights(row_keys('sim', np.arange(n)), b, rep)], axis=1)
        if value == 'accuracy':
            _, m = labelled_matrix(positive.astype(str), score_or_pred.astype(str), w)
            replicates = accuracy(m)[0][1:]
        else:
            replicates = roc_auc(score_table(score_or_pred, positive, w))[0][1:]
        ci = bootstrap_interval(replicates)
        hits += ci['lower'] <= truth <= ci['upper']
    return hits / reps


def test_coverage_of_95_percent_intervals_of_accuracy_with_a_known_truth():
    # a classifier right with probability 0.8: >= 93% of 200 intervals cover 0.8
    def draw(rng, n):
        truth = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, truth, 1 - truth)
        return 'accuracy', 0.8, truth, pred
    assert _coverage(200, 300, 200, 1000, draw) >= 0.93


def test_coverage_of_95_percent_intervals_of_roc_auc_with_a_known_truth():
    # positives N(1, 1), negatives N(0, 1): AUC = Phi(1 / sqrt 2). Percentile intervals of
    # the AUC at n = 300 cover it a little less than 95%: 93.0% here (400 repetitions),
    # 93.0-94.75% over other seeds, and numpy's own Poisson draws in place of beamml's
    # cover as often (92-94.5%). The bound leaves the binomial noise (1.2%) room.
    def draw(rng, n):
        positive = rng.random(n) < 0.5
        return 'roc_auc', _phi(1 / sqrt(2)), positive, rng.normal(positive.astype(float), 1.0)
    assert _coverage(400, 300, 200, 1000, draw) >= 0.92


def _batches(truth, pred, score, weights, cuts):
    return [pa.RecordBatch.from_pydict({
        'truth': pa.array(truth[lo:hi]), 'prediction': pa.array(pred[lo:hi]),
        'score': pa.array(score[lo:hi]),
        WEIGHTS: pa.FixedSizeListArray.from_arrays(pa.array(weights[lo:hi].reshape(-1)),
                                                   weights.shape[1])})
        for lo, hi in zip(cuts[:-1], cuts[1:])]


def plain_bootstrap(metric, weights):
    """The replicates of a plain numpy bootstrap: the scikit-learn metric with each
    replicate's weights as sample_weight."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return np.array([metric(weights[:, j]) for j in range(weights.shape[1])])


def test_the_combine_fn_agrees_with_a_plain_numpy_bootstrap():
    rng = np.random.default_rng(4)
    n, b = 250, 40
    truth = rng.choice(['a', 'b', 'c'], n)
    pred = np.where(rng.random(n) < 0.7, truth, rng.choice(['a', 'b', 'c'], n))
    positive = truth == 'a'
    score = np.round(rng.normal(positive.astype(float), 1.0), 1)
    sw = rng.random(n) + 0.5
    boot = poisson_weights(row_keys('x.parquet', np.arange(n)), b, 11)
    weights = np.concatenate([sw[:, None], sw[:, None] * boot], axis=1)
    fn = MetricsCombineFn([ClassF1(average='macro'), RocAuc(pos_label='a')])
    out = fn.apply(_batches(truth, pred, score, weights, [0, 70, 71, 250]))['overall']
    f1 = plain_bootstrap(lambda w: f1_score(truth, pred, average='macro', sample_weight=w),
                         weights)
    auc = plain_bootstrap(lambda w: roc_auc_score(positive, score, sample_weight=w), weights)
    for name, rep in (('f1', f1), ('roc_auc', auc)):
        assert np.isclose(out[name], rep[0], rtol=1e-12)
        ci = out['confidence_intervals'][name]
        assert np.isclose(ci['lower'], np.quantile(rep[1:], 0.025), rtol=1e-12)
        assert np.isclose(ci['upper'], np.quantile(rep[1:], 0.975), rtol=1e-12)
        assert np.isclose(ci['standard_error'], np.std(rep[1:], ddof=1), rtol=1e-10)


def test_cli_intervals_agree_with_a_plain_bootstrap_and_are_deterministic(tmp_path):
    rng = np.random.default_rng(5)
    n = 120
    truth = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.75, truth, 1 - truth)
    region = rng.choice(['n', 's'], n)
    path = str(tmp_path / 'logs.parquet')
    pq.write_table(pa.table({'truth': truth, 'prediction': pred, 'region': region}), path)

    def run(name, seed):
        out = str(tmp_path / name)
        evaluate.run(['--input', path, '--task', 'classification', '--slice_by', 'region',
                      '--confidence_intervals', 'poisson_bootstrap', '--num_bootstrap', '30',
                      '--random_state', str(seed), '--output', out])
        with open(os.path.join(out, 'metrics.json')) as f:
            return json.load(f)
    first, again = run('a', 3), run('b', 3)   # (another seed, other draws: test above)
    assert first['overall'] == again['overall'] and first['slices'] == again['slices']
    # binary labels (no --pos_label): the classes '1' and '0', positive '1'
    boot = poisson_weights(row_keys(path, np.arange(n)), 30, 3)
    for key, rows in ((None, np.ones(n, bool)), ('region=n', region == 'n')):
        sec = first['overall'] if key is None else first['slices'][key]
        rep = plain_bootstrap(lambda w: f1_score(truth[rows], pred[rows], sample_weight=w),
                              boot[rows])
        ci = sec['confidence_intervals']['f1']
        assert np.isclose(ci['lower'], np.quantile(rep, 0.025), rtol=1e-12)
        assert np.isclose(ci['upper'], np.quantile(rep, 0.975), rtol=1e-12)
        assert sec['f1'] == f1_score(truth[rows], pred[rows])
        assert set(sec['confidence_intervals']) == {'accuracy', 'precision', 'recall', 'f1',
                                                    'balanced_accuracy'}


def _parsed_weights(spec, batch):
    from beamml.transforms.metrics.class_logs import _ParseClassificationFn
    (out,) = list(_ParseClassificationFn(spec, 'jsonl').process(batch))
    col = out.column(WEIGHTS)
    return col.flatten().to_numpy().reshape(len(col), -1)


def test_message_rows_are_keyed_by_content_and_file_rows_by_file_and_row():
    from beamml.transforms.metrics.class_logs import ClassificationColumns
    # two Pub/Sub batches: the same _file (the subscription) and _row (place in a message)
    a, b = ({'truth': [1, 0, 1], 'prediction': [v, 0, 1], '_file': ['projects/p/sub'] * 3,
             '_row': [0, 1, 2]} for v in (1, 0))
    a, b = pa.RecordBatch.from_pydict(a), pa.RecordBatch.from_pydict(b)
    files = ClassificationColumns(num_bootstrap=20, random_state=1)
    messages = ClassificationColumns(num_bootstrap=20, random_state=1, keys='content')
    assert np.array_equal(_parsed_weights(files, a), _parsed_weights(files, b))
    wa, wb = _parsed_weights(messages, a), _parsed_weights(messages, b)
    assert not np.array_equal(wa[:, 1:], wb[:, 1:])
    assert np.array_equal(wa[:, 0], np.ones(3))
    assert np.array_equal(wa, _parsed_weights(messages, a))   # the same content: the same
    want = poisson_weights(row_keys('projects/p/sub', np.arange(3)), 20, 1)
    assert np.array_equal(_parsed_weights(files, a)[:, 1:], want)
