# Night Core — the two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --no-input

.PHONY: demo test lint typecheck unit tenants check-tenants bench clean

# The virtualenv is built only from the hash-pinned locks (pip --require-hashes), then the
# project itself is installed without touching the network (--no-deps --no-build-isolation).
$(VENV)/.runtime: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@# An editable install leaves our sources uncompiled; with PYTHONDONTWRITEBYTECODE set
	@# (as on these machines) every cold start would recompile them (~100 ms).
	$(BIN)/python -m compileall -q src
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(PIP) install -q --require-hashes -r requirements-dev.lock
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m nightcore.demo

test: $(VENV)/.dev
	$(BIN)/python tools/system_deps.py
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks
	$(BIN)/mypy
	$(BIN)/python tools/build_tenants.py --check-c
	$(BIN)/python -m pytest -n 2 -q

unit: $(VENV)/.dev
	$(BIN)/python -m pytest -q tests/unit

# Rebuild the committed C tenants (byte-identical: `make test` checks it).
tenants: $(VENV)/.dev
	$(BIN)/python tools/build_tenants.py --rebuild-c

bench: $(VENV)/.dev
	$(BIN)/python -m compileall -q src
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-workspace demo-keys .pytest_cache .mypy_cache .ruff_cache
