# The README's commands. Each target does its own set-up, idempotently: a fresh machine needs
# nothing but Python 3 and a compiler (and nvcc, for the CUDA kernels).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

export NO_ALBUMENTATIONS_UPDATE := 1
# Without a GPU, cpp_extension cannot pick an architecture: build for Hopper unless told otherwise.
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
export TORCH_CUDA_ARCH_LIST ?= 9.0
endif
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

CSRC := $(shell find lightning_deeplab/csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: install demo test bench clean
install: $(VENV)/.built

$(VENV)/.deps: requirements/pinned.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first and pinned, so nothing below resolves a different build of it.
	$(PIP) install -q -r requirements/pinned.txt numpy
	$(PIP) install -q -c requirements/pinned.txt \
		"pytorch-lightning>=2.4,<3" "torchmetrics>=1.4" "albumentations>=2.0,<3" "wandb>=0.17" \
		"jsonargparse[signatures]>=4.30" ninja pillow matplotlib pytest scikit-image scipy
	# pydensecrf2 is the reference the CRF is tested against (it builds from source).
	$(PIP) install -q pydensecrf2
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

demo: install
	$(PY) -m lightning_deeplab.demo --output outputs/demo

test: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q

bench: install
	$(PY) benchmarks/crf.py

clean:
	rm -rf build *.egg-info lightning_deeplab/_C*.so $(VENV)/.built
