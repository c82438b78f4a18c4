"""Builds the package and its compiled dense-CRF kernels (`lightning_deeplab._C`).

Install with `pip install --no-build-isolation -e .`: the build needs the torch that is
already installed, not a second copy in an isolated build environment.
"""

import importlib.util
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "_crf_build", os.path.join(_HERE, "lightning_deeplab", "crf", "_build.py")
)
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

with_cuda = build.want_cuda()
if with_cuda:
    build.prepare_cuda_environment()
Extension = CUDAExtension if with_cuda else CppExtension

ext = Extension(
    name=build.EXTENSION_NAME,
    sources=[os.path.relpath(s, _HERE) for s in build.sources(with_cuda=with_cuda)],
    include_dirs=build.include_dirs(),
    extra_compile_args=build.extra_compile_args(with_cuda=with_cuda),
)

setup(
    # configs/ ships inside the package as lightning_deeplab/configs (the demo finds it there);
    # the kernel sources are data packages, so the just-in-time build finds them in any install.
    packages=find_packages(include=["lightning_deeplab", "lightning_deeplab.*"])
    + [
        "lightning_deeplab.configs",
        "lightning_deeplab.csrc",
        "lightning_deeplab.csrc.cpu",
        "lightning_deeplab.csrc.cuda",
    ],
    package_dir={"lightning_deeplab.configs": "configs"},
    package_data={"lightning_deeplab.configs": ["*.yaml"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
