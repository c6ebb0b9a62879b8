# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Arize Phoenix for tests/test_phoenix.py, in its own venv (large; never in the dev venv). An
# existing one is used as is: `make test SPANMUX_PHOENIX_PYTHON=/path/to/venv/bin/python`.
ifdef SPANMUX_PHOENIX_PYTHON
PHOENIX_VENV ?= $(patsubst %/bin/python,%,$(SPANMUX_PHOENIX_PYTHON))
else
PHOENIX_VENV ?= .venv-phoenix
endif
PHOENIX_STAMP := $(PHOENIX_VENV)/bin/phoenix
export SPANMUX_PHOENIX_PYTHON := $(abspath $(PHOENIX_VENV))/bin/python

export MLFLOW_DISABLE_TELEMETRY := true
export LITELLM_LOCAL_MODEL_COST_MAP := True
export DO_NOT_TRACK := 1
export DSPY_CACHEDIR := $(CURDIR)/.spanmux/dspy-cache

.PHONY: demo test lint typecheck bench bench-smoke schema clean phoenix-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(PHOENIX_STAMP):
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install --quiet 'arize-phoenix==20.26.1' arize-phoenix-client

phoenix-venv: $(PHOENIX_STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py
	@for f in examples/llamaindex_rag.py examples/dspy_react.py examples/ab_sessions.py; do \
		if [ -f $$f ]; then $(PY) $$f || exit 1; fi; done
	@echo
	@echo "See the demo's traces in your browser (waterfall, messages, sessions, A/B charts):"
	@echo "  $(VENV)/bin/spanmux ui --store .spanmux/spanmux.db"

lint: $(STAMP)
	$(VENV)/bin/ruff check spanmux integrations backends config_schemas tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy spanmux integrations backends config_schemas

test: lint typecheck $(STAMP) $(PHOENIX_STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-smoke: $(STAMP)
	$(PY) benchmarks/run.py --smoke

schema: $(STAMP)
	$(PY) -m spanmux.cli schema --write

clean:
	rm -rf $(VENV) $(PHOENIX_VENV) .spanmux build dist *.egg-info
