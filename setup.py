"""Builds the package, and its compiled dense-CRF kernels (`lightning_deeplab._C`) when torch is
importable at build time.

- `pip install .` (with pip's build isolation, the default): the build environment has no torch,
  and pulling a second, different torch into it would build against the wrong one; the wheel is
  pure Python and carries the kernel sources, which are compiled on first use into a cache, or
  ahead of time by `deeplab build-kernels` (the way DeepSpeed builds its ops).
- `pip install --no-build-isolation .` (and `make install`), torch installed: the kernels are
  compiled now, against that torch, into `lightning_deeplab._C`.

`csrc/` and `configs/` at the repository's top level ship inside the package as
`lightning_deeplab/csrc` and `lightning_deeplab/configs`.
"""

import importlib.util
import os

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "_crf_build", os.path.join(_HERE, "lightning_deeplab", "crf", "_build.py")
)
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def compiled_kernels() -> dict:
    """``setup()``'s arguments for `lightning_deeplab._C`, or none without torch."""
    try:
        import torch  # noqa: F401  (only whether it is there)
    except ImportError:
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = build.want_cuda()
    if with_cuda:
        build.prepare_cuda_environment()
    extension = (CUDAExtension if with_cuda else CppExtension)(
        name=build.EXTENSION_NAME,
        sources=[os.path.relpath(s, _HERE) for s in build.sources(with_cuda=with_cuda)],
        include_dirs=build.include_dirs(),
        extra_compile_args=build.extra_compile_args(with_cuda=with_cuda),
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(
    # the kernel sources are data packages, so the build on first use finds them in any install
    packages=find_packages(include=["lightning_deeplab", "lightning_deeplab.*"])
    + [
        "lightning_deeplab.configs",
        "lightning_deeplab.csrc",
        "lightning_deeplab.csrc.cpu",
        "lightning_deeplab.csrc.cuda",
    ],
    package_dir={"lightning_deeplab.configs": "configs", "lightning_deeplab.csrc": "csrc"},
    package_data={"lightning_deeplab.configs": ["*.yaml"]},
    **compiled_kernels(),
)
