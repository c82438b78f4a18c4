"""Builds the CUDA sources of the checkout for the host emulation (tests only).

Two targets, each optionally under sanitizers, each in its own folder under
build/cuda-emulation/ and rebuilt by ninja whenever a source or header it uses changes:

- `library`: liblightning_deeplab_emu.so, the operators of namespace `lightning_deeplab_emu`
  (emulated_ops.cpp) over csrc/cuda's host code and kernels; load it with
  `torch.ops.load_library`. Under `address,undefined` the process that loads it must have the
  sanitizer runtimes preloaded (`sanitizer_runtimes`).
- `tsan-driver`: tsan_driver, a standalone program that runs the kernels on several host
  threads, for ThreadSanitizer (which cannot be preloaded into Python).

    python tests/cuda_emulation/build.py library [--sanitize address,undefined]
    python tests/cuda_emulation/build.py tsan-driver --run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD_ROOT = ROOT / "build" / "cuda-emulation"
LIBRARY_NAME = "liblightning_deeplab_emu.so"
DRIVER_NAME = "tsan_driver"
NAMESPACE = "lightning_deeplab_emu"

# -fno-sanitize-recover: the first report ends the process, so no report can go unnoticed.
SANITIZE_FLAGS = {
    "": [],
    "address,undefined": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "thread": ["-fsanitize=thread"],
}


def _package_build():
    """The package's description of the kernel build (crf/_build.py): where the sources are."""
    sys.path.insert(0, str(ROOT))
    try:
        from lightning_deeplab.crf import _build
    finally:
        sys.path.pop(0)
    return _build


def _torch_paths() -> tuple[list[str], list[str], bool]:
    import torch

    cpp_extension = _package_build().import_cpp_extension()
    return cpp_extension.include_paths(), cpp_extension.library_paths(), torch.compiled_with_cxx11_abi()


def _ninja() -> str:
    beside_python = Path(sys.executable).with_name("ninja")
    found = str(beside_python) if beside_python.exists() else shutil.which("ninja")
    if found is None:
        raise RuntimeError("ninja is needed to build the CUDA emulation: pip install ninja")
    return found


def sanitizer_runtimes(sanitize: str) -> list[str]:
    """The shared sanitizer runtimes to preload into a process that loads a library built
    with `sanitize` (g++ links them dynamically)."""
    names = {"address": "libasan.so", "undefined": "libubsan.so", "thread": "libtsan.so"}
    runtimes = []
    for name in filter(None, sanitize.split(",")):
        path = subprocess.run(
            [os.environ.get("CXX", "g++"), f"-print-file-name={names[name]}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not os.path.isabs(path):
            raise RuntimeError(f"the compiler has no {names[name]} (install its sanitizer runtime)")
        runtimes.append(path)
    return runtimes


def _ninja_file(target: str, sanitize: str, folder: Path) -> str:
    csrc = Path(_package_build().CSRC_DIR)
    includes, libraries, cxx11_abi = _torch_paths()
    flags = [
        "-std=c++20",
        "-O1",
        "-g",
        "-fPIC",
        "-fno-omit-frame-pointer",
        "-ffp-contract=off",  # as the real build: the lattice arithmetic rounds every operation
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
        "-Wall",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(cxx11_abi)}",
        f"-I{HERE / 'include'}",  # cuda_runtime_api.h and cub/ stand-ins come first
        f"-I{HERE}",
        f"-I{csrc}",
        *(f"-isystem {path}" for path in includes),
        *SANITIZE_FLAGS[sanitize],
    ]
    link = [*SANITIZE_FLAGS[sanitize], *(f"-L{p} -Wl,-rpath,{p}" for p in libraries), "-lc10", "-ltorch_cpu"]
    sources = [
        csrc / "cuda" / "lattice_ops.cpp",
        csrc / "cuda" / "build_lattice_cuda.cu",
        csrc / "cuda" / "lattice_filter_cuda.cu",
    ]
    if target == "library":
        sources.append(HERE / "emulated_ops.cpp")
        # Exports no symbol at all: the operators register themselves when the library loads.
        output, link = LIBRARY_NAME, ["-shared", f"-Wl,--version-script={HERE / 'exports_nothing.map'}", *link]
    else:
        sources.append(HERE / "tsan_driver.cpp")
        output = DRIVER_NAME
    cxx = os.environ.get("CXX", "g++")
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {cxx}",
        f"cflags = {' '.join(flags)}",
        f"ldflags = {' '.join(link)}",
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $cflags $lang -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = compiling $in (CUDA emulation)",
        "rule link",
        "  command = $cxx $in -o $out $ldflags",
        "  description = linking $out",
    ]
    objects = []
    for source in sources:
        obj = f"{source.parent.name}_{source.name}.o"
        objects.append(obj)
        lines.append(f"build {obj}: compile {source}")
        if source.suffix == ".cu":
            lines.append("  lang = -x c++")  # the .cu files compile as C++ over the emulation
    lines.append(f"build {output}: link {' '.join(objects)}")
    lines.append(f"default {output}")
    return "\n".join(lines) + "\n"


def build(target: str = "library", sanitize: str = "") -> Path:
    """Builds `target` ("library" or "tsan-driver") under `sanitize` ("", "address,undefined",
    "thread") from the checkout's sources, if anything changed; returns the output's path.
    Raises RuntimeError with the compiler's output when the build fails."""
    if target not in ("library", "tsan-driver"):
        raise ValueError(f"target must be 'library' or 'tsan-driver', got {target!r}")
    if sanitize not in SANITIZE_FLAGS:
        raise ValueError(f"sanitize must be one of {sorted(SANITIZE_FLAGS)}, got {sanitize!r}")
    folder = BUILD_ROOT / f"{target}-{sanitize.replace(',', '-') or 'plain'}"
    folder.mkdir(parents=True, exist_ok=True)
    text = _ninja_file(target, sanitize, folder)
    ninja_file = folder / "build.ninja"
    if not ninja_file.exists() or ninja_file.read_text() != text:
        temporary = folder / "build.ninja.tmp"
        temporary.write_text(text)
        os.replace(temporary, ninja_file)
    # The compilers must not run under sanitizer runtimes the calling process may preload.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run([_ninja(), "-C", str(folder)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the CUDA emulation ({target}, sanitize={sanitize or 'none'}) failed:\n{result.stdout}{result.stderr}"
        )
    return folder / (LIBRARY_NAME if target == "library" else DRIVER_NAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["library", "tsan-driver"])
    parser.add_argument("--sanitize", default=None, help="'' , 'address,undefined' or 'thread' (tsan-driver: thread)")
    parser.add_argument("--run", action="store_true", help="run the tsan driver after building it")
    args = parser.parse_args(argv)
    sanitize = args.sanitize if args.sanitize is not None else ("thread" if args.target == "tsan-driver" else "")
    path = build(args.target, sanitize)
    print(path)
    if args.run:
        return subprocess.run([str(path)], check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
