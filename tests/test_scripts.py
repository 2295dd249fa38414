"""Smoke tests for the benchmark and GPU-check scripts, so they cannot rot silently.

They run in-process on the tiny test dataset (`--quick`, CPU standing in for CUDA); the figures
they print are meaningless here, but every section must finish and every check must agree.
The benchmark's pure pieces (load rules, FLOP and GEMM bookkeeping, import-time parsing) are
tested directly and fast.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """A script as a module (scripts/ is put on sys.path by bench.py itself, for its `benchmarks` package)."""
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


def run_bench(tmp_path, sections: str, *args) -> dict:
    """bench.py --quick on the given sections; every section finished without error; the report."""
    import logging

    import matplotlib

    bench = load_script("bench")
    out = tmp_path / "bench_out"
    level, backend = logging.getLogger().level, matplotlib.get_backend()
    assert bench.main(["--quick", "--sections", sections, "--out", str(out), *map(str, args)]) == 0
    assert logging.getLogger().level == level and matplotlib.get_backend() == backend  # no process-wide changes
    rep = json.loads((out / "bench.json").read_text())
    for name in sections.split(","):
        sec = rep["sections"][name]
        assert "error" not in sec and "render_error" not in sec, sec
        assert {"loadavg_before", "loadavg_after", "other_processes_cores", "contended", "ratios_valid"} <= set(sec)
    assert len(rep["summary"]) >= 1
    return rep


@pytest.mark.slow
def test_bench_quick_search_and_compressed(dataset, tmp_path):
    rep = run_bench(tmp_path, "search,compressed", "--data", dataset, "--search-sizes", "64", "--agg-shapes", "8",
                    "--compressed-settings", "8:6", "--figure", tmp_path / "s.png")
    S = rep["sections"]
    assert S["search"]["single"]["64"]["cvret_exact_path_s"] > 0 and S["search"]["real_index"]["views"] == 24
    assert "error" not in S["search"]["demo_index"]
    assert S["compressed"]["available"] is True
    assert S["compressed"]["settings"][0]["recall_at_10_mean"] == 1.0  # 6 candidates = all views


@pytest.mark.slow
def test_bench_quick_encode_and_forward(dataset, tmp_path):
    """encode and the issue-14 forward section (FLOPs counted on the trunk, bounds, bf16-vs-fp32 agreement)."""
    rep = run_bench(tmp_path, "encode,forward", "--data", dataset, "--encode-shapes", "2", "--baseline-images", "2",
                    "--forward-batch", "2")
    enc, fwd = rep["sections"]["encode"], rep["sections"]["forward"]
    assert enc["views"] == 18 and enc["baseline_vs_cvret_fp32_rel_err_max"] < 1e-4
    assert enc["bf16_accuracy"]["queries"] == 6
    assert 14 < fwd["flops"]["per_view_GFLOP"] < 17  # RN101 up to layer3 at 224 px: about 15.85
    assert fwd["flops"]["conv_GFLOP_per_view"] == pytest.approx(fwd["flops"]["per_view_GFLOP"], rel=1e-6)
    assert fwd["bound_plain_gemm"]["GFLOP_per_s"] > 0 and fwd["bound_conv_gemms"]["views_per_s"] > 0
    assert fwd["forward"]["views_per_s"] > 0 and fwd["ratio_to_plain_gemm"] > 0
    assert fwd["agreement"]["queries"] == 6 and fwd["agreement"]["top1_agreement"] is not None


@pytest.mark.slow
def test_bench_quick_memory_and_scale(dataset, tmp_path):
    fig = tmp_path / "scaling.png"
    rep = run_bench(tmp_path, "memory,scale", "--data", dataset, "--scale-sizes", "100,300", "--scale-mem-gb",
                    "0.1", "--figure", fig)
    mem, sc = rep["sections"]["memory"], rep["sections"]["scale"]
    assert mem["small"]["views"] == 18 and mem["large"]["views"] == 54 and mem["small"]["peak_rss_mb"] > 0
    assert sc["exact"]["100"]["measured"] is True and sc["exact"]["300"]["measured"] is False  # over 0.1 GiB
    assert sc["figure"] == str(fig) and fig.stat().st_size > 0


@pytest.mark.slow
def test_bench_quick_startup(dataset, tmp_path, monkeypatch):
    """The issue-14 start-up section: `cvret index` at two sizes, a cold `cvret query`, the import breakdown."""
    monkeypatch.setenv("CVRET_ONNX", "1")  # conftest turns it off; the section measures the default query path
    rep = run_bench(tmp_path, "startup", "--data", dataset, "--startup-views", "3,6", "--query-runs", "1")
    st = rep["sections"]["startup"]
    assert st["index"]["small"]["views"] == 3 and st["index"]["large"]["views"] == 6
    ix = st["index"]
    if ix["marginal_views_per_s"] is not None:  # None only when the larger run was not slower (a busy machine)
        assert ix["startup_s"] == pytest.approx(ix["large"]["process_s"] - 6 / ix["marginal_views_per_s"])
    assert len(st["query"]["runs_s"]) == 1 and st["query"]["min_s"] > 0 and len(st["query"]["torch_runs_s"]) == 1
    # the warm-up index cached the ONNX model, so the default query imported onnxruntime and never torch
    imports = st["imports"]["by_package_s"]
    assert imports.get("torch", 0) == 0 and imports["onnxruntime"] > 0
    assert st["imports"]["total_s"] <= st["imports"]["process_s"]
    ag = st["agreement"]
    assert ag["queries"] == 6 and 0.99 <= ag["vs_torch_fp32"]["top1_agreement"] <= 1
    assert 0 <= ag["vs_torch_bf16"]["topk_overlap_mean"] <= 1


def test_bench_has_no_process_wide_side_effects(tmp_path):
    """Loading the benchmark and its sections changes neither the root logger nor matplotlib's backend."""
    import logging

    import matplotlib

    level, backend = logging.getLogger().level, matplotlib.get_backend()
    bench = load_script("bench")
    for name in bench.SECTIONS:
        bench.section(name)
    assert logging.getLogger().level == level and matplotlib.get_backend() == backend


