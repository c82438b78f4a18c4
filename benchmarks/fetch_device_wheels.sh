#!/usr/bin/env bash
# Download, on a machine with package-registry access, what a GPU machine without network lacks
# (it has torch, torchvision, lightning, torchmetrics, numpy, scipy, opencv, scikit-image, ninja,
# pytest), as cp312 x86_64 wheels in .whl/ (ignored by git), plus the pydensecrf2 sdist and Cython
# to build it there. Then, on the GPU machine:
#   pip install --no-index --no-deps .whl/*.whl
#   pip install --no-index --no-build-isolation --no-deps .whl/pydensecrf2-*.tar.gz
#   pip install --no-build-isolation --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${WHEEL_DIR:-.whl}  # WHEEL_DIR: somewhere else, e.g. to check the download
py=${PYTHON:-.venv/bin/python}
mkdir -p "$dest"
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "albumentations>=2.0,<3" wandb "jsonargparse[signatures]" cython
"$py" -m pip download -q --no-binary=:all: --no-deps --no-build-isolation -d "$dest" pydensecrf2
# Already on the GPU machine, and too large to carry (the carried tree is capped at 64 MiB).
rm -f "$dest"/numpy-*.whl "$dest"/scipy-*.whl "$dest"/opencv_python*.whl
du -sh "$dest"
