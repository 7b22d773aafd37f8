# Two commands set up everything on a fresh machine (Python 3.11, no services, no Docker):
#   make demo [ARGS="--devices 20 --rounds 10"]   run a federated task end to end
#   make test                                      run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYPROJECTS := libs/fedcommon/pyproject.toml $(wildcard services/*/pyproject.toml) cli/pyproject.toml

.PHONY: install demo test lint typecheck clean

install: $(STAMP)

$(STAMP): $(PYPROJECTS) constraints.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: any other version would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt \
		-e "libs/fedcommon[torch,data]" \
		-e services/registry -e services/coordinator -e services/aggregator \
		-e services/simulator -e services/gateway -e services/privacy -e cli
	touch $(STAMP)

demo: install
	$(BIN)/fedengine demo $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