def test_load_rules_mark_ratios_contended(monkeypatch):
    bl = load_script("bench_lib")
    monkeypatch.setattr(bl, "_system_busy_s", iter([100.0, 101.0]).__next__)  # others: 1 CPU-second ...
    monkeypatch.setattr(bl.time, "perf_counter", iter([0.0, 1.0]).__next__)    # ... in one second
    monkeypatch.setattr(bl, "_own_cpu_s", lambda: 5.0)
    rec = bl.Watch(start_load=0.2).stop()
    assert rec["contended"] is True and rec["other_processes_cores"] == pytest.approx(1.0)
    assert bl.contended({"part": {"inner": rec}}) is True   # found at any depth
    monkeypatch.setattr(bl, "_system_busy_s", iter([100.0, 100.1]).__next__)
    monkeypatch.setattr(bl.time, "perf_counter", iter([0.0, 1.0]).__next__)
    quiet = bl.Watch(start_load=0.2).stop()
    assert quiet["contended"] is False and not bl.contended({"part": quiet})
    monkeypatch.setattr(bl, "_system_busy_s", iter([100.0, 100.1]).__next__)
    monkeypatch.setattr(bl.time, "perf_counter", iter([0.0, 1.0]).__next__)
    assert bl.Watch(start_load=1.5).stop()["contended"] is True  # a busy machine when the benchmark started
    assert bl.valid(0.9, True) == "contended" and bl.valid(0.9, False) == 0.9


def test_summary_marks_timed_ratios_contended():
    bench = load_script("bench")
    fwd = {"ratio_to_plain_gemm": 0.9, "ratio_to_conv_gemms": 0.95,
           "agreement": {"top1_agreement": 1.0, "top10_overlap_mean": 1.0},
           "speed_load": {"loadavg_before": [2.0] * 3, "contended": True}}
    rows = bench.summary({"sections": {"forward": fwd}})
    status = {r[0]: r[3] for r in rows}
    assert status["forward bf16 / plain 2048^2 bf16 GEMM bound"] == "contended: not valid"
    assert status["forward bf16 vs fp32: top-1 agreement"] == "met"   # not a timing: load does not matter
    fwd["speed_load"]["contended"] = False
    assert {r[0]: r[3] for r in bench.summary({"sections": {"forward": fwd}})}[
        "forward bf16 / plain 2048^2 bf16 GEMM bound"] == "met"


def test_conv_gemm_shapes_and_flops():
    load_script("bench")  # puts scripts/ on sys.path
    from benchmarks.forward import conv_gemms

    # a 3x3 conv 256->256 at 14x14 and a grouped 1x1 conv 64->64 (4 groups) at 7x7, batch 1 when counted
    convs = [((1, 256, 14, 14), (256, 256, 3, 3), (1, 256, 14, 14), 1),
             ((1, 64, 7, 7), (64, 16, 1, 1), (1, 64, 7, 7), 4)]
    g = conv_gemms(convs, batch=8)
    assert g == {(8 * 196, 2304, 256): 1, (8 * 49, 16, 16): 4}
    flops = sum(2 * m * k * n * c for (m, k, n), c in g.items())
    assert flops == 8 * (2 * 196 * 256 * 256 * 9 + 2 * 49 * 64 * 16)


def test_index_rates_marginal_and_startup():
    load_script("bench")
    from benchmarks.startup import index_rates

    r = index_rates({"views": 96, "process_s": 10.0}, {"views": 480, "process_s": 26.0})
    assert r["marginal_views_per_s"] == pytest.approx(24.0)          # 384 more views in 16 more seconds
    assert r["end_to_end_views_per_s"] == pytest.approx(480 / 26)
    assert r["ratio_to_marginal"] == pytest.approx(480 / 26 / 24)
    assert r["startup_s"] == pytest.approx(6.0)                      # 26 s - 480 views / 24 views/s
    none = index_rates({"views": 96, "process_s": 10.0}, {"views": 480, "process_s": 9.0})
    assert none["marginal_views_per_s"] is None and none["startup_s"] is None and none["ratio_to_marginal"] is None


def test_import_breakdown_sums_self_times_per_package():
    load_script("bench")
    from benchmarks.startup import import_breakdown

    err = "\n".join(["import time: self [us] | cumulative | imported package",
                      "import time:      2000 |       2000 |     torch._C",
                      "import time:      1000 |       3000 |   torch",
                      "import time:       500 |        500 |   faiss.loader",
                      "import time:       250 |        750 | faiss",
                      "import time:       100 |        100 | json",
                      "some other line on stderr"])
    b = import_breakdown(err)
    assert b["by_package_s"] == {"torch": 0.003, "faiss": 0.00075, "other": 0.0001}
    assert b["total_s"] == pytest.approx(0.00385)


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


@pytest.mark.parametrize("views", ["5", "9,3", "0,4", "3,6,9"])
def test_bench_refuses_bad_startup_views(views, capsys):
    bench = load_script("bench")
    with pytest.raises(SystemExit):
        bench.parse_args(["--startup-views", views])
    assert "--startup-views" in capsys.readouterr().err
    assert bench.parse_args(["--startup-views", "3,6"]).startup_views == [3, 6]


@pytest.mark.slow
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
