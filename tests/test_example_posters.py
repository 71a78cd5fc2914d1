"""The README's daily-poster scenario, run as a user would: ``python examples/daily_posters.py OUT``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_daily_posters_example_makes_nine_watermarked_posters_and_a_manifest(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "daily_posters.py"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert len(rows) == 9 and {r["status"] for r in rows} == {"finished"}
    assert {(r["item"], r["preset"]) for r in rows} == {
        (sku, p) for sku in ("TS-001", "JK-002", "DN-003") for p in ("main", "detail", "social")
    }
    formats = {"main": ("JPEG", (1024, 1024)), "detail": ("JPEG", (768, 1024)), "social": ("WEBP", (1024, 576))}
    for row in rows:
        with Image.open(row["path"]) as img:
            assert (img.format, img.size) == formats[row["preset"]]
        if row["preset"] == "main":
            with Image.open(row["thumbnail"]) as thumb:
                assert max(thumb.size) == 256
    assert (tmp_path / "manifest.json").is_file()
