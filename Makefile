# Two set-up commands on a fresh clone: `make run` and `make test`. `make install` is the shared step.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint docs bench ablation reproduce-mlp reproduce-mlp-large reproduce-vgg reproduce-cifar slurm-up slurm-down \
	mcu-toolchain clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,docs,tune]'
	touch $(STAMP)

run: install
	$(BIN)/nitro train

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests scripts

# The user manual (docs/) as a static site in site/: the config reference is regenerated from the configs
# first; --strict fails on a broken link or a page left out of the nav.
docs: install
	$(BIN)/python scripts/gen_config_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python scripts/bench.py

# The paper's MLP1/MLP2 rows, 10 seeds, both protocols (about 45 minutes on 2 cores); needs NITRO_DATA.
reproduce-mlp: install
	scripts/reproduce-mlp.sh results/mlp

# The paper's MLP3 rows (3 seeds each) and MLP4 row (1 seed); hours on 2 cores, rerunnable across sessions;
# needs NITRO_DATA with MNIST, FashionMNIST and CIFAR-10.
reproduce-mlp-large: install
	scripts/reproduce-mlp-large.sh results/mlp-large

# The paper's VGG8B MNIST/FashionMNIST rows, seed 42, first EPOCHS epochs (about an hour per epoch on 2 cores).
EPOCHS ?= 2
reproduce-vgg: install
	scripts/reproduce-vgg.sh $(EPOCHS) results/vgg

# The paper's CIFAR-10 rows (VGG8B in both arithmetics, VGG8B with the double update alone, VGG11B), seed 42,
# first EPOCHS epochs (15-25 minutes per epoch and run on 2 cores); needs NITRO_DATA with CIFAR-10.
reproduce-cifar: install
	scripts/reproduce-cifar.sh $(EPOCHS) results/vgg

# What each reference behaviour (compat switch) does to a reduced VGG8B on MNIST (minutes); needs NITRO_DATA.
ablation: install
	$(BIN)/python scripts/ablation.py --out results/ablation

# A private single-node SLURM cluster under SLURM_DIR (root; installs Debian's packages when missing), e.g.
# for the slurm tests: make slurm-up && NITRO_SLURM_DIR=/tmp/nitro-slurm make test; make slurm-down.
SLURM_DIR ?= /tmp/nitro-slurm
slurm-up:
	scripts/slurm-up.sh $(SLURM_DIR)

slurm-down:
	scripts/slurm-down.sh $(SLURM_DIR)

# The cross compiler the C export's microcontroller test builds with (root; installs Debian's
# gcc-arm-none-eabi when missing; without it the test uses cc -m32 or skips).
mcu-toolchain:
	scripts/mcu-toolchain.sh

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache site
