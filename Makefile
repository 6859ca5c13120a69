# Two commands on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build; on a GPU machine install a CUDA torch into the venv first (see README).
TORCH  ?= torch==2.13.0

.PHONY: install quickstart test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned, so the package's unpinned `torch` requirement is already satisfied.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/micro-doe data make spheres --shape 64 64 64 --seed 0 --out micro-doe-runs/spheres-64.nc
	$(BIN)/micro-doe evaluate micro-doe-runs/spheres-64.nc --json micro-doe-runs/spheres-64.json

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/descriptors.py

clean:
	rm -rf $(VENV) micro-doe-runs .pytest_cache
