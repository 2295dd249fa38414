"""Helpers for the benchmark scripts: timing, tables, machine information, load, synthetic data and indexes.

Nothing here is part of the cvret library; it only measures it.
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import time
from pathlib import Path

import numpy as np

D_LAYER3 = 1024 * 14 * 14  # 200,704 floats per view (open_clip RN101 layer3 at 224 px)
BUSY_CORES = 0.25          # other processes' average CPU use above which a measurement counts as contended
BUSY_LOAD = 1.0            # ... or a 1-minute load average above this when it started (issue 14's rule)


# ------------------------------------------------------------------ timing

def best_of(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of `repeat` calls (seconds), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def stream_seconds(X: np.ndarray, repeat: int = 5) -> dict:
    """Time to read every byte of X once: a BLAS sgemv (`X @ q`) and `np.add.reduce`; best of `repeat` each."""
    q = np.ones(X.shape[1], dtype=np.float32)
    t_gemv = best_of(lambda: X @ q, repeat)
    t_sum = best_of(lambda: np.add.reduce(X, axis=None), repeat)
    t = min(t_gemv, t_sum)
    return {"sgemv_s": t_gemv, "add_reduce_s": t_sum, "stream_s": t, "bytes": int(X.nbytes),
            "GB_per_s": X.nbytes / t / 1e9}


def stream_bytes_seconds(arrays, repeat: int = 5) -> dict:
    """Time to read every byte of the given arrays once, whatever their dtype (an integer reduction over
    the raw bytes, which numpy vectorises at memory speed); for float16 rows this is the bound of a scan."""
    from concurrent.futures import ThreadPoolExecutor

    arrays = [a for a in (arrays.parts if hasattr(arrays, "parts") else [arrays])]
    flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint64) for a in arrays]
    threads = os.cpu_count() or 1
    # every core reads its own slice at once (numpy releases the GIL), as a parallel scan would
    chunks = [c for v in flat for c in np.array_split(v, threads) if len(c)]
    with ThreadPoolExecutor(threads) as pool:
        t = best_of(lambda: list(pool.map(np.add.reduce, chunks)), repeat)
    n = sum(a.nbytes for a in arrays)
    return {"stream_s": t, "bytes": int(n), "GB_per_s": n / t / 1e9, "threads": threads}


# ------------------------------------------------------------------ printing

def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.{digits}g}"
    return f"{x:.2e}"


def ratio(x, base) -> float | None:
    try:
        return float(x) / float(base) if base else None
    except (TypeError, ValueError):
        return None


def table(title: str, headers: list[str], rows: list[list], notes: list[str] | None = None) -> str:
    """Print a table and return its text."""
    text = format_table(title, headers, rows, notes)
    print(text, flush=True)
    return text


def format_table(title: str, headers: list[str], rows: list[list], notes: list[str] | None = None) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned and formatted by `fmt`."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [f"\n== {title}"]
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    for n in notes or []:
        lines.append(f"   note: {n}")
    return "\n".join(lines)


# ------------------------------------------------------------------ machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return []


def mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (0 when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_info() -> dict:
    import faiss
    import torch

    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gb": round(mem_total() / 2**30, 1),
        "memory_available_gb_at_start": round(mem_available() / 2**30, 1),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        import open_clip
        info["open_clip"] = open_clip.__version__
    except Exception:
        pass
    try:
        from retrieval import __version__
        info["cvret"] = __version__
    except Exception:
        pass
    try:
        from retrieval.encoder import cpu_has_fast_bf16
        info["cpu_fast_bf16"] = cpu_has_fast_bf16()
    except Exception:
        pass
    return info


# ------------------------------------------------------------------ synthetic data

def fill_random(X: np.ndarray, seed: int = 0, base_rows: int = 256) -> np.ndarray:
    """Fill X in place with non-negative pseudo-features (ReLU-like) without a second full-size copy.

    A random base block is tiled with a per-block offset: search speed does not depend on
    the values, and filling at memory speed keeps the 8 GB case quick.
    """
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    base = np.maximum(rng.standard_normal((min(base_rows, n), X.shape[1]), dtype=np.float32), 0)
    for s in range(0, n, len(base)):
        e = min(n, s + len(base))
        np.add(base[: e - s], np.float32(1e-3 * (s // len(base))), out=X[s:e])
    return X


def random_features(n: int, d: int = D_LAYER3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 256):
        e = min(n, s + 256)
        X[s:e] = np.maximum(rng.standard_normal((e - s, d), dtype=np.float32), 0)
    return X


def make_synthetic_index(folder: Path, n_shapes: int, viewpoints, d: int = D_LAYER3, seed: int = 0,
                         domain: str = "npr") -> Path:
    """A real cvret index folder (manifest + feature segments) holding random features.

    `viewpoints` is a list of retrieval.viewpoints.Viewpoint; one view per (shape, viewpoint).
    """
    from retrieval.encoder import PREPROCESS_VERSION
    from retrieval.store import IndexWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp = {"model": "RN101", "layer": "layer3", "weights": "synthetic-random-features", "image_size": 224,
          "preprocess": PREPROCESS_VERSION, "feature_shape": [1024, 14, 14], "precision": "fp32",
          "feature_dtype": "float16"}
    rng = np.random.default_rng(seed)
    store = IndexWriter(folder, fingerprint=fp, feature_dim=d, feature_dtype="float16", commit_views=128)
    try:
        for vp in viewpoints:
            for s in range(0, n_shapes, 128):
                e = min(n_shapes, s + 128)
                feats = np.maximum(rng.standard_normal((e - s, d), dtype=np.float32), 0)
                recs = [(domain, f"synth_{i:06d}", vp.name, f"/synthetic/{i:06d}/{vp.name}.png",
                         f"synthetic-{vp.name}-{i}") for i in range(s, e)]
                store.add(recs, feats)
        store.set_dataset_info(list(viewpoints), {f"synth_{i:06d}": "synthetic" for i in range(n_shapes)}, [],
                               "synthetic random features (scripts/bench.py)")
    finally:
        store.close()
    return folder


def free():
    gc.collect()


# ------------------------------------------------------------------ contention

def _system_busy_s() -> float | None:
    """CPU seconds all processes of the machine have used (user+nice+system+irq+softirq), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        v = [int(x) for x in parts[1:8]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMonitor:
    """How many cores other processes kept busy while a section ran (the benchmark's figures assume ~0)."""

    def __init__(self):
        self.t0, self.sys0, self.own0 = time.perf_counter(), _system_busy_s(), _own_cpu_s()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        sys1 = _system_busy_s()
        if self.sys0 is None or sys1 is None or wall <= 0:
            return {"wall_s": wall, "other_cores": None}
        other = max(0.0, (sys1 - self.sys0) - (_own_cpu_s() - self.own0))
        return {"wall_s": wall, "other_cores": other / wall, "own_cores": (_own_cpu_s() - self.own0) / wall}


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages of /proc/loadavg (None where unknown)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


class Watch:
    """The load around one measurement: /proc/loadavg before and after, and the cores other processes used.

    A measurement is *contended* (its ratios are not valid) when other processes kept more than
    BUSY_CORES cores busy meanwhile, or when the 1-minute load average exceeded BUSY_LOAD as the
    benchmark started (`start_load`, read before it ran anything heavy). Other processes' CPU time
    excludes this process and its waited-for children, so the benchmark's own threads never count
    against it; the load average does count them, which is why only the value at the start is judged.
    """

    def __init__(self, start_load: float | None = None):
        self.start_load = start_load
        self.load_before = loadavg()
        self.monitor = CpuMonitor()

    def stop(self) -> dict:
        cpu = self.monitor.stop()
        other = cpu["other_cores"]
        reasons = []
        if other is not None and other > BUSY_CORES:
            reasons.append(f"other processes used {other:.2f} cores")
        if self.start_load is not None and self.start_load > BUSY_LOAD:
            reasons.append(f"load average {self.start_load:.2f} when the benchmark started")
        return {"wall_s": cpu["wall_s"], "other_processes_cores": other, "loadavg_before": self.load_before,
                "loadavg_after": loadavg(), "contended": bool(reasons), "contended_because": "; ".join(reasons)}


def contended(res: dict) -> bool:
    """Whether a section's timings are not valid: the section itself, or any part of it watched on its own
    (a Watch's record, found at any depth)."""
    if res.get("contended") and "loadavg_before" in res:
        return True
    return any(contended(v) for v in res.values() if isinstance(v, dict))


def valid(value, contended: bool):
    """A ratio as a table shows it: the number, or 'contended' (not valid) when measured under load."""
    return "contended" if contended and value is not None else value
