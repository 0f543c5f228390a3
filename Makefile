# Two commands: `make run` (set up, then the quick depth ablation on Fashion-MNIST)
# and `make test`. `make why` then runs the why-skips analyses on the sweep's cells;
# `make train` trains the single default ResNet-20 run instead; `make normalisation`
# runs the normalisation preset (skip, BatchNorm or initialisation?) and the why-skips
# analyses of its cells that trained into runs/normalisation.
# Both set up first: a virtual environment with the package (at the versions of
# constraints.txt), the oneDNN extension, and the Debian package dataset-fashion-mnist
# where apt-get is available. A second call is fast. `make test` and `make benchmark`
# also install PyTorch (the benchmark's comparison column); `make test` also Debian's
# slurm-wlm and munge (the SLURM tests' real cluster).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
TORCH := $(VENV)/.torch
NATIVE := resnet_jax/native/_onednn.so
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
WORKDIR ?= runs/ablation
NORM_WORKDIR ?= runs/normalisation

.PHONY: setup data slurm run why train test ablation benchmark normalisation
setup: $(STAMP) $(NATIVE) data

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,onednn]'
	touch $(STAMP)

# PyTorch: the benchmark's comparison column and the test of its net (pyproject's extra).
$(TORCH): $(STAMP)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[compare]'
	touch $(TORCH)

# oneDNN's convolutions and BatchNorm for the CPU (seconds to build; where it cannot, it
# says why and runs take fast_conv and Flax's BatchNorm).
$(NATIVE): $(STAMP) $(wildcard resnet_jax/native/*.cc resnet_jax/native/*.h) resnet_jax/native/build.py
	$(VENV)/bin/python -m resnet_jax.native.build

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "No apt-get: put the Fashion-MNIST IDX files in $(dir $(FMNIST)) (or set --config.data.fashion_mnist_dir)."; fi; \
	fi

run: setup
	$(VENV)/bin/python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=$(WORKDIR) --parallel=2

ablation: run

why: setup
	$(VENV)/bin/python -m experiments.why_skips --workdir=$(WORKDIR)

normalisation: setup
	$(VENV)/bin/python -m experiments.depth_ablation --config=configs/ablation.py:normalisation --workdir=$(NORM_WORKDIR) --parallel=2
	$(VENV)/bin/python -m experiments.why_skips --workdir=$(NORM_WORKDIR)

train: setup
	$(VENV)/bin/python -m resnet_jax.main --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist

benchmark: setup $(TORCH)
	$(VENV)/bin/python -m experiments.benchmark

# The SLURM tests' cluster (tests/slurm_cluster.py starts a private one): Debian's
# slurm-wlm and munge, where apt-get is available.
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; \
	  else echo "No apt-get: the SLURM tests skip (install slurm-wlm and munge to run them)."; fi; \
	fi

test: setup $(TORCH) slurm
	$(VENV)/bin/python -m pytest -q -n auto --dist worksteal
