"""The FastAPI application: the JSON API over one QueryEngine, and the draw-to-search page.

Built only on the public engine API (`QueryEngine.query_features`, `query_views`, the index's
`summary`, `rows`, `record`), so the storage underneath can change. Every answer to bad input
is a 4xx with a one-line JSON body `{"error": "..."}`; rankings are the objects `cvret query
--json` prints (`search.query_result`), plus `thumbnails`, the `/api/views/{row}` URL of each hit.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BlankSketch, CvretError, ImageError, ImageTooLarge
from ..images import ink_fraction, load_image_bytes
from ..search import QueryEngine, query_result
from .batching import EncodeBatcher, QueueFull, Stopped
from .middleware import AccessLog, BodyLimit

log = logging.getLogger("cvret.serve")
STATIC = Path(__file__).parent / "static"
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?P<params>(;[\w.+=-]+)*),(?P<data>.*)$", re.S)
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


@dataclass
class ServeOptions:
    """Limits and behaviour of one server (every field is a `cvret serve` option)."""

    max_body_bytes: int = 10_000_000
    max_pixels: int = 16_000_000  # uploads: 4000×4000; `cvret index` allows 100 MP
    max_k: int = 1000
    min_ink: float = 1e-4  # fraction of pixels darker than paper below which a sketch is blank
    max_queue: int = 64
    max_batch: int = 8
    batch_window_ms: float = 5.0
    timeout_s: float = 30.0
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)


class ApiError(Exception):
    """An answer to bad input: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    line = (str(message).splitlines() or [""])[0].strip() or "error"
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def _json_safe(x):
    """NaN/inf (e.g. a viewpoint without a declared azimuth) become null: browsers reject NaN in JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


class Service:
    """What the routes share: the engine, the batcher, the pools, and the index tables the API checks against."""

    def __init__(self, engine: QueryEngine, index_label: str, options: ServeOptions,
                 encode: Callable[[list], object] | None = None):
        self.engine = engine
        self.index = engine.index
        self.index_label = index_label
        self.options = options
        self.batcher = EncodeBatcher(encode or (lambda images: engine.encoder.encode_images(images)),
                                     max_batch=options.max_batch, window_ms=options.batch_window_ms,
                                     max_queue=options.max_queue)
        self.decode_pool = ThreadPoolExecutor(2, thread_name_prefix="cvret-decode")
        self.search_pool = ThreadPoolExecutor(1, thread_name_prefix="cvret-search")  # the index is used from one thread
        self.viewpoints: dict[str, list[str]] = {}
        self.row_of: dict[tuple[str, str, str], int] = {}
        self.rows: set[int] = set()
        for domain in self.index.domains:
            for vp in self.index.viewpoints:
                rows = self.index.rows(domain, vp.name)
                if len(rows):
                    self.viewpoints.setdefault(domain, []).append(vp.name)
                for r in rows:
                    rec = self.index.record(int(r))
                    self.row_of[(rec.domain, rec.shape, rec.viewpoint)] = int(r)
                    self.rows.add(int(r))

    # ---------------------------------------------------------------- request parsing
    async def payload(self, request: Request) -> tuple[dict[str, tuple[bytes, str]], dict[str, object]]:
        """(images by field name as (bytes, label), option fields); query parameters are option defaults."""
        fields: dict[str, object] = dict(request.query_params)
        images: dict[str, tuple[bytes, str]] = {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async with request.form(max_files=16, max_fields=32) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        images[key] = (await value.read(), value.filename or key)
                    else:
                        fields[key] = value
            return images, fields
        body = await request.body()
        if not body:
            raise ApiError(400, "empty request body: send a multipart upload, a JSON object with a PNG data URL, "
                                "or a raw image body")
        if ctype == "application/json":
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"request body is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise ApiError(400, "JSON body must be an object")
            label = str(data.get("name") or "data URL")
            for key, value in data.items():
                if key == "image":
                    images["image"] = (self._data_url(value, "image"), label)
                elif key == "views":
                    if not isinstance(value, dict):
                        raise ApiError(400, "'views' must be an object {viewpoint: data URL}")
                    for vp, url in value.items():
                        images[str(vp)] = (self._data_url(url, f"views.{vp}"), f"{label} ({vp})")
                elif key != "name":
                    fields[key] = value
            return images, fields
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            images["image"] = (body, "upload")
            return images, fields
        raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: use multipart/form-data, "
                            "application/json or image/*")

    @staticmethod
    def _data_url(value, where: str) -> bytes:
        if not isinstance(value, str):
            raise ApiError(400, f"{where}: expected a data URL string (data:image/png;base64,...)")
        m = DATA_URL.match(value.strip())
        if not m or ";base64" not in m.group("params"):
            raise ApiError(400, f"{where}: not a base64 data URL (data:image/png;base64,...)")
        try:
            return base64.b64decode(m.group("data"), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, f"{where}: data URL is not valid base64 ({e})") from None

    def options_from(self, fields: dict, per_view: bool = True) -> tuple[int, str, str | None, bool]:
        """k, domain, viewpoint, pairs from request fields, checked against the index before any encoding."""
        raw_k = fields.get("k", 10)
        try:
            if isinstance(raw_k, bool) or (isinstance(raw_k, float) and not raw_k.is_integer()):
                raise ValueError
            k = int(raw_k)
        except (TypeError, ValueError):
            raise ApiError(422, f"k must be a whole number from 1 to {self.options.max_k}, got {raw_k!r}") from None
        if not 1 <= k <= self.options.max_k:
            raise ApiError(422, f"k must be from 1 to {self.options.max_k}, got {k}")
        domain = str(fields.get("domain") or "npr")
        if domain not in self.viewpoints:
            raise ApiError(422, f"unknown domain {domain!r} (this index holds: {', '.join(self.viewpoints)})")
        viewpoint = fields.get("viewpoint")
        viewpoint = None if viewpoint in (None, "", "all") else str(viewpoint)
        if viewpoint is not None and viewpoint not in self.viewpoints[domain]:
            raise ApiError(422, f"unknown viewpoint {viewpoint!r} in domain {domain} "
                                f"(have: {', '.join(self.viewpoints[domain])})")
        raw_pairs = fields.get("pairs", False)
        pairs = raw_pairs if isinstance(raw_pairs, bool) else str(raw_pairs).strip().lower()
        if not isinstance(pairs, bool):
            if pairs not in TRUE | FALSE:
                raise ApiError(422, f"pairs must be true or false, got {raw_pairs!r}")
            pairs = pairs in TRUE
        return k, domain, viewpoint, pairs

    # ---------------------------------------------------------------- work
    def _decode(self, data: bytes, label: str, domain: str = "npr", viewpoint: str | None = None):
        """Decode an upload and frame it as `cvret query` does (`QueryEngine.prepare`); blank ones are refused."""
        im = load_image_bytes(data, label, max_pixels=self.options.max_pixels, keep_alpha=True)
        try:
            im = self.engine.prepare(im, domain, viewpoint, name=label)
        except BlankSketch as e:
            raise ApiError(422, str(e)) from None
        ink = ink_fraction(im)
        if ink < self.options.min_ink:
            raise ApiError(422, f"{label}: blank sketch, no ink ({ink:.3%} of pixels darker than paper)")
        return im

    async def decode(self, data: bytes, label: str, domain: str = "npr", viewpoint: str | None = None):
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, self._decode, data, label, domain,
                                                                viewpoint)

    async def search(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.search_pool, lambda: fn(*args, **kwargs))

    async def within_deadline(self, coro):
        try:
            return await asyncio.wait_for(coro, self.options.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"request timed out after {self.options.timeout_s:g} s (server busy)",
                           {"Retry-After": "5"}) from None

    def result(self, query: dict, domain: str, hits, excluded: int = 0) -> dict:
        out = query_result(self.engine, self.index_label, query, domain, hits, excluded)
        out["thumbnails"] = [f"/api/views/{self.row_of[(h.domain, h.shape, h.viewpoint)]}" for h in hits]
        return out

    async def close(self):
        await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)
        self.search_pool.shutdown(wait=True)


SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "the sketch (PNG, JPEG, ...)"},
            "k": {"type": "integer", "default": 10}, "domain": {"type": "string", "default": "npr"},
            "viewpoint": {"type": "string", "description": "one gallery viewpoint; empty or 'all' for every one"},
            "pairs": {"type": "boolean", "default": False,
                      "description": "(shape, viewpoint) pairs instead of one best viewpoint per shape"}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "description": "data:image/png;base64,..."},
            "name": {"type": "string", "description": "label used in the answer and in errors"},
            "k": {"type": "integer"}, "domain": {"type": "string"}, "viewpoint": {"type": "string"},
            "pairs": {"type": "boolean"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary",
                                 "description": "raw image; options as query parameters"}},
    },
}
VIEWS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "k": {"type": "integer", "default": 10}, "domain": {"type": "string", "default": "npr"}},
            "additionalProperties": {"type": "string", "format": "binary",
                                     "description": "one file part per sketch view, named by its viewpoint"}}},
        "application/json": {"schema": {"type": "object", "required": ["views"], "properties": {
            "views": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "{viewpoint: data URL}"},
            "k": {"type": "integer"}, "domain": {"type": "string"}}}},
    },
}


def create_app(engine: QueryEngine, index_label: str, options: ServeOptions | None = None,
               encode: Callable[[list], object] | None = None):
    """The ASGI application. `encode` replaces the encoder's batch call (tests use it to hold the queue)."""
    options = options or ServeOptions()
    svc = Service(engine, index_label, options, encode)

    @asynccontextmanager
    async def lifespan(app):
        await svc.batcher.start()
        try:
            yield
        finally:
            await svc.close()

    app = FastAPIOffline(title="cvret", version=__version__, lifespan=lifespan,
                         description="Find 3D shapes from freehand sketches. Every /api call carries "
                                     "`Authorization: Bearer <token>` when the server was started with --token.")
    app.state.service = svc

    bearer = HTTPBearer(auto_error=False, description="the --token given to cvret serve")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if options.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(),
                                                             options.token.encode()):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                "(the --token the server was started with)", {"WWW-Authenticate": "Bearer"})

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)] if options.token else [])

    @api.get("/info", summary="What the index holds (the same as `cvret info --json`)")
    async def info():
        return JSONResponse(_json_safe(await svc.search(svc.index.summary)))

    @api.post("/search", summary="Rank shapes (or shape-viewpoint pairs) for one sketch",
              openapi_extra={"requestBody": SEARCH_BODY})
    async def search(request: Request):
        images, fields = await svc.payload(request)
        k, domain, viewpoint, pairs = svc.options_from(fields)
        if "image" not in images:
            raise ApiError(400, "no image: send the sketch as the 'image' part (multipart) or key (JSON data URL)")
        data, label = images["image"]

        async def work():
            im = await svc.decode(data, label, domain, viewpoint)
            feat = await svc.batcher.embed(im)
            return await svc.search(engine.query_features, feat, domain=domain, viewpoint=viewpoint, k=k,
                                    per_shape=not pairs)

        hits = await svc.within_deadline(work())
        return svc.result({"sketch": label}, domain, hits)

    @api.post("/search-views", summary="Rank shapes by several sketch views with known viewpoints (seed eq. 1)",
              openapi_extra={"requestBody": VIEWS_BODY})
    async def search_views(request: Request):
        images, fields = await svc.payload(request)
        k, domain, _, _ = svc.options_from(fields)
        if not images:
            raise ApiError(400, "no sketch views: send one image per viewpoint, named by the viewpoint")
        unknown = [vp for vp in images if vp not in svc.viewpoints[domain]]
        if unknown:
            raise ApiError(422, f"unknown viewpoint(s) {', '.join(map(repr, unknown))} in domain {domain} "
                                f"(have: {', '.join(svc.viewpoints[domain])})")

        async def work():
            pics = [await svc.decode(data, label, domain, vp) for vp, (data, label) in images.items()]
            feats = await asyncio.gather(*(svc.batcher.embed(im) for im in pics))
            return await svc.search(engine.query_views, dict(zip(images, feats)), domain=domain, k=k)

        hits, excluded = await svc.within_deadline(work())
        return svc.result({"views": {vp: label for vp, (_, label) in images.items()}}, domain, hits, excluded)

    @api.get("/views/{row}", summary="The gallery image of one stored view (only the index's own rows)",
             response_class=FileResponse)
    async def view_image(row: int):
        if row not in svc.rows:
            raise ApiError(404, f"no view {row} in this index")
        path = Path(svc.index.record(row).path)
        if not path.is_file():
            raise ApiError(404, f"view {row}: its image {path.name} is no longer on disk")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    app.include_router(api)

    @app.get("/healthz", summary="Liveness: 200 while the server runs (no token needed)")
    async def healthz():
        return {"status": "ok", "queue": svc.batcher.qsize(), "batches": svc.batcher.batches,
                "encoded": svc.batcher.encoded}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, str(exc), exc.headers)

    @app.exception_handler(ImageTooLarge)
    async def _too_large(request, exc):
        return _error(413, str(exc))

    @app.exception_handler(ImageError)
    async def _bad_image(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(CvretError)
    async def _cvret_error(request, exc):
        return _error(422, str(exc))

    @app.exception_handler(QueueFull)
    async def _queue_full(request, exc):
        return _error(503, f"server busy: {exc}; try again shortly", {"Retry-After": "1"})

    @app.exception_handler(Stopped)
    async def _stopped(request, exc):
        return _error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        detail = exc.detail if exc.status_code != 404 else f"not found: {request.url.path}"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("path", "query", "body"))
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (the server log has the details)")

    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    app.add_middleware(AccessLog)  # outermost: logs every answer, the 413s included
    return app
