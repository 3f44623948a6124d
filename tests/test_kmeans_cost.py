"""The cost model of ``beamml kmeans``, counted in a real run (issue 21).

One read of the input (into the point cache); one pass over the raw cache to centre
it; one pass over the centred cache per iteration; one final pass over the raw cache
that makes the sizes and inertia, the baseline, the --output labels and the report's
sample together. The run reports what each of its pipelines read (Beam counters: the
records of the input, ``records_read``, and the rows of the point cache,
``beamml.kmeans/cache_rows_read``): these tests count them from its log lines.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamml.pipelines import kmeans

N = 600
PIPELINE = re.compile(r'kmeans \S+: (.+) read (\d+) input record\(s\) and (\d+) row\(s\) of '
                      r'the point cache$')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('cost')
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (N, 3))   # no clusters: Lloyd takes many iterations
    for i, part in enumerate(np.array_split(np.arange(N), 2)):   # two files, two batches
        pq.write_table(pa.table({'id': pa.array([f'p{j}' for j in part]),
                                 **{f'x{c}': X[part, c] for c in range(3)}}),
                       str(d / f'part-{i}.parquet'))
    np.save(d / 'c0.npy', X[[0, 1, 2]])
    return {'pattern': str(d / 'part-*.parquet'), 'c0': str(d / 'c0.npy'), 'X': X}


def _pipelines(caplog) -> list[tuple[str, int, int]]:
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in
            (PIPELINE.search(r.getMessage()) for r in caplog.records) if m]


@pytest.mark.parametrize('block_size', [10, 2])
def test_the_input_is_read_once_and_the_cache_once_per_iteration_plus_two(
        data, tmp_path, caplog, block_size):
    """--output, the baseline and the report: the input is read once; the cache is read
    once to centre it, once per iteration and once at the end, in blocks or not."""
    n_iter = 5
    with caplog.at_level(logging.INFO, logger='beamml'):
        model = kmeans.run(['--input', data['pattern'], '--init', data['c0'], '--tol', '0',
                            '--max_iter', str(n_iter), '--block_size', str(block_size),
                            '--model', str(tmp_path / 'm'), '--output', str(tmp_path / 'lab/l')])
    assert model.n_iter == n_iter
    runs = _pipelines(caplog)
    assert sum(records for _, records, _ in runs) == N            # one read of the input
    assert [what for what, records, _ in runs if records] == ['block 1 (read, cache, seeding)']
    # centring (1) + the iterations (n_iter) + the final pass (1), nothing else
    assert sum(rows for _, _, rows in runs) == N * (1 + n_iter + 1)
    assert runs[-1] == ('final pass', 0, N)
    labels = pq.read_table(str(next((tmp_path / 'lab').glob('l-*.parquet'))))
    assert labels.num_rows == N and sorted(labels.column('id').to_pylist()) == sorted(
        f'p{j}' for j in range(N))
    assert np.bincount(labels.column('cluster').to_numpy(), minlength=3).tolist() == \
        model.cluster_sizes
    cost = [r.getMessage() for r in caplog.records if ': cost: ' in r.getMessage()]
    assert len(cost) == 1 and f'{N} input record(s) read' in cost[0] and \
        f'({1 + n_iter + 1} pass(es) over {N} points)' in cost[0]


def test_kmeans_parallel_seeding_costs_its_rounds_and_no_more(data, tmp_path, caplog):
    """k-means|| reads the centred cache once per round, plus once to weigh its
    candidates (docs/pipelines/kmeans.md); a run without --output still makes its one
    final pass."""
    with caplog.at_level(logging.INFO, logger='beamml'):
        model = kmeans.run(['--input', data['pattern'], '--k', '3', '--init', 'k-means||',
                            '--init_steps', '2', '--tol', '0', '--max_iter', '3',
                            '--random_state', '0', '--model', str(tmp_path / 'm')])
    runs = _pipelines(caplog)
    assert sum(records for _, records, _ in runs) == N
    assert sum(rows for _, _, rows in runs) == N * (1 + (2 + 1) + model.n_iter + 1)
    assert runs[-1] == ('final pass', 0, N)


def test_the_final_pass_on_the_pool_is_bit_for_bit_the_final_pass_on_one_thread(
        tmp_path, monkeypatch):
    """The final pass works on several cache files at once (the E-step's thread pool)
    and adds their parts in file order: the baseline, the result and the labels are
    those of one thread, bit for bit."""
    import json
    import os
    import beamml.transforms.kmeans.runtime as runtime
    from kmeans_cli import kmeans_process, model_doc
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6000, 4)) * 3
    path = str(tmp_path / 'x.parquet')
    pq.write_table(pa.table({'id': pa.array(np.arange(6000)),
                             **{f'x{c}': X[:, c] for c in range(4)}}), path,
                   row_group_size=700)   # 9 batches: 9 cache files
    docs = {}
    for how in ('pool', 'one thread'):
        if how == 'one thread':
            monkeypatch.setitem(runtime._POOL, os.getpid(), None)
        model, out = tmp_path / f'm-{how}', tmp_path / f'labels-{how}'
        done = kmeans_process(path, model, '--k', 5, '--random_state', 1, '--max_iter', 4,
                              '--output', f'{out}/l')
        assert done.returncode == 0, done.stderr
        (version,) = [v for v in os.listdir(model) if v[0].isdigit()]
        with open(model / version / 'baseline.json') as f:
            base = json.load(f)
        labels = pq.read_table(str(out)).select(['id', 'cluster', 'distance']).sort_by('id')
        base['model'].pop('version')   # the rest of the baseline names no run
        docs[how] = ({k: v for k, v in base.items() if k not in ('created', 'source')},
                     model_doc(model), labels)
    assert docs['pool'][0] == docs['one thread'][0]
    assert {k: v for k, v in docs['pool'][1].items() if k != 'config'} == \
        {k: v for k, v in docs['one thread'][1].items() if k != 'config'}
    assert docs['pool'][2].equals(docs['one thread'][2])
