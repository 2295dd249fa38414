"""Smoke tests for the benchmark and GPU-check scripts, so they cannot rot silently.

Both run in-process on the tiny test dataset (`--quick`, CPU standing in for CUDA); the figures
they print are meaningless here, but every section must finish and every check must agree.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"cvret_script_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_headline_comparison():
    gc = load_script("gpu_check")
    row = {"pair": "sketch-npr", "acc@1": 0.5, "MRR": 0.7}
    assert gc.same_headline([row], [dict(row)])
    assert not gc.same_headline([row], [dict(row, MRR=0.6)])
    assert not gc.same_headline([row], [dict(row, MRR=None)])  # a missing number never agrees
    assert not gc.same_headline([], [])


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(dataset, tmp_path, capsys):
    gc = load_script("gpu_check")
    # fp16 convolutions on a CPU are slow and say nothing about a GPU: fp32 and bf16 exercise the same code
    gc.main(["--data", str(dataset), "--out", str(tmp_path), "--device", "cpu", "--quick", "--precisions", "fp32,bf16"])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["eval_same_metrics"] is True
    assert res["gpu_search_top10_identical_to_cpu"] == 1.0
    assert res["cpu_fp32_rel_err_vs_cpu_fp32"] < 1e-5
    assert res["index_views"] == 54 and res["cpu_bf16_top1_agreement"] > 0.5


@pytest.mark.slow
def test_bench_quick_search_and_compressed(dataset, tmp_path, capsys):
    bench = load_script("bench")
    rc = bench.main(["--quick", "--sections", "search,compressed", "--data", str(dataset), "--out", str(tmp_path),
                     "--search-sizes", "64", "--agg-shapes", "8", "--compressed-settings", "8:6",
                     "--figure", str(tmp_path / "s.png")])
    assert rc == 0
    rep = json.loads((tmp_path / "bench.json").read_text())
    for name in ("search", "compressed"):
        assert "error" not in rep["sections"][name], rep["sections"][name]
    assert rep["sections"]["compressed"]["available"] is True
    assert rep["sections"]["compressed"]["settings"][0]["recall_at_10_mean"] == 1.0  # 6 candidates = all views


@pytest.mark.slow
def test_bench_storage_quick(tmp_path):
    """The storage benchmark's commit, read and search sections on small sizes: each measures and agrees."""
    import subprocess
    import sys

    out = tmp_path / "storage.json"
    res = subprocess.run([sys.executable, str(SCRIPTS / "bench_storage.py"), "--quick", "--sections",
                          "commit,read,search", "--sizes", "120", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    assert rep["commit"]["views"] == 64 and rep["read"]["views"] == 64
    s = rep["search"]["120"]
    assert s["views"] == 120 and s["same_top10"] is True and s["ratio_to_stream"] > 0


@pytest.mark.slow
def test_bench_cluster_quick_without_ray(tmp_path):
    """The sharding benchmark: 1 shard and 4 shards give the exact top-10."""
    import subprocess
    import sys

    out = tmp_path / "cluster.json"
    res = subprocess.run([sys.executable, str(SCRIPTS / "bench_cluster.py"), "--quick", "--no-ray", "--views", "60",
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    exact = json.loads(out.read_text())["shards"]["exact"]
    assert exact["one_shard_equals_exact"] is True and exact["four_shards_equal_exact"] is True


def test_scale_study_quick(dataset, index32, tmp_path, capsys):
    study = load_script("scale_study")
    assert study.main(["--data", str(dataset), "--index", str(index32), "--limit", "3",
                       "--json", str(tmp_path / "scale.json")]) == 0
    res = json.loads((tmp_path / "scale.json").read_text())
    assert res["weights"] == "untrained:seed=0" and set(res["npr_extents"]) == {"az000", "az030", "az075"}
    assert {(r["condition"], r["setting"]) for r in res["rows"]} == {
        (c, s) for c in study.CONDITIONS for s in study.SETTINGS}
    assert all(r["queries"] == 3 and 0 <= r["acc@1"] <= r["acc@5"] <= 1 for r in res["rows"])
    assert "| original |" in capsys.readouterr().out


def test_scale_study_transforms():
    from PIL import Image, ImageDraw

    study = load_script("scale_study")
    im = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(im).rectangle((40, 40, 160, 160), outline="black", width=4)
    assert study.transform(im, "2:1 canvas").size == (400, 200)
    half = study.transform(im, "scale 50%")
    shifted = study.transform(im, "70% off-centre 1/4")
    from retrieval.framing import ink_box

    assert ink_box(half) == (70, 70, 131, 131)
    box = ink_box(shifted)
    assert box[0] > 100 and box[2] <= 200 and box[3] <= 200  # moved right and down, nothing cut
