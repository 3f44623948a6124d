"""Helpers for the tests that run `beamml kmeans` as a process (kill, resume, compare)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from beamml.transforms.model import list_versions


def kmeans_process(input_path: str, model_dir, *flags, env: dict | None = None):
    """``python -m beamml kmeans --input INPUT --model_dir DIR FLAGS`` in a new process,
    with ``env`` added to this one's environment (e.g. the test kill switch)."""
    argv = [sys.executable, '-m', 'beamml', 'kmeans', '--input', str(input_path),
            '--model_dir', str(model_dir), *map(str, flags)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def model_doc(model_dir) -> dict:
    """The model.json of the only version in ``model_dir``, without the fields that
    name the run (``version``, ``created``): what two equal trainings share bit for bit."""
    (version,) = list_versions(str(model_dir))
    with open(os.path.join(model_dir, version, 'model.json')) as f:
        doc = json.load(f)
    return {k: v for k, v in doc.items() if k not in ('version', 'created')}
