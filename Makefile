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

# two pytest workers (pytest-xdist): GRAPH_MODE compilation and Python overhead are single-threaded, so two workers
# on 2 cores finish well before one (docs/testing.md has the figures)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=20 tests

# a representative subset for iteration (tests/conftest.py: --fast); `make test` stays the whole suite
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --fast --durations=10 tests

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
