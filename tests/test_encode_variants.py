"""Smoke test of scripts/encode_variants.py: it runs, measures the bound in the same run, and reports ratios."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_encode_variants_quick(tmp_path):
    out = tmp_path / "v.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "encode_variants.py"), "--quick", "--variants",
                          "eager,nonsense", "--batches", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert abs(got["GFLOP_per_view"] - 15.85) < 0.05  # counted on the real trunk, RN101 to layer3 at 224 px
    eager, bad = got["runs"]
    assert eager["variant"] == "eager" and eager["views_per_s"] > 0 and got["square_gemm_GFLOPs"] > 0
    assert eager["GFLOP_per_s"] == pytest.approx(eager["views_per_s"] * got["GFLOP_per_view"])
    assert eager["of_square_gemm"] == pytest.approx(eager["GFLOP_per_s"] / got["square_gemm_GFLOPs"])
    assert "error" in bad and "nonsense" in bad["error"]  # a variant that cannot run is reported, not fatal
    assert "load" in res.stdout
