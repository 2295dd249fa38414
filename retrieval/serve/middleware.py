"""The request envelope, as plain ASGI layers: a bounded request body and one access-log line per request.

They sit outside FastAPI's routing so that even a request no route accepts is bounded and logged.
"""
from __future__ import annotations

import json
import logging
import time

access_log = logging.getLogger("cvret.serve.access")


async def _send_error(send, status: int, message: str):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Answers 413 to a request body over `max_bytes` (declared or streamed) without holding more than that.

    The body is read here, up to the limit, and replayed to the application.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body is over the limit of {self.max_bytes:,} bytes (raise it with --max-body-mb)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _send_error(send, 400, "Content-Length is not a number")
            if n > self.max_bytes:
                return await _send_error(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_error(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as the server reports it

        await self.app(scope, replay, send)


class AccessLog:
    """One line per request: method, path (never the query string), status, milliseconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 0

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status or 500,
                            (time.perf_counter() - start) * 1000)
