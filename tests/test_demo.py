"""`cvret demo --small` end to end through the real CLI (offline: falls back to untrained weights)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from .conftest import run_cli


@pytest.mark.slow
def test_demo_small_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "demo"
    res = run_cli(["demo", "--small", "--out", out, "--quiet", "--workers", "2"])
    assert "UNTRAINED RN101 weights" in res.output and "NOT the seed paper's" in res.output
    for step in ("[1/4] data", "[2/4] index", "[3/4] query", "[4/4] eval", "done in"):
        assert step in res.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["weights"] == "untrained"
    sheets = sorted((out / "queries").glob("*.png"))
    assert [p.name for p in sheets] == sorted(Path(q["sheet"]).name for q in summary["queries"]) and len(sheets) == 3
    for p in sheets:  # each sheet is a readable image, not an empty file
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["cvret_version"]
    assert (out / "report" / "report.md").read_text().count("untrained") >= 1
    # a second run redoes nothing expensive
    res2 = run_cli(["demo", "--small", "--out", out, "--quiet", "--workers", "2"])
    assert "0 generated, 10 up to date" in res2.output and "0 embedded" in res2.output
