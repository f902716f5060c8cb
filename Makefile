# Quick start: `make demo` (train on the built-in data, print the WSC summary) and `make test`.
# Each target creates .venv and installs the package into it once (again only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/wsca-train $(ARGS)

# one torch thread per test process, one process per core (pytest-xdist); a file's tests share a worker, so a
# module's trained fixture is built once
test: $(BIN)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile $(ARGS)

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/callback_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun
