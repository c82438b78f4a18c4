"""Host emulation of the CUDA runtime, for running csrc/cuda's kernels and host code on the CPU
in the tests (see build.py and csrc/README.md)."""
