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

.PHONY: install demo test test-full bench bench-check clean

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
test: $(STAMP)
	$(PY) -m pytest -q -m "not heavy" --durations=15 tests

test-full: $(STAMP)
	$(PY) -m pytest -q -m heavy --durations=15 $(PYTEST_EXTRA) tests

# the fast encoder path is what the suite measures (not the default: embedding_backend auto, see config.py)
bench: $(STAMP)
	$(PY) -m bench.run --config '{"embedding_backend": "onnx-int8"}'

# the bench suite's --quick mode end to end, as a test (left out of `make test` for time)
bench-check: $(STAMP)
	SELFLEARN_BENCH_TEST=1 $(PY) -m pytest -q tests/test_bench.py

clean:
	rm -rf $(DEMO) .pytest_cache
