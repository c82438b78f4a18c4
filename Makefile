# The README's commands. Each target does its own set-up, idempotently: a fresh machine needs
# nothing but Python 3 and a compiler (and nvcc, for the CUDA kernels).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

export NO_ALBUMENTATIONS_UPDATE := 1
# The CUDA architectures of a GPU-less build default to lightning_deeplab/crf/_build.py's
# DEFAULT_CUDA_ARCH_LIST; set TORCH_CUDA_ARCH_LIST to build for others.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: install demo test test-cuda-emulated lint bench clean
install: $(VENV)/.built

$(VENV)/.built: requirements/pinned.txt pyproject.toml setup.py $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first and pinned, so nothing below resolves a different build of it; Cython and numpy
	# are the build tools of the test extra's pydensecrf2 (built without isolation below).
	$(PIP) install -q -r requirements/pinned.txt numpy cython ninja
	# The package with its declared dependencies and the test extra (pyproject.toml lists them),
	# built against the torch above.
	$(PIP) install -q --no-build-isolation -c requirements/pinned.txt -e ".[test]"
	touch $@

demo: install
	$(PY) -m lightning_deeplab.commands.demo --output outputs/demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The tests, the CUDA sources on the host emulation under the sanitizers (the emulated tests
# run there rather than twice), then the linter and the formatter's check (pyproject.toml).
test: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q -m "not emulated"
	$(MAKE) test-cuda-emulated
	$(MAKE) lint

# The CUDA kernels and their host code, compiled as C++ over tests/cuda_emulation and run on
# the CPU: the emulated tests inside Python under AddressSanitizer and UBSan (their runtimes
# preloaded; any report ends the run, and --capture=sys leaves it on the terminal), then a
# standalone driver on several threads under ThreadSanitizer. Each build is redone only when a
# source changed.
SANITIZER_RUNTIMES = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libubsan.so)
test-cuda-emulated: install
	LIGHTNING_DEEPLAB_EMULATION_SANITIZE=address,undefined LD_PRELOAD="$(SANITIZER_RUNTIMES)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(PY) -m pytest -q -p no:cacheprovider --capture=sys -m emulated tests/crf
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(PY) tests/cuda_emulation/build.py tsan-driver --run

bench: install
	$(PY) benchmarks/crf.py

clean:
	rm -rf build *.egg-info lightning_deeplab/_C*.so $(VENV)/.built
