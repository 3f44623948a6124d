"""Multiclass, weighted and scored classification per event-time window (issue 22, part 4):
``evaluate --streaming`` equals the batch pipeline on each window's rows."""
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from combiner_contract import assert_same
from beamml.pipelines import evaluate
from beamml.pipelines._platform import streams
from beamml.pipelines.__main__ import main
from test_streaming import W, log_batch, make_stream, parse, read_jsonl, stream_options


def test_multiclass_streaming_equals_the_batch_pipeline_on_each_window(tmp_path):
    rng = np.random.default_rng(8)
    n = 60
    proba = rng.dirichlet([1, 1, 1], n).round(3)
    proba[:, 2] = 1 - proba[:, 0] - proba[:, 1]
    rows = [{'id': i, 'truth': str(rng.choice(['x', 'y', 'z'])),
             'prediction': str(rng.choice(['x', 'y', 'z'])), 'w': float(rng.integers(1, 4)),
             'px': float(proba[i, 0]), 'py': float(proba[i, 1]), 'pz': float(proba[i, 2]),
             'model': 'ab'[i % 2]} for i in range(n)]
    times = [0.4 * i for i in range(n)]   # windows [0,10), [10,20), [20,30)
    events = [('at', 0)]
    for lo in range(0, n, 4):
        events.append(('add', [(times[lo], log_batch(rows[lo:lo + 4]))]))
    flags = ['--task', 'classification', '--average', 'weighted', '--weight_column', 'w',
             '--probability_columns', 'x=px,y=py,z=pz', '--beta', '2', '--slice_by', 'model']
    out = str(tmp_path / 'stream')
    args = parse(evaluate.EvaluateOptions, flags + [
        '--window_size', str(W), '--output', out,
        '--input_subscription', 'projects/p/subscriptions/s'])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args)
        evaluate.build_streaming(p, args, source=source)
    records = [r for rs in read_jsonl(f'{out}/metrics-*.jsonl').values() for r in rs]
    assert len(records) == len({r['window_start'] for r in records}) == 3
    for record in records:
        start = int(record['window_start'][17:19]) + 60 * int(record['window_start'][14:16])
        subset = [r for i, r in enumerate(rows) if start <= times[i - i % 4] < start + W]
        path = tmp_path / f'w{start}.parquet'
        pq.write_table(pa.Table.from_pylist(subset), path)
        assert main(['evaluate', '--input', str(path), '--output', str(tmp_path / f'b{start}')]
                    + flags) == 0
        with open(tmp_path / f'b{start}' / 'metrics.json') as f:
            batch = json.load(f)
        assert 'roc_auc' in record['overall'] and 'fbeta' in record['overall']
        assert_same(batch['overall'], record['overall'], rtol=1e-12, atol=1e-12)
        assert_same(batch['slices'], record['slices'], rtol=1e-12, atol=1e-12)
