"""`evaluate --streaming` with trec_eval's measures: each event-time window's values equal
pytrec_eval on that window's rows; the judgments (--qrels) are read by each worker and read
again when their files change (as assign --streaming's model)."""
import argparse
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from beamml.pipelines import evaluate
from beamml.pipelines._platform import streams
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.metrics.qrels import LatestJudgments

pytrec_eval = pytest.importorskip('pytrec_eval')

W = 10.0


def run_stream(tmp_path, rows, times, flags):
    ts = TestStream().advance_watermark_to(0)
    for lo in range(0, len(rows), 5):
        chunk = rows[lo:lo + 5]
        n = len(chunk)
        batch = pa.RecordBatch.from_pydict({**{k: [r[k] for r in chunk] for k in chunk[0]},
                                           '_file': ['f'] * n, '_row': list(range(lo, lo + n)),
                                           '_line': list(range(lo + 2, lo + n + 2))})
        ts = ts.add_elements([TimestampedValue(batch, times[lo])])
    ts = ts.advance_processing_time(3600).advance_watermark_to_infinity()
    out = str(tmp_path / 'stream')
    ap = argparse.ArgumentParser()
    evaluate.EvaluateOptions._add_argparse_args(ap)
    args = ap.parse_args(['--task', 'ranking', '--window_size', str(W), '--output', out,
                          '--input_subscription', 'projects/p/subscriptions/s'] + flags)
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        source = streams.window_and_gate(p | ts, args)
        evaluate.build_streaming(p, args, source=source)
    records = []
    for path in sorted(glob.glob(os.path.join(out, 'metrics-*.jsonl'))):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    return records


def test_windows_with_qrels_equal_pytrec_eval(tmp_path):
    rng = np.random.default_rng(0)
    rows, times, qrels = [], [], {}
    for q in range(12):   # a query's rows land together, 4 queries per window
        docs = rng.choice(30, size=5, replace=False)
        for d in docs:
            rows.append({'q_id': f'q{q}', 'doc_id': f'd{d}',
                         'score': float(rng.integers(0, 3)), 'model': 'ab'[q % 2]})
            times.append(1 + (q // 4) * W)
        qrels[f'q{q}'] = {f'd{d}': int(rng.integers(0, 3))
                          for d in rng.choice(30, size=8, replace=False)}
    with open(tmp_path / 'qrels.txt', 'w') as f:
        f.writelines(f'{q} 0 {d} {r}\n' for q, js in qrels.items() for d, r in js.items())
    records = run_stream(tmp_path, rows, times, [
        '--qrels', str(tmp_path / 'qrels.txt'), '--score_column', 'score',
        '--metrics', 'map,ndcg_cut,P', '--cutoffs', '1,3', '--slice_by', 'model'])
    assert len(records) == 3 and {r['timing'] for r in records} == {'on_time'}
    for record in records:
        start = int(record['window_start'][17:19]) + 60 * int(record['window_start'][14:16])
        window = [r for r, t in zip(rows, times) if start <= t < start + W]
        run = {}
        for r in window:
            run.setdefault(r['q_id'], {})[r['doc_id']] = r['score']
        want = pytrec_eval.RelevanceEvaluator(qrels, {'map', 'ndcg_cut.1,3', 'P.1,3'}
                                              ).evaluate(run)
        for name in ('map', 'ndcg_cut_3', 'P_1'):
            ref = np.mean([v[name] for v in want.values()])
            assert abs(record['overall'][name] - ref) <= 1e-12, (start, name)
        assert record['overall']['n_queries'] == len(want) == 4
        for m in 'ab':
            ids = [q for q in want if 'ab'[int(q[1:]) % 2] == m]
            ref = np.mean([want[q]['map'] for q in ids])
            assert abs(record['slices'][f'model={m}']['map'] - ref) <= 1e-12


def test_windows_from_the_logs_own_relevance(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{'q_id': i // 5, 'predicted_rank': i % 5, 'truth_relevance': int(rng.integers(0, 3))}
            for i in range(40)]
    times = [1 + (i // 20) * W for i in range(40)]
    records = run_stream(tmp_path, rows, times, ['--metrics', 'map,recip_rank', '--cutoffs', '2'])
    assert len(records) == 2
    for record in records:
        start = int(record['window_start'][17:19])
        window = [r for r, t in zip(rows, times) if start <= t < start + W]
        qd, rd = {}, {}
        for i, r in enumerate(window):
            qd.setdefault(str(r['q_id']), {})[str(i)] = r['truth_relevance']
            rd.setdefault(str(r['q_id']), {})[str(i)] = -float(r['predicted_rank'])
        want = pytrec_eval.RelevanceEvaluator(qd, {'map', 'recip_rank'}).evaluate(rd)
        for name in ('map', 'recip_rank'):
            assert abs(record['overall'][name] - np.mean([v[name] for v in want.values()])
                       ) <= 1e-12


def test_judgments_are_read_again_when_their_files_change(tmp_path):
    path = tmp_path / 'qrels.txt'
    path.write_text('1 0 a 1\n1 0 b 2\n1 0 a 3\n')   # a repeated pair: the first is kept
    now = [0.0]
    latest = LatestJudgments(str(path), 'trec', 60.0, 1, clock=lambda: now[0])
    assert latest.get(0).to_pydict() == {'q_id': ['1', '1'], 'doc_id': ['a', 'b'],
                                         'relevance': [1.0, 2.0]}
    path.write_text('1 0 a 1\n1 0 b 2\n1 0 c 1\n')   # as long as before: a new mtime
    os.utime(path, (1e9, 1e9))
    now[0] = 30.0   # before the next look: the judgments in use
    assert latest.get(0).num_rows == 2
    now[0] = 61.0
    assert latest.get(0).column('doc_id').to_pylist() == ['a', 'b', 'c']


def test_trec_runs_and_complete_are_batch_only(tmp_path):
    for flags, message in ((['--run_format', 'trec'], 'reads files in batch'),
                           (['--qrels', 'q.txt', '--complete'], 'for a batch run')):
        with pytest.raises(BeammlError, match=message):
            run_stream(tmp_path, [{'q_id': 1, 'predicted_rank': 0, 'truth_relevance': 1}],
                       [1.0], flags)
