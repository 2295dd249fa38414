"""Measure `cvret serve` against its own baselines, all in one run (the machine's load is recorded alongside).

- warm latency: p50/p95 over N sequential requests of one sketch, against a cold `cvret query` of the same
  sketch (a new process that builds the model: what a user paid per query before the service);
- throughput: requests per second with 8 concurrent clients against 1 client (request batching);
- memory: the server's RSS after 10 requests and after 1,000.

    python scripts/bench_serve.py --index /tmp/serve_demo/index --sketch SKETCH.png [--screenshot docs/serve/page.png]

Options given after `--` go to `cvret serve` (e.g. `-- --precision fp32`).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cvret(*args) -> list[str]:
    return [sys.executable, "-m", "retrieval.cli", *map(str, args)]


def start_server(index: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cvret("serve", "--index", index, "--port", port, *extra), stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"cvret serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("cvret serve did not start within 600 s")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def screenshot(base: str, sketch: Path, path: Path, executable: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#upload", str(sketch))
        page.wait_for_timeout(50)
        page.wait_for_selector("body[data-busy='0']", timeout=120_000)
        page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--sketch", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200, help="sequential requests for p50/p95")
    ap.add_argument("--total", type=int, default=1000, help="requests served before the second RSS reading")
    ap.add_argument("--throughput-requests", type=int, default=48, help="requests per throughput measurement")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cold-runs", type=int, default=1, help="cold `cvret query` runs (median)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--screenshot", type=Path, default=None, help="save the page with the sketch's results here")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("serve_args", nargs="*", help="after --: options for cvret serve")
    a = ap.parse_args()
    res = {"index": str(a.index), "sketch": str(a.sketch), "serve_args": a.serve_args, "load_start": loadavg(),
           "cpus": os.cpu_count()}

    cold = []
    for _ in range(a.cold_runs):
        t = time.perf_counter()
        subprocess.run(cvret("query", a.sketch, "--index", a.index, "-k", "10", "--json"), check=True,
                       stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - t)
    res["cold_query_s"] = statistics.median(cold)
    print(f"cold cvret query: {res['cold_query_s']:.2f} s  (load {loadavg()})", flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve_{port}.log"
    t = time.perf_counter()
    proc = start_server(a.index, port, a.serve_args, log)
    res["startup_s"] = time.perf_counter() - t
    rss = lambda: psutil.Process(proc.pid).memory_info().rss  # noqa: E731
    raw = a.sketch.read_bytes()
    served = 0
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            def ask(_=None):
                t0 = time.perf_counter()
                r = c.post("/api/search", files={"image": (a.sketch.name, raw)}, data={"k": "10"})
                r.raise_for_status()
                return time.perf_counter() - t0

            for _ in range(10):
                ask()
            served += 10
            res["rss_after_10_mb"] = rss() / 1e6
            lat = [ask() for _ in range(a.requests)]
            served += a.requests
            res["warm_p50_ms"] = percentile(lat, 50) * 1000
            res["warm_p95_ms"] = percentile(lat, 95) * 1000
            res["cold_over_warm_p50"] = res["cold_query_s"] / (res["warm_p50_ms"] / 1000)
            print(f"warm: p50 {res['warm_p50_ms']:.0f} ms, p95 {res['warm_p95_ms']:.0f} ms over {a.requests} "
                  f"(cold/warm p50 = {res['cold_over_warm_p50']:.0f}x; load {loadavg()})", flush=True)

            n = a.throughput_requests
            t0 = time.perf_counter()
            for _ in range(n):
                ask()
            rps1 = n / (time.perf_counter() - t0)
            with ThreadPoolExecutor(a.clients) as pool:
                t0 = time.perf_counter()
                list(pool.map(ask, range(n)))
                rps8 = n / (time.perf_counter() - t0)
            served += 2 * n
            res.update(rps_1_client=rps1, rps_n_clients=rps8, clients=a.clients, throughput_ratio=rps8 / rps1)
            print(f"throughput: 1 client {rps1:.2f} req/s, {a.clients} clients {rps8:.2f} req/s "
                  f"({rps8 / rps1:.2f}x; load {loadavg()})", flush=True)

            with ThreadPoolExecutor(a.clients) as pool:
                list(pool.map(ask, range(max(0, a.total - served))))
            served = max(served, a.total)
            res["rss_after_total_mb"] = rss() / 1e6
            res["requests_total"] = served
            health = c.get("/healthz").json()
            res["encoder_passes"], res["images_encoded"] = health["batches"], health["encoded"]
            print(f"RSS: {res['rss_after_10_mb']:.0f} MB after 10 requests, {res['rss_after_total_mb']:.0f} MB after "
                  f"{served} ({res['rss_after_total_mb'] / res['rss_after_10_mb']:.3f}x); "
                  f"{health['encoded']} images in {health['batches']} encoder passes", flush=True)
        if a.screenshot:
            screenshot(base, a.sketch, a.screenshot, a.chromium)
            print(f"screenshot: {a.screenshot}")
    finally:
        proc.terminate()
        proc.wait(120)
    res["load_end"] = loadavg()
    print(f"load: {res['load_start']} -> {res['load_end']} ({res['cpus']} CPUs, shared machine)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
