"""The kernel cache: a build is reused only for exactly the sources it was made from. (The build on
first use itself, and the load from the cache afterwards, are tested end to end from an installed
wheel in tests/test_wheel.py: one compile in the suite.)"""

from lightning_deeplab.crf import _build


def test_a_cached_build_is_used_only_for_the_same_sources(tmp_path, monkeypatch):
    for name in ("lattice.h", "ops.cpp"):
        (tmp_path / name).write_text("// v1\n")
    monkeypatch.setenv(_build.KERNEL_DIR_ENV, str(tmp_path / "cache"))
    first = _build.cached_build_dir(False, str(tmp_path))
    assert first.startswith(str(tmp_path / "cache"))
    assert _build.cached_build_dir(False, str(tmp_path)) == first
    assert _build.cached_build_dir(True, str(tmp_path)) != first  # the CUDA kernels: another build
    (tmp_path / "lattice.h").write_text("// v2\n")  # a header changed: another build
    assert _build.cached_build_dir(False, str(tmp_path)) != first
