"""``benchmarks/gpu_batching.py --http`` runs to completion (sim backend, seconds), so the script cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_batching


def test_http_mode_with_the_sim_backend_prints_the_batching_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--backend", "sim", "--http", "--sizes", "64x64", "--clients", "4", "--requests", "8"]
    argv += ["--batch-sizes", "1,4", "--sim-a", "0.1", "--sim-b", "0.005", "--max-wait-ms", "20", "--json", str(out)]
    assert gpu_batching.main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["size", "max_batch", "clients"]
    report = json.loads(out.read_text())
    assert report["mode"] == "http" and report["server"]["backend"] == "sim"
    off, on = report["results"]
    assert (off["max_batch"], on["max_batch"]) == (1, 4)
    assert off["ok"] == on["ok"] == 8 and off["errors"] == on["errors"] == 0
    assert off["mean_batch"] == 1 and on["mean_batch"] > 1
    assert off["ratio"] == 1 and on["ratio"] > 1  # t(B) = 0.1 + 0.005 B: batching must win
    assert on["peak_gpu_mem_gib"] is None  # no GPU here


def test_zimage_needs_a_model() -> None:
    with pytest.raises(SystemExit):
        gpu_batching.main(["--http"])


def test_the_whole_set_in_one_command_on_a_simulator_profile(tmp_path: Path, capsys) -> None:
    """``--mode all`` (the default): the backend sweep, then servers at --max-batch 1 and 4, 4 and 8 clients."""
    out = tmp_path / "all.json"
    argv = ["--backend", "sim", "--profile", "h200-512", "--sim-scale", "0.02", "--sizes", "64x64", "--steps", "1"]
    argv += ["--batch-sizes", "1,4", "--max-batches", "1,4", "--requests", "8", "--repeats", "1", "--json", str(out)]
    assert gpu_batching.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "all" and report["server"]["config"]["physics"]["estimate"] is True
    assert [r["batch_size"] for r in report["backend_results"]] == [1, 4]
    rows = report["http_results"]
    assert [(r["clients"], r["max_batch"]) for r in rows] == [(4, 1), (4, 4), (8, 1), (8, 4)]
    for r in rows:
        assert r["errors"] == 0 and 0 < r["gpu_busy"] <= 1.05
        assert r["ratio"] == 1 if r["max_batch"] == 1 else r["ratio"] > 0
