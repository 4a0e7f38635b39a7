# Two commands do all set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# one process: two pytest-xdist workers ran out of the machine's 24 GiB (each grows to 11-13 GB over the suite), and
# on the subset they took 11 minutes where one process takes about 6 (both frameworks already use both cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=50 tests

# a representative subset for iteration (tests/conftest.py: --fast); `make test` stays the whole suite
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --fast --durations=10 tests

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
