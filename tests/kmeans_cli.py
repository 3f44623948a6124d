"""Helpers for the K-means tests: several KMeans graphs in one pipeline (``run_kmeans``), and
`beamml kmeans` as a process to kill, or in this process (resume, compare)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid

from beamml.transforms.model import list_versions


def kmeans_process(input_path: str, model_dir, *flags, env: dict | None = None):
    """``beamml kmeans --input INPUT --model DIR FLAGS``: in a new process when ``env`` is
    given (added to this one's environment: e.g. the kill switch, which needs a process
    to kill), otherwise in this process (tests/inprocess.py: the exit code and what it
    prints, without the 2-3 s a new Python spends importing Beam)."""
    argv = ['kmeans', '--input', str(input_path), '--model', str(model_dir), *map(str, flags)]
    if env is None:
        from inprocess import run_beamml
        return run_beamml(*argv)
    return subprocess.run([sys.executable, '-m', 'beamml', *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def model_doc(model_dir) -> dict:
    """The model.json of the only version in ``model_dir``, without the fields that
    name the run (``version``, ``created``): what two equal trainings share bit for bit."""
    (version,) = list_versions(str(model_dir))
    with open(os.path.join(model_dir, version, 'model.json')) as f:
        doc = json.load(f)
    return {k: v for k, v in doc.items() if k not in ('version', 'created')}


def save_result(result, out_dir, name):
    """Pickle a pipeline's value into OUT_DIR/NAME-<unique>.pkl (a Map writes it)."""
    with open(os.path.join(out_dir, f'{name}-{uuid.uuid4().hex}.pkl'), 'wb') as f:
        pickle.dump(result, f)


def run_kmeans(tmp_path, cases):
    """Run several KMeans graphs in one pipeline: {name: (batches, kwargs)} -> {name: result}."""
    import apache_beam as beam
    from beamml.transforms.kmeans import KMeans
    out = tmp_path / f'results-{uuid.uuid4().hex[:6]}'
    out.mkdir()
    with beam.Pipeline(runner='FnApiRunner') as p:
        for name, (batches, kwargs) in cases.items():
            (p
             | f'Create_{name}' >> beam.Create(batches, reshuffle=False)
             | f'KMeans_{name}' >> KMeans(**kwargs)
             | f'Save_{name}' >> beam.Map(save_result, str(out), name))
    results = {}
    for f in sorted(os.listdir(out)):
        name = f.rsplit('-', 1)[0]
        assert name not in results, f'{name}: more than one result'
        with open(out / f, 'rb') as fh:
            results[name] = pickle.load(fh)
    assert set(results) == set(cases)
    return results
