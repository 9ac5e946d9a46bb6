# Night Core — the two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --no-input

.PHONY: demo test test-under-load unit tenants bench clean audit release

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
	$(BIN)/python tools/audit_deps.py --new-unaudited warn
	$(BIN)/python -m pytest -n 2 -q

# The suite twice at the same time (`make test-under-load`), each in its own temporary clone of
# this repository (what is committed: HEAD), failing if either run fails: shakes out tests
# that lean on timing, fixed ports or shared paths. The clones share the built virtualenv: each
# gets a .venv of symlinks to ours whose nightcore points at the clone's src/ (so even the
# `python -I` strongbox workers import the clone). PYTEST_ARGS tunes both runs.
PYTEST_ARGS ?= -n 2 -q -p no:cacheprovider
test-under-load: $(VENV)/.dev
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	base=$$(readlink -f $(BIN)/python); \
	for n in a b; do \
	  git clone -q "$(CURDIR)" "$$tmp/$$n"; \
	  v="$$tmp/$$n/$(VENV)"; lib="$$v/$${site#$(CURDIR)/$(VENV)/}"; \
	  mkdir -p "$$v/bin" "$$lib"; cp $(VENV)/pyvenv.cfg "$$v/"; \
	  for f in $(CURDIR)/$(BIN)/*; do \
	    case "$${f##*/}" in python*) ln -s "$$base" "$$v/bin/$${f##*/}";; *) ln -s "$$f" "$$v/bin/";; esac; \
	  done; \
	  for f in "$$site"/*; do case "$$f" in *__editable__*) ;; *) ln -s "$$f" "$$lib/";; esac; done; \
	  echo "$$tmp/$$n/src" > "$$lib/__editable__.nightcore.pth"; \
	done; \
	for n in a b; do \
	  (cd "$$tmp/$$n" && exec $(VENV)/bin/python -m pytest $(PYTEST_ARGS)) > "$$tmp/$$n.log" 2>&1 & \
	  eval "pid_$$n=$$!"; \
	done; \
	rc=0; for n in a b; do \
	  eval "pid=\$$pid_$$n"; if wait "$$pid"; then r=0; else r=$$?; rc=1; fi; \
	  echo "== clone $$n: pytest exit $$r"; tail -n 25 "$$tmp/$$n.log"; \
	done; \
	exit $$rc

# Supply-chain gates (docs/supply-chain.md): hash pins, pyproject/locks/venv agreement, the SBOM
# against the lock, the licence allow-list, pip-audit against PyPI's vulnerability service.
audit: $(VENV)/.dev
	$(BIN)/python tools/audit_deps.py

# A reproducible, signed release of HEAD (docs/supply-chain.md): built twice in two clean clones
# and compared by SHA-256; SHA256SUMS, a CycloneDX SBOM and SLSA provenance, signed (DSSE) with
# RELEASE_KEY (private key PEM; passphrase from NIGHTCORE_KEY_PASSPHRASE). Verify with
# `nightcore release verify DIR --key RELEASE_PUB`.
RELEASE_DIR ?= dist/release
release: $(VENV)/.dev
	@test -n "$(RELEASE_KEY)" || { echo "make release RELEASE_KEY=path/to/release.key"; exit 2; }
	$(BIN)/python tools/release.py --key "$(RELEASE_KEY)" --out "$(RELEASE_DIR)"

unit: $(VENV)/.dev
	$(BIN)/python -m pytest -q tests/unit

# Rebuild the committed C tenants (byte-identical: `make test` checks it).
tenants: $(VENV)/.dev
	$(BIN)/python tools/build_tenants.py --rebuild-c

# Benchmark-only peers (Extism's Python SDK, the Wasmtime CLI), hash-pinned like the rest.
$(VENV)/.bench: $(VENV)/.dev requirements-bench.lock
	$(PIP) install -q --require-hashes -r requirements-bench.lock
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m compileall -q src
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-workspace demo-keys .pytest_cache .mypy_cache .ruff_cache
