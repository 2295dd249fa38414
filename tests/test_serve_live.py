"""`cvret serve` as a user runs it: a real server process, a real Chromium driving the page, a bounded fuzz,
and a clean stop on SIGTERM. The tests share one server and run in file order."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from PIL import Image

from .conftest import AZIMUTHS, shape_polygons

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(index32, tmp_path_factory):
    """`cvret serve` on a free port over the session's small index; yields (base URL, process, log path)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--index", str(index32),
                                 "--port", str(port), "--precision", "fp32", "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"cvret serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"cvret serve did not answer within 300 s:\n{log.read_text()}")
        time.sleep(0.3)
    yield base, proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def chromium_or_skip():
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs it with apt-get (the browser test must run)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium); CI installs and runs it")


def trace(page, polygons, size=224):
    """Draw the polygons (gallery coordinates) on the canvas with the mouse, one closed stroke each."""
    box = page.locator("#canvas").bounding_box()
    s = box["width"] / size
    for poly in polygons:
        pts = poly + [poly[0]]
        page.mouse.move(box["x"] + pts[0][0] * s, box["y"] + pts[0][1] * s)
        page.mouse.down()
        for x, y in pts[1:]:
            page.mouse.move(box["x"] + x * s, box["y"] + y * s, steps=6)
        page.mouse.up()


def settled(page):
    page.wait_for_timeout(50)
    page.wait_for_selector("body[data-busy='0']", timeout=120_000)


def hits(page) -> list[tuple[str, str, str]]:
    return [(h.get_attribute("data-shape"), h.get_attribute("data-viewpoint"), h.get_attribute("data-domain"))
            for h in page.locator(".hit").all()]


@pytest.mark.slow
def test_browser_draw_upload_switch_domain(server, dataset, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = chromium_or_skip()
    base, _, _ = server
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']")
            assert page.is_visible("#banner")  # the index was built with untrained weights

            # draw strokes that trace shape03's gallery view az000: shape03 comes first
            trace(page, shape_polygons(3, AZIMUTHS["az000"]))
            settled(page)
            got = hits(page)
            assert got and got[0][0] == "shape03", (got, page.inner_text("#status"))
            assert len(got) == 6 and all(d == "npr" for _, _, d in got)  # one card per shape, k=12 > 6 shapes

            # keyboard undo takes back one stroke at a time: N strokes, N undos, a blank canvas
            strokes = len(shape_polygons(3, AZIMUTHS["az000"]))
            for _ in range(strokes - 1):
                page.keyboard.press("Control+z")
            settled(page)
            assert hits(page), page.inner_text("#status")
            page.keyboard.press("Control+z")
            settled(page)
            assert hits(page) == [] and "draw a sketch" in page.inner_text("#status")

            # upload a file: the gallery image of shape04 at az030 finds itself
            page.set_input_files("#upload", str(dataset / "npr" / "shape04" / "az030.png"))
            settled(page)
            assert hits(page)[0][:2] == ("shape04", "az030"), page.inner_text("#status")

            # switch the gallery domain
            page.select_option("#domain", "rgb")
            settled(page)
            got = hits(page)
            assert got and all(d == "rgb" for _, _, d in got)
            page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")

            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] == 1280
            page.click("#clear")
            settled(page)
            assert hits(page) == [] and "draw a sketch" in page.inner_text("#status")

            # several views of one object (eq. 1): shape02 drawn at az000 and az030
            page.select_option("#domain", "npr")
            page.select_option("#mode", "views")
            for vp in ("az000", "az030"):
                page.click(f"#view-tabs button:text-is('{vp}')")
                page.set_input_files("#upload", str(dataset / "sketch" / "shape02" / f"{vp}.png"))
                settled(page)
            assert hits(page)[0][0] == "shape02", page.inner_text("#status")
        finally:
            browser.close()
    foreign = [u for u in requested if not u.startswith((base, "data:", "blob:"))]
    assert not foreign, foreign  # fully offline: the page loads nothing from anywhere else


def _mutants(seed_png: bytes, n: int, rng: random.Random):
    for i in range(n):
        b = bytearray(seed_png)
        kind = i % 4
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 12)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 1:  # truncate
            b = b[: rng.randrange(1, len(b))]
        elif kind == 2:  # splice random bytes in
            at = rng.randrange(len(b))
            b[at:at] = rng.randbytes(rng.randint(1, 64))
        else:  # repeat a slice (duplicated chunks, lengths that lie)
            a = rng.randrange(len(b))
            b[a:a] = b[a: a + rng.randint(1, 200)]
        yield bytes(b)


@pytest.mark.slow
def test_fuzz_answers_are_2xx_or_4xx_and_memory_stays_flat(server, dataset):
    base, proc, _ = server
    rss = lambda: psutil.Process(proc.pid).memory_info().rss  # noqa: E731
    seed_png = (dataset / "sketch" / "shape05" / "az075.png").read_bytes()
    rng = random.Random(0)
    statuses = []
    with httpx.Client(base_url=base, timeout=120) as c:
        def ask(item):
            i, raw = item
            return i, c.post("/api/search", files={"image": (f"m{i}.png", raw)}, data={"k": "3"})

        with ThreadPoolExecutor(4) as pool:  # 4 clients at once: valid mutants share encoder passes
            warm = list(pool.map(ask, enumerate([seed_png] * 8)))  # allocator pools reach their working size
            assert all(r.status_code == 200 for _, r in warm)
            before = rss()
            for i, r in pool.map(ask, enumerate(_mutants(seed_png, 240, rng))):
                statuses.append(r.status_code)
                assert r.status_code < 500 and (r.status_code < 300 or "error" in r.json()), (i, r.status_code, r.text)
        ctypes = ["image/png", "application/json", "multipart/form-data; boundary=b", "text/plain", ""]
        for i in range(60):
            body = rng.randbytes(rng.randint(0, 3000))
            r = c.post(rng.choice(["/api/search", "/api/search-views"]), content=body,
                       headers={"content-type": rng.choice(ctypes)})
            statuses.append(r.status_code)
            assert 400 <= r.status_code < 500 and "error" in r.json(), (i, r.status_code, r.text)
        for i in range(20):
            r = c.get(f"/api/views/{rng.choice([rng.randint(-10, 10**6), 'x' * rng.randint(1, 40), '..%2Fetc'])}")
            statuses.append(r.status_code)
            assert r.status_code in (200, 404, 422), (i, r.status_code, r.text)
        assert c.get("/healthz").status_code == 200
        after = rss()
    assert proc.poll() is None
    assert len(statuses) == 320 and any(200 <= s < 300 for s in statuses) and any(s >= 400 for s in statuses)
    assert after <= before * 1.10, f"RSS grew from {before / 1e6:.0f} MB to {after / 1e6:.0f} MB"


def test_sigterm_stops_cleanly(server, dataset):
    base, proc, log = server
    assert httpx.get(base + "/healthz").status_code == 200
    sketch = dataset / "sketch" / "shape01" / "az000.png"  # one search of its own: the slow tests may not have run
    assert httpx.post(base + "/api/search", files={"image": ("s.png", sketch.read_bytes())}, data={"k": "3"},
                      timeout=120).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    text = log.read_text()
    assert "stopped on SIGTERM; the index is closed" in text
    assert "Traceback" not in text
    assert "POST /api/search 200" in text and "GET /healthz 200" in text  # the access log
