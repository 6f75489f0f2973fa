# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create the virtual environment on first use. torch is pinned and installed first so that
# MONAI does not pull a multi-GB CUDA build; the pinned CPU wheel is served from the local disk.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps -e benchmarks  # `coralbay bench` (entry point; not in the wheel)
	touch $@

.PHONY: setup demo test
setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/coralbay demo --output demo-output

# Two pytest workers (pytest-xdist) for CI's two cores: every test is single-threaded and much of it
# waits on child processes. Each test file runs whole on one worker (--dist loadfile), so its module
# fixtures (servers, phantoms, bundles) are built once. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
