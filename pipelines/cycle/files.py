"""The names of a cycle day's files under ``WORK/D/`` (the steps write them; ``status`` and
the timeline read them), and the timeline's default length."""
from __future__ import annotations

ASSIGN, MONITOR = 'assign', 'monitor'
GATE_FILE, RETRAIN_FILE = 'gate.json', 'retrain.json'
FAILURES_FILE = 'failures.json'
SUCCESS = '_SUCCESS'
#: the timeline of the last N days in the monitor step's report (``--timeline_days``)
TIMELINE_DAYS = 30
