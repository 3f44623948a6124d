"""Demo: make sample data, run the main beamml jobs on the DirectRunner, print where results are.

    beamml demo --workdir demo_output      (what `make demo` runs)

Each step is a function ``step(workdir) -> list of (what, where)`` in STEPS; it
runs its pipeline through the pipeline's own ``run([...])``, exactly as a user
would from the command line.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_points(workdir: str, n: int = 20_000, d: int = 8, seed: int = 0) -> str:
    """Sample point cloud: two Parquet files with an int64 id column and d float columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
    os.makedirs(os.path.join(workdir, 'points'), exist_ok=True)
    half = n // 2
    for i, (lo, hi) in enumerate([(0, half), (half, n)]):
        cols = {'id': pa.array(np.arange(lo, hi, dtype=np.int64))}
        cols.update({f'x{j}': pa.array(X[lo:hi, j]) for j in range(d)})
        pq.write_table(pa.table(cols), os.path.join(workdir, 'points', f'part-{i}.parquet'))
    return os.path.join(workdir, 'points', '*.parquet')


def step_norms(workdir):
    from beamml.pipelines import norms
    pattern = make_points(workdir)
    out = os.path.join(workdir, 'norms', 'norms')
    norms.run(['--input', pattern, '--output', out, '--overwrite'])
    by_l2 = os.path.join(workdir, 'norms', 'by_l2')
    norms.run(['--input', pattern, '--output', by_l2, '--overwrite', '--order', 'l2', '--num_shards', '2',
               '--output_format', 'csv'])
    return [('norms (id, l0, l1, l2, linf)', out + '-?????-of-?????.parquet'),
            ('points ordered by l2, largest first (2 files, in order)',
             by_l2 + '-?????-of-00002.csv')]


def step_index_ids(workdir):
    """Events of 500 users (with repeats) in a CSV -> user id index and re-encoded events."""
    import pyarrow.csv as pcsv
    from beamml.pipelines import index_ids
    rng = np.random.default_rng(1)
    n = 5_000
    users = rng.zipf(1.5, size=n) % 500  # a few heavy users, many rare ones
    os.makedirs(os.path.join(workdir, 'events'), exist_ok=True)
    path = os.path.join(workdir, 'events', 'events.csv')
    pcsv.write_csv(pa.table({
        'user_id': pa.array([f'user-{u:03d}' for u in users]),
        'item': pa.array(rng.integers(0, 100, size=n)),
        'rating': pa.array(rng.integers(1, 6, size=n)),
    }), path)
    out = os.path.join(workdir, 'index_ids', 'users')
    index_ids.run(['--input', path, '--id_column', 'user_id', '--output', out,
                   '--overwrite', '--output_format', 'csv'])
    return [('user id index (id, idx)', out + '-id2idx-?????-of-?????.parquet'),
            ('events with idx (user_id, item, rating, idx)', out + '-encoded-?????-of-?????.csv')]


def step_evaluate(workdir):
    """Prediction logs of two models -> classification and ranking metrics, per model."""
    import pyarrow.csv as pcsv
    from beamml.pipelines import evaluate
    rng = np.random.default_rng(2)
    logs = os.path.join(workdir, 'prediction_logs')
    os.makedirs(logs, exist_ok=True)
    # classification: model b is right more often; 2 rows with a bad label
    n = 10_000
    model = rng.choice(['a', 'b'], n)
    truth = rng.random(n) < 0.3
    pred = np.where(rng.random(n) < np.where(model == 'a', 0.8, 0.9), truth, ~truth)
    label = np.array(['F', 'T'])[truth.astype(int)].astype(object)
    label[[10, 20]] = ['maybe', '?']
    cls_path = os.path.join(logs, 'clicks.csv')
    pcsv.write_csv(pa.table({'model': model, 'clicked': label.astype(str),
                             'predicted_click': pred}), cls_path)
    cls_out = os.path.join(workdir, 'evaluate', 'classification')
    evaluate.run(['--input', cls_path, '--task', 'classification', '--truth_column',
                  'clicked', '--prediction_column', 'predicted_click', '--slice_by', 'model',
                  '--output', cls_out, '--overwrite'])
    # ranking: 2,000 queries x 10 results in two files; one (q_id, rank) pair repeated
    n_q, per = 2_000, 10
    q = np.repeat(np.arange(n_q), per)
    rank = np.tile(np.arange(per), n_q)
    relevance = rng.integers(0, 4, n_q * per) * (rng.random(n_q * per) < 0.6 / (1 + rank))
    table = pa.table({'q_id': q, 'predicted_rank': rank, 'truth_relevance': relevance,
                      'model': np.repeat(rng.choice(['a', 'b'], n_q), per)})
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), os.path.join(logs, 'search-0.parquet'))
    pq.write_table(pa.concat_tables([table.slice(half), table.slice(0, 1)]),
                   os.path.join(logs, 'search-1.parquet'))
    rank_out = os.path.join(workdir, 'evaluate', 'ranking')
    evaluate.run(['--input', os.path.join(logs, 'search-*.parquet'), '--task', 'ranking',
                  '--k', '5', '--slice_by', 'model', '--output', rank_out,
                  '--overwrite'])
    return [('classification metrics, overall and per model', cls_out + '/metrics.json'),
            ('ranking metrics, overall and per model', rank_out + '/metrics.json'),
            ('per-query precision', rank_out + '/per_query/per_query-?????-of-?????.parquet'),
            ('evaluation dead letters (2 bad labels, 1 duplicate rank)',
             os.path.join(workdir, 'evaluate', '*', 'evaluate-errors-*.jsonl'))]


