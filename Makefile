# Two commands set up everything on a fresh machine (Python 3.11, no services, no Docker):
#   make demo [ARGS="--devices 20 --rounds 10"]   run a federated task end to end
#   make test                                      run the whole test suite
# For everyday work: make check (lint, format, types and the unit tests on both cores, ~2 min).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fashion-MNIST (fedcommon.datasets): the Debian package dataset-fashion-mnist, fetched once with
# apt-get download (no root needed) and unpacked into the venv, so that `make clean` removes it.
FASHION_MNIST := $(VENV)/share/fashion-mnist
FASHION_MNIST_STAMP := $(FASHION_MNIST)/.installed
FASHION_MNIST_TMP := $(VENV)/share/.fashion-mnist-download
PYPROJECTS := libs/fedcommon/pyproject.toml libs/fedprivacy/pyproject.toml libs/feddevice/pyproject.toml $(wildcard services/*/pyproject.toml) cli/pyproject.toml

.PHONY: install demo test check lint typecheck clean

install: $(STAMP) $(FASHION_MNIST_STAMP)

$(STAMP): $(PYPROJECTS) constraints.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: any other version would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt \
		-e "libs/fedcommon[service,torch,data]" -e "libs/fedprivacy[accounting]" -e "libs/feddevice[torch,keras]" \
		-e services/registry -e services/coordinator -e services/aggregator \
		-e services/simulator -e services/gateway -e services/privacy -e cli
	touch $(STAMP)

$(FASHION_MNIST_STAMP):
	rm -rf $(FASHION_MNIST_TMP) && mkdir -p $(FASHION_MNIST_TMP)
	@cd $(FASHION_MNIST_TMP) && apt-get download dataset-fashion-mnist || { \
		echo "make install: could not download the Debian package dataset-fashion-mnist" \
			"(Fashion-MNIST) with apt-get download: run 'apt-get update' (as root), then" \
			"make install again." >&2; exit 1; }
	dpkg-deb -x $(FASHION_MNIST_TMP)/dataset-fashion-mnist_*.deb $(FASHION_MNIST_TMP)/root
	rm -rf $(FASHION_MNIST)
	mv $(FASHION_MNIST_TMP)/root/usr/share/datasets/fashion-mnist $(FASHION_MNIST)
	rm -rf $(FASHION_MNIST_TMP)
	touch $(FASHION_MNIST_STAMP)

demo: install
	$(BIN)/fedengine demo $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast lane: everything but the integration tests (no broker, no database, no services).
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests/unit -q -n 2 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
