"""The benchmark still runs: ``python -m benchmarks --quick`` exits 0 and reports every scenario.

Never a timing assertion: the numbers of a quick run on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    report = json.loads(out.read_text())
    from benchmarks.__main__ import SCENARIOS

    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, result in report["scenarios"].items():
        assert "error" not in result, f"{name}: {result.get('error')}"
        assert result["rows"], f"{name} reported no figures"
        for row in result["rows"]:
            assert {"metric", "value", "baseline", "ratio"} <= set(row)


def test_comparing_two_checkouts_runs() -> None:
    """``python -m benchmarks.compare_refs``: two whole stacks (one from a git worktree) answer, then go away."""
    from benchmarks import compare_refs

    before = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    report = compare_refs.run("HEAD", jobs=3, warmup=1)
    for side in ("ref", "this checkout"):
        assert report[side]["api_ms"]["p50"] > 0 and report[side]["direct_ms"]["p50"] > 0
    after = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before  # its worktree is removed again
