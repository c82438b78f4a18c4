"""The benchmark scripts still run: each imports and parses its options, and the pydensecrf API
comparison runs end to end on a tiny input. They time nothing here (timings are not tests);
this only keeps them from rotting when the code they import changes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The scripts with command-line options (crf_peak_memory.py is a child process of crf.py).
SCRIPTS = ["crf", "crf_dataset", "crf_pydensecrf_api", "crf_training", "train_throughput"]


def load(name: str, monkeypatch):
    # The scripts import each other by bare name, as they do when run from benchmarks/.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_covered():
    found = {path.stem for path in BENCHMARKS.glob("*.py")} - {"crf_peak_memory"}
    assert found == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports_and_parses_its_options(name, monkeypatch, capsys):
    module = load(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_pydensecrf_api_benchmark_runs_and_agrees_with_pydensecrf(monkeypatch, capsys):
    pytest.importorskip("pydensecrf.densecrf")
    module = load("crf_pydensecrf_api", monkeypatch)
    argv = ["crf_pydensecrf_api.py", "--sizes", "24x16x3", "--volume", "6", "--repeats", "1", "--no-cuda"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| photo") or line.startswith("| volume")
    ]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        # max abs diff against pydensecrf2, then the share of pixels with the same argmax
        assert float(cells[4]) < 1e-4, row
        assert cells[5] == "100.0000%", row


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_step(tmp_path):
    # The script a GPU machine runs once, in a few minutes, with no chance to fix it there: its
    # CPU dry run takes every step that does not need the GPU, on tiny inputs.
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--cpu-dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert report["failed_steps"] == [], (tmp_path / "gpu_check.log").read_text()[-4000:]
    ran = {step["step"] for step in report["steps"] if step.get("rc") == 0}
    assert {"cuda_tests", "crf_benchmark", "crf_batch", "train_throughput", "fit", "validate_crf_true"} <= ran