def step_kmeans(workdir):
    """Blobs -> `beamml kmeans` (k-means++) -> `beamml assign` with the model; cluster sizes."""
    from beamml.pipelines import assign, kmeans
    rng = np.random.default_rng(4)
    blob_centres = rng.uniform(-10, 10, size=(5, 4))
    X = blob_centres[rng.integers(0, 5, size=30_000)] + rng.normal(size=(30_000, 4))
    os.makedirs(os.path.join(workdir, 'blobs'), exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(X)), 2)):
        cols = {'id': pa.array(part.astype(np.int64))}
        cols.update({f'x{j}': pa.array(X[part, j]) for j in range(X.shape[1])})
        pq.write_table(pa.table(cols), os.path.join(workdir, 'blobs', f'part-{i}.parquet'))
    pattern = os.path.join(workdir, 'blobs', '*.parquet')
    model_dir = os.path.join(workdir, 'models', 'blobs')
    model = kmeans.run(['--input', pattern, '--k', '5', '--max_iter', '20',
                        '--random_state', '0', '--model', model_dir])
    print(f'trained: cluster sizes {" ".join(map(str, model.cluster_sizes))}')
    out = os.path.join(workdir, 'assign', 'blobs')
    assign.run(['--input', pattern, '--model', model_dir, '--output', out, '--overwrite'])
    return [('K-means model (LATEST -> its version)', os.path.join(model_dir, 'LATEST')),
            ('assignments (id, cluster, distance, model_version)',
             out + '-?????-of-?????.parquet')]


STEPS = [step_norms, step_index_ids, step_evaluate, step_kmeans]


def run(argv=None):
    parser = argparse.ArgumentParser(prog='beamml demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', default='demo_output',
                        help='where the sample data and the results go (emptied first)')
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    results = []
    for step in STEPS:
        print(f'--- {step.__name__[5:]}', flush=True)
        results.extend(step(workdir))
    print('\nresults:')
    for what, where in results:
        print(f'  {what}: {where}')
    hint = how_to_run_beamml()
    if hint:
        print(f'\n{hint}')


def how_to_run_beamml(environ=None) -> str | None:
    """The line that tells how to run ``beamml`` when the environment it is installed in
    (``make demo``'s ``.venv``) is not on ``PATH``; None when ``beamml`` runs as it is."""
    environ = os.environ if environ is None else environ
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    on_path = [os.path.abspath(p) for p in environ.get('PATH', '').split(os.pathsep) if p]
    if bin_dir in on_path:
        return None
    shown = os.path.relpath(bin_dir) if not os.path.relpath(bin_dir).startswith('..') else bin_dir
    return (f'beamml is installed in {os.path.dirname(shown)}, which is not on your PATH: '
            f'run `. {shown}/activate` first, or call {shown}/beamml '
            f'(e.g. {shown}/beamml norms --help)')


if __name__ == '__main__':
    from beamml.pipelines._platform.main import main_wrapper
    raise SystemExit(main_wrapper(run, prog='beamml demo'))
