"""The benchmark scripts still run: each imports and parses its options, and the pydensecrf API
comparison runs end to end on a tiny input. They time nothing here (timings are not tests);
this only keeps them from rotting when the code they import changes."""

from __future__ import annotations

import importlib.util
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
