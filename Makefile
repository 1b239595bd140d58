# The two commands (README): `make demo` installs and runs the main job on the embedded
# default; `make test` installs what is missing and runs the test suite.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
DEMO    ?= demo-out
PYTEST_EXTRA ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install demo test test-full bench bench-check rasa-check clean

install: $(STAMP)

# torch is installed alone first, pinned: the CPU wheel; anything unpinned pulls CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -e '.[test,multilingual]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selflearn simulate --output $(DEMO)/sim
	$(VENV)/bin/selflearn run --input $(DEMO)/sim/log --output $(DEMO)/root
	$(VENV)/bin/selflearn evaluate --run $(DEMO)/root --sim $(DEMO)/sim

# Two tiers (README, "Testing"): `make test` is everything but the heavy tests, with one
# shared end-to-end run; `make test-full` is the second tier (kill chains, clusters,
# servers, skew and memory). .ci/run runs both.
# The second tier runs its test files on HEAVY_WORKERS pytest-xdist workers, a file per
# worker (--dist loadfile: a module's fixtures, its pipeline runs, stay in one process).
# On 2 cores 2 workers took 1,229 s against 1,490 s for one (README, "Testing"); the fast
# tier stays in one process: its session fixtures (Spark, the shared end-to-end run) would
# be made once per worker, and 2 workers took 289 s against 221 s.
HEAVY_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not heavy" --durations=15 tests

test-full: $(STAMP)
	$(PY) -m pytest -q -m heavy -n $(HEAVY_WORKERS) --dist loadfile --durations=15 $(PYTEST_EXTRA) tests

# the fast encoder path is what the suite measures (not the default: embedding_backend auto, see config.py)
bench: $(STAMP)
	$(PY) -m bench.run --config '{"embedding_backend": "onnx-int8"}'

# the bench suite's --quick mode end to end, as a test (left out of `make test` for time)
bench-check: $(STAMP)
	SELFLEARN_BENCH_TEST=1 $(PY) -m pytest -q tests/test_bench.py

# Rasa reads the Rasa export (bench/rasa_check.py): Rasa Pro, the first Rasa for Python 3.11,
# in a venv of its own (about 1.3 GB, 3 min to install; its pins clash with selflearn's).
RASA_VENV ?= .venv-rasa
RUN       ?= $(DEMO)/root
$(RASA_VENV)/.installed-stamp:
	test -x $(RASA_VENV)/bin/python || python3 -m venv $(RASA_VENV)
	$(RASA_VENV)/bin/pip install --disable-pip-version-check rasa-pro==3.21.0
	touch $@

rasa-check: $(STAMP) $(RASA_VENV)/.installed-stamp
	$(PY) bench/rasa_check.py --run $(RUN) --rasa-python $(RASA_VENV)/bin/python

clean:
	rm -rf $(DEMO) .pytest_cache
