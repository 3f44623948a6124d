# `make demo`, `make test` and `make bench` each create .venv on a machine that
# has only Python 3 and pip, install beamml into it, and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test e2e airflow-venv fuzz bench templates clean

$(STAMP): setup.py pyproject.toml beamml/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m beamml demo --workdir demo_output

# The tests run on every core (pytest-xdist) with one worker more than the cores (many
# tests wait on processes, streams or storage: on 2 cores, 2 workers took 12 min 12 s at
# 155% CPU, 3 took 10 min 34 s, 4 took 10 min 40 s; with the test caches since, 3 take
# 8 min 55 s): each test file on one worker, so its module fixtures are made once, the
# slowest files first (the tests that build beamml's sdist in this folder take turns:
# tests/conftest.py). `make test TEST_WORKERS=0` runs them in this process, one at a time.
# beamml's modules are byte-compiled first: the suite starts Python processes of its own
# (killed CLI runs, the offline dry runs, the docs' shell blocks), and where
# PYTHONDONTWRITEBYTECODE is set (as on the machines we run on) each compiled the 117
# modules again (0.48 s of CPU); Python reads .pyc files whatever that variable says.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')
test: $(STAMP)
	$(PY) -m compileall -q -j 0 beamml pipelines transforms tests >/dev/null
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		-m 'not e2e' tests

# The long end-to-end simulations (tests marked e2e), left out of `make test` to keep it in
# its 10-minute budget: the daily cycle's 30 days on the storage emulator (tests/test_cycle.py,
# ~6 min of one core) and its Airflow DAG run by real Airflow (tests/test_airflow_cycle.py,
# in the Airflow virtualenv below), and its workflow. One module per core (the 30 days on
# one, Airflow's and the workflow's days on the other). CI runs `make test` and then this.
e2e: $(STAMP) $(AIRFLOW_STAMP)
	$(PY) -m compileall -q -j 0 beamml pipelines transforms tests >/dev/null
	BEAMML_AIRFLOW_VENV=$(CURDIR)/$(AIRFLOW_VENV) $(PY) -m pytest -q -rs \
		-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m e2e tests

# Airflow in a virtualenv of its own (its dependencies are not beamml's: the DAG's tasks run
# the `beamml` command of .venv by its path), with a migrated sqlite database that each test
# run copies into its own AIRFLOW_HOME (the migration costs ~15 s of CPU). The install is
# ~295 MB and took 4 min 42 s (network-bound): .ci/run starts it beside `make test`.
AIRFLOW_VERSION := 3.3.2
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
$(AIRFLOW_STAMP):
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet 'apache-airflow==$(AIRFLOW_VERSION)'
	AIRFLOW_HOME=$(CURDIR)/$(AIRFLOW_VENV)/home AIRFLOW__CORE__LOAD_EXAMPLES=False \
		$(AIRFLOW_VENV)/bin/airflow db migrate >$(AIRFLOW_VENV)/migrate.log 2>&1 \
		|| { cat $(AIRFLOW_VENV)/migrate.log; exit 1; }
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

# A long fuzz run (~15 min on 2 cores, plus the data-safety properties: ~100 sequences
# of runs over random trees of files): random examples, and how many ran.
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	BEAMML_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz.py \
		tests/test_data_safety.py -k 'fuzz or survive' --hypothesis-show-statistics

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Every pipeline against its plain baseline (issue 21's sizes, best of 3: the table took
# 10 min 44 s on 2 shared cores), then the streaming benchmarks; prints one table and
# rewrites benchmarks/results.json and the table's block in README.md and docs/benchmarks.md.
# `make bench BENCH_ARGS=--quick`: small sizes, one run each (1 min 45 s); `--no_streaming`.
BENCH_ARGS ?=
bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# Regenerate the Flex Template metadata (configs/templates/*.json) from the pipelines' flags.
templates: $(STAMP)
	$(PY) -m beamml.pipelines._platform.templates --write configs/templates

# Regenerate the command-line reference (docs/cli.md) from the commands' parsers.
.PHONY: docs
docs: $(STAMP)
	$(PY) -m beamml.pipelines._platform.cli_reference --write docs/cli.md

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) demo_output bench_output .pytest_cache *.egg-info
