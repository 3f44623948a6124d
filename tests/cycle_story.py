"""The story both orchestrator tests run (tests/test_airflow_cycle.py: the Airflow DAG;
tests/test_workflows_cycle.py: the Cloud Workflows definition), four days on the Cloud
Storage emulator, and the checks of what the days left:

* day 1 (2026-11-01): a normal day: m0, no alarm, nothing trained, nothing shadowed;
* day 2: the input is late (the orchestrator's wait finds nothing and waits); the day's
  points are shifted by +2 in x: the rule (psi above 0.5 on one day) fires and ``c2`` is
  trained;
* day 3: its assign shadows ``c2``, the gate promotes it (LATEST m0 -> c2); the rule fires
  again on m0's traffic but nothing is trained (LATEST moved that day);
* day 4: uses ``c2``; no alarm;
* then day 3 again (a rerun of a complete day): nothing in the bucket changes.

The oracle: each day's assignments are numpy's nearest centre of the model that day used,
and the gate's promotion follows both models' inertia on day 3's traffic (numpy).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from inprocess import run_beamml

DAYS = [dt.date(2026, 11, d) for d in (1, 2, 3, 4)]
LATE, DRIFT_FROM, RERUN = DAYS[1], DAYS[1], DAYS[2]
BLOBS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
PER_BLOB = 100
MONITOR_YAML = """\
thresholds: {far_share_ratio: 4.0}
rules:
  - {name: psi_1_day, metric: psi, threshold: 0.5, consecutive: 1}
retrain: {input: 'BUCKET/incoming/{date}/*.parquet', max_iter: 50}
"""
GATE_YAML = """\
thresholds:
  - metric: agreement
    lower_bound: 0.8
  - metric: inertia_per_point
    change: {relative: 0.0, direction: lower_is_better}
"""


def points(day: dt.date | None) -> np.ndarray:
    """The day's points (None: the training data of m0)."""
    number = 0 if day is None else day.day
    rng = np.random.default_rng(2000 + number)
    X = np.concatenate([rng.normal(c, 0.7, size=(PER_BLOB, 2)) for c in BLOBS])
    return X + [2.0, 0.0] if day is not None and day >= DRIFT_FROM else X


def parquet(X: np.ndarray, number: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({'id': np.arange(len(X)) + 100_000 * number,
                             'features': pa.array(list(X), pa.list_(pa.float64(), 2))}), buf)
    return buf.getvalue()


class Bucket:
    """A new bucket on the emulator, with m0 trained (``beamml kmeans``) and the configs."""

    def __init__(self, name: str):
        from google.cloud import storage
        self.url = f'gs://{name}'
        self.bucket = storage.Client.create_anonymous_client().create_bucket(name)
        self.put('monitor.yaml', MONITOR_YAML.replace('BUCKET', self.url))
        self.put('gate.yaml', GATE_YAML)
        self.put('incoming/2026-10-31/p0.parquet', parquet(points(None), 0))
        out = run_beamml('kmeans', '--input', f'{self.url}/incoming/2026-10-31/*.parquet',
                         '--k', '3', '--random_state', '0', '--model', f'{self.url}/models')
        assert out.returncode == 0, out.stderr[-2000:]
        self.m0 = self.text('models/LATEST')

    def land(self, day: dt.date) -> None:
        self.put(f'incoming/{day}/p0.parquet', parquet(points(day), day.day))

    def put(self, name: str, data) -> None:
        self.bucket.blob(name).upload_from_string(data)

    def json(self, name: str) -> dict:
        return json.loads(self.bucket.blob(name).download_as_bytes())

    def text(self, name: str) -> str:
        return self.bucket.blob(name).download_as_bytes().decode().strip()

    def objects(self) -> dict:
        return {b.name: b.generation for b in self.bucket.list_blobs()}

    def rows(self, day: dt.date) -> pa.Table:
        names = sorted(b.name for b in self.bucket.list_blobs(prefix=f'cycle/{day}/assign/')
                       if re.search(r'/part-\d{5}-of-\d{5}\.parquet$', b.name))
        return pa.concat_tables([pq.read_table(io.BytesIO(
            self.bucket.blob(k).download_as_bytes())) for k in names])


def check_the_days(b: Bucket) -> None:
    """The decision files, the model each day used and LATEST, against the story; the
    assignments and the promotion against numpy."""
    m0 = b.m0
    used = {day: b.json(f'cycle/{day}/assign/_SUCCESS')['model']['version'] for day in DAYS}
    retrain = {day: b.json(f'cycle/{day}/retrain.json') for day in DAYS}
    gates = {day: b.json(f'cycle/{day}/gate.json') for day in DAYS}
    c2 = retrain[DAYS[1]]['candidate_version']
    assert [retrain[d]['status'] for d in DAYS] == ['skipped', 'trained', 'skipped', 'skipped']
    assert 'LATEST moved' in retrain[DAYS[2]]['reason']
    assert [used[d] for d in DAYS] == [m0, m0, m0, c2] and c2 != m0
    assert b.text('models/LATEST') == c2
    assert [(g['decision'], g['promoted']) for g in gates.values()] == [
        ('none', False), ('none', False), ('promote', True), ('none', False)]
    assert (gates[DAYS[2]]['production_version'], gates[DAYS[2]]['candidate_version'],
            gates[DAYS[2]]['latest']) == (m0, c2, c2)
    fired = [b.json(f'cycle/{d}/monitor/decision.json')['retrain'] for d in DAYS]
    assert fired == [False, True, True, False]
    from beamml.transforms.model import CentroidModel
    for day in DAYS:
        X = points(day)
        centers = CentroidModel.load(f'{b.url}/models/{used[day]}').centers
        d2 = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        rows = b.rows(day).sort_by('id')
        assert rows['id'].to_pylist() == (np.arange(len(X)) + 100_000 * day.day).tolist()
        np.testing.assert_array_equal(rows['cluster'].to_numpy(), d2.argmin(1))
    X = points(DAYS[2])
    inertia = [((X[:, None, :] - CentroidModel.load(f'{b.url}/models/{v}').centers[None]) ** 2)
               .sum(-1).min(1).mean() for v in (m0, c2)]
    assert inertia[1] <= inertia[0]   # why the gate promoted c2
