"""The names of a cycle day's files under ``WORK/D/`` (the steps write them; ``status`` and
the timeline read them), and the timeline's default length."""
from __future__ import annotations

ASSIGN, MONITOR = 'assign', 'monitor'
GATE_FILE, RETRAIN_FILE = 'gate.json', 'retrain.json'
FAILURES_FILE = 'failures.json'
SUCCESS = '_SUCCESS'
#: the day's page (monitor's report with the cycle's timeline) and the timeline's data
#: beside it, which the next day's timeline reads the unchanged days from; both written by
#: the monitor step, outside the folder monitor committed
DAY_REPORT, TIMELINE_FILE = 'report.html', 'timeline.json'
#: the timeline of the last N days on the day's page (``--timeline_days``)
TIMELINE_DAYS = 30
