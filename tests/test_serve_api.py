"""`cvret serve` through FastAPI's test client: rankings equal to the CLI's, every bad input a one-line 4xx,
the token rule, the size limits, request batching and the queue-full answer."""
from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.cli import sketch_files
from retrieval.errors import ConfigError, ImageError
from retrieval.images import ink_fraction, load_image, load_image_bytes
from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine
from retrieval.serve import ServeOptions, check_bind, create_app
from retrieval.serve.app import STATIC

from .conftest import draw_view, run_cli

LIMITS = dict(max_body_bytes=300_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def engine(index32):
    """Sketches as drawn (`normalize=False`): these tests are about serving; framing has its own test below."""
    with ShapeIndex(index32, gpu="never") as si:
        yield QueryEngine(si, precision="fp32", normalize=False)


@pytest.fixture(scope="module")
def client(engine, index32):
    with TestClient(create_app(engine, str(index32), ServeOptions(**LIMITS))) as c:
        yield c


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def assert_one_line_error(resp, status: int, words: str):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "\n" not in resp.text and "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error"} and re.search(words, body["error"], re.I), body


# ------------------------------------------------------------------ same answers as the CLI
def test_search_equals_cli_for_the_same_sketches(dataset, index32, client):
    folder = dataset / "sketch" / "shape03"
    cli = json.loads(run_cli(["query", folder, "--index", index32, "-k", "5", "--precision", "fp32",
                              "--no-normalize", "--json"]).stdout)
    assert isinstance(cli, list) and [r["query"]["sketch"] for r in cli] == [
        str(folder / "az000.png"), str(folder / "az030.png"), str(folder / "az075.png")]
    for i, (path, ref) in enumerate(zip([folder / "az000.png", folder / "az075.png"], [cli[0], cli[2]])):
        if i == 0:  # multipart upload
            resp = client.post("/api/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                               data={"k": "5"})
        else:  # JSON with a PNG data URL, as the page sends it
            resp = client.post("/api/search", json={"image": data_url(path.read_bytes()), "k": 5})
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert [(h["shape"], h["viewpoint"], h["rank"], h["path"]) for h in got["hits"]] == \
               [(h["shape"], h["viewpoint"], h["rank"], h["path"]) for h in ref["hits"]]
        np.testing.assert_allclose([h["distance"] for h in got["hits"]], [h["distance"] for h in ref["hits"]],
                                   rtol=1e-5)
        assert {k: got[k] for k in ("index", "domain", "weights", "excluded_shapes")} == \
               {k: ref[k] for k in ("index", "domain", "weights", "excluded_shapes")}
        assert set(got) == set(ref) | {"thumbnails"}
    assert cli[2]["hits"][0]["shape"] == "shape03"


def test_sketch_arguments_expand_folders(dataset, tmp_path):
    folder = dataset / "sketch" / "shape01"
    one = dataset / "npr" / "shape00" / "az000.png"
    (tmp_path / "notes.txt").write_text("not a sketch")
    assert sketch_files([one, folder]) == [one] + sorted(folder.glob("*.png"))
    with pytest.raises(ImageError, match="folder holds no images"):
        sketch_files([tmp_path])


def test_search_options_pairs_viewpoint_domain(dataset, engine, client):
    path = dataset / "sketch" / "shape02" / "az030.png"
    feat = engine.embed([load_image(path)])[0]
    for fields, kw in [({"k": "7", "pairs": "true"}, dict(k=7, per_shape=False)),
                       ({"k": "4", "viewpoint": "az075", "domain": "rgb"}, dict(k=4, viewpoint="az075", domain="rgb"))]:
        resp = client.post("/api/search", files={"image": ("s.png", path.read_bytes())}, data=fields)
        assert resp.status_code == 200, resp.text
        want = [h.to_dict() for h in engine.query_features(feat, **kw)]
        got = resp.json()["hits"]
        assert [(h["shape"], h["viewpoint"], h["domain"]) for h in got] == \
               [(h["shape"], h["viewpoint"], h["domain"]) for h in want]
    assert len(got) == 4 and {h["viewpoint"] for h in got} == {"az075"}


def test_search_views_equals_engine(dataset, engine, client):
    views = {vp: dataset / "sketch" / "shape04" / f"{vp}.png" for vp in ("az000", "az030")}
    want, left_out = engine.query_views({vp: load_image(p) for vp, p in views.items()}, domain="npr", k=4)
    resp = client.post("/api/search-views", files={vp: (p.name, p.read_bytes()) for vp, p in views.items()},
                       data={"k": "4"})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert [(h["shape"], h["viewpoint"]) for h in got["hits"]] == [(h.shape, h.viewpoint) for h in want]
    np.testing.assert_allclose([h["per_view"]["az030"] for h in got["hits"]], [h.per_view["az030"] for h in want],
                               rtol=1e-5)
    assert got["excluded_shapes"] == left_out and got["hits"][0]["shape"] == "shape04"
    as_json = client.post("/api/search-views", json={"views": {vp: data_url(p.read_bytes()) for vp, p in views.items()},
                                                     "k": 4})
    assert [h["shape"] for h in as_json.json()["hits"]] == [h.shape for h in want]


def test_info_views_and_page(index32, client):
    info = json.loads(run_cli(["info", index32, "--json"]).stdout)
    assert client.get("/api/info").json() == info
    hit = client.post("/api/search", json={"image": data_url(png(_strokes())), "k": 3}).json()
    for h, url in zip(hit["hits"], hit["thumbnails"]):
        resp = client.get(url)
        assert resp.status_code == 200 and resp.content == open(h["path"], "rb").read()
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="canvas"' in page.text
    # fully offline: nothing the page or the API docs load comes from another host
    for f in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z]", f.read_text(), re.I), f
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def _strokes(size=224) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    from PIL import ImageDraw

    d = ImageDraw.Draw(im)
    d.line([(30, 40), (190, 60), (120, 200), (30, 40)], fill="black", width=3)
    return im


# ------------------------------------------------------------------ bad input: one-line 4xx, then still serving
def _bad_requests():
    good = png(draw_view(0, "az000", "sketch"))
    blank = png(Image.new("RGB", (300, 200), "white"))
    clear = png(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    huge = png(Image.new("L", (1200, 1000), 255))
    up = lambda raw, name="s.png", **fields: dict(files={"image": (name, raw, "image/png")}, data=fields)  # noqa: E731
    return [
        ("not an image", up(b"hello, this is text"), 400, "not an image"),
        ("empty file part", up(b""), 400, "empty file"),
        ("empty body", dict(content=b"", headers={"content-type": "image/png"}), 400, "empty request body"),
        ("truncated png", up(good[: len(good) // 2]), 400, "truncated|corrupt"),
        ("huge image", up(huge), 413, "over the limit"),
        ("body too large", up(b"\x89PNG" + b"\0" * 400_000), 413, "over the limit"),
        ("streamed body too large", dict(content=iter([b"x" * 100_000] * 4), headers={"content-type": "image/png"}),
         413, "over the limit"),
        ("unknown domain", up(good, domain="photo"), 422, "unknown domain 'photo'"),
        ("unknown viewpoint", up(good, viewpoint="az999"), 422, "unknown viewpoint 'az999'"),
        ("k zero", up(good, k="0"), 422, "k must be"),
        ("k too big", up(good, k="100000"), 422, "k must be"),
        ("k not a number", up(good, k="ten"), 422, "k must be"),
        ("pairs not a bool", up(good, pairs="maybe"), 422, "pairs must be"),
        ("blank sketch", up(blank), 422, "blank sketch"),
        ("transparent sketch", up(clear), 422, "blank sketch"),
        ("no image part", dict(files={"sketch": ("s.png", good)}), 400, "no image"),
        ("malformed multipart", dict(content=b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
                                     headers={"content-type": "multipart/form-data; boundary=xyz"}), 400, "."),
        ("multipart without boundary", dict(content=b"abc", headers={"content-type": "multipart/form-data"}), 400, "."),
        ("bad json", dict(content=b"{nope", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        ("json not an object", dict(json=[1, 2]), 400, "must be an object"),
        ("not a data url", dict(json={"image": "hello"}), 400, "not a base64 data URL"),
        ("bad base64", dict(json={"image": "data:image/png;base64,@@@"}), 400, "not valid base64"),
        ("unsupported content type", dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "text/plain"),
    ]


BAD = _bad_requests()


@pytest.mark.parametrize("kwargs,status,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_a_one_line_4xx(client, kwargs, status, words):
    assert_one_line_error(client.post("/api/search", **kwargs), status, words)


def test_bad_requests_elsewhere_and_still_serving(dataset, client):
    good = (dataset / "sketch" / "shape00" / "az000.png").read_bytes()
    assert_one_line_error(client.post("/api/search-views", files={"az999": ("a.png", good)}), 422, "az999")
    assert_one_line_error(client.post("/api/search-views", data={"k": "3"}), 400, "no sketch views")
    assert_one_line_error(client.post("/api/search-views", json={"views": {"az000": data_url(png(
        Image.new("RGB", (50, 50), "white")))}}), 422, "blank sketch")
    assert_one_line_error(client.get("/api/views/999999"), 404, "no view 999999")
    assert_one_line_error(client.get("/api/views/-1"), 404, "no view -1")
    assert_one_line_error(client.get("/api/views/abc"), 422, "row")
    assert_one_line_error(client.get("/api/nothing"), 404, "not found")
    assert_one_line_error(client.put("/api/search"), 405, "method not allowed")
    resp = client.post("/api/search", files={"image": ("s.png", good)}, data={"k": "2"})
    assert resp.status_code == 200 and len(resp.json()["hits"]) == 2


def test_ink_fraction():
    assert ink_fraction(Image.new("RGB", (40, 40), "white")) == 0.0
    assert ink_fraction(Image.new("RGBA", (40, 40), (0, 0, 0, 0))) == 0.0  # transparent ink is on white paper
    assert ink_fraction(Image.new("L", (40, 40), 240)) == 0.0  # light grey paper is still paper
    assert ink_fraction(_strokes(100)) == pytest.approx(0.05, abs=0.04)
    im = load_image_bytes(png(_strokes()), "x.png")
    assert 0 < ink_fraction(im) < 0.1


# ------------------------------------------------------------------ token rule
def test_bind_rule():
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "s3cret", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="--token"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ConfigError, match="contradict"):
        check_bind("127.0.0.1", "x", True)


def test_cli_refuses_open_host_without_token(index32):
    # the rule is checked before anything is loaded: a missing index is not even looked at
    res = run_cli(["serve", "--index", index32.parent / "missing", "--host", "0.0.0.0"], ok=False)
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "--token" in res.output and "--no-auth" in res.output


def test_token_required_on_api(engine, index32, dataset):
    with TestClient(create_app(engine, str(index32), ServeOptions(token="s3cret", **LIMITS))) as c:
        resp = c.get("/api/info")
        assert_one_line_error(resp, 401, "token")
        assert resp.headers["www-authenticate"] == "Bearer"
        assert_one_line_error(c.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401, "token")
        assert_one_line_error(c.get("/api/views/0"), 401, "token")
        assert_one_line_error(c.post("/api/search", files={"image": ("a.png", b"x")}), 401, "token")
        assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/views/0", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "http://x.org"}).headers


# ------------------------------------------------------------------ batching, the queue bound, timeouts
class FakeEncoder:
    """Stands in for the encoder: returns precomputed features per image, can hold a pass, records batch sizes."""

    def __init__(self, feats: dict[bytes, np.ndarray], hold: threading.Event | None = None):
        self.feats = feats
        self.hold = hold
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, images):
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(30)
        else:
            time.sleep(0.2)  # a forward pass takes time: requests arriving meanwhile queue up
        self.batches.append(len(images))
        return np.stack([self.feats[im.tobytes()] for im in images])


@pytest.fixture(scope="module")
def sketch_feats(dataset, engine):
    paths = [dataset / "sketch" / f"shape{i:02d}" / "az030.png" for i in range(6)]
    raws = [p.read_bytes() for p in paths]
    ims = [engine.prepare(load_image_bytes(r, "x", keep_alpha=True), "npr", None, "x") for r in raws]  # as served
    return raws, {im.tobytes(): f for im, f in zip(ims, engine.embed(ims))}


def test_concurrent_requests_share_encoder_passes(engine, index32, sketch_feats):
    raws, feats = sketch_feats
    fake = FakeEncoder(feats)
    results = {}
    with TestClient(create_app(engine, str(index32), ServeOptions(max_batch=8, batch_window_ms=20, **LIMITS),
                               encode=fake)) as c:
        def ask(i):
            results[i] = c.post("/api/search", files={"image": ("s.png", raws[i])}, data={"k": "1"})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        health = c.get("/healthz").json()
    assert sorted(results) == list(range(6))
    for i, r in results.items():  # every answer belongs to its own request
        assert r.status_code == 200 and r.json()["hits"][0]["shape"] == f"shape{i:02d}", r.text
    assert sum(fake.batches) == 6 and max(fake.batches) > 1 and len(fake.batches) < 6
    assert health["encoded"] == 6 and health["batches"] == len(fake.batches)


def test_full_queue_answers_503_with_retry_after(engine, index32, sketch_feats):
    raws, feats = sketch_feats
    fake = FakeEncoder(feats, hold=threading.Event())
    results = {}
    opts = ServeOptions(max_queue=1, max_batch=1, batch_window_ms=0, **LIMITS)
    with TestClient(create_app(engine, str(index32), opts, encode=fake)) as c:
        def ask(i):
            results[i] = c.post("/api/search", files={"image": ("s.png", raws[i])}, data={"k": "1"})

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert fake.entered.wait(30)  # request 0 is in the encoder
        second = threading.Thread(target=ask, args=(1,))
        second.start()
        deadline = time.monotonic() + 30
        while c.get("/healthz").json()["queue"] < 1:  # request 1 waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        full = c.post("/api/search", files={"image": ("s.png", raws[2])})
        fake.hold.set()
        first.join(30)
        second.join(30)
        after = c.post("/api/search", files={"image": ("s.png", raws[3])}, data={"k": "1"})
    assert_one_line_error(full, 503, "busy")
    assert full.headers["retry-after"] == "1"
    assert [results[i].status_code for i in (0, 1)] == [200, 200]
    assert after.status_code == 200 and after.json()["hits"][0]["shape"] == "shape03"


def test_slow_request_times_out_with_503(engine, index32, sketch_feats):
    raws, feats = sketch_feats
    fake = FakeEncoder(feats, hold=threading.Event())
    with TestClient(create_app(engine, str(index32), ServeOptions(timeout_s=0.3, **LIMITS), encode=fake)) as c:
        resp = c.post("/api/search", files={"image": ("s.png", raws[0])})
        fake.hold.set()
    assert_one_line_error(resp, 503, "timed out after 0.3 s")
    assert "retry-after" in resp.headers


def test_access_log_line(client, caplog, dataset):
    with caplog.at_level(logging.INFO, logger="cvret.serve.access"):
        client.get("/healthz")
        client.post("/api/search", content=b"", headers={"content-type": "image/png"})
    lines = [r.getMessage() for r in caplog.records if r.name == "cvret.serve.access"]
    assert re.fullmatch(r"GET /healthz 200 \d+\.\d ms", lines[0]), lines
    assert re.fullmatch(r"POST /api/search 400 \d+\.\d ms", lines[1]), lines


def test_uploads_are_framed_like_cli_queries(dataset, index32, tmp_path):
    """Uploads go through the same framing as `cvret query` (QueryEngine.prepare): the same ranking as the CLI
    for a small off-centre drawing, and a light-on-dark one read as the dark-on-light sketch it inverts to."""
    from PIL import ImageOps

    path = dataset / "sketch" / "shape04" / "az075.png"
    small = Image.new("RGB", (300, 224), "white")
    small.paste(Image.open(path).convert("RGB").resize((100, 100)), (5, 5))
    small.save(tmp_path / "small.png")
    cli = json.loads(run_cli(["query", tmp_path / "small.png", "--index", index32, "-k", "3", "--precision", "fp32",
                              "--json"]).stdout)
    with ShapeIndex(index32, gpu="never") as si:
        with TestClient(create_app(QueryEngine(si, precision="fp32"), str(index32), ServeOptions(**LIMITS))) as c:
            def ask(raw, name):
                resp = c.post("/api/search", files={"image": (name, raw, "image/png")}, data={"k": "3"})
                assert resp.status_code == 200, resp.text
                return resp.json()

            ref = ask(path.read_bytes(), "s.png")
            dark = ask(png(ImageOps.invert(Image.open(path).convert("L"))), "dark.png")
            got = ask((tmp_path / "small.png").read_bytes(), "small.png")
    assert [h["shape"] for h in dark["hits"]] == [h["shape"] for h in ref["hits"]]
    assert dark["normalized"] is True and dark["warning"] is None
    assert [(h["shape"], h["viewpoint"]) for h in got["hits"]] == [(h["shape"], h["viewpoint"]) for h in cli["hits"]]
    np.testing.assert_allclose([h["distance"] for h in got["hits"]], [h["distance"] for h in cli["hits"]], rtol=1e-5)
