"""Running the service: the bind/token rule, the model loaded and warmed once, uvicorn, a clean stop.

SIGINT and SIGTERM stop accepting connections, let running requests finish, stop the batcher
and close the index; the process then exits normally (uvicorn re-raises the signal it caught,
which we absorb so that a requested stop is not reported as a crash).
"""
from __future__ import annotations

import logging
import signal
import webbrowser
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..errors import ConfigError
from ..search import open_engine
from .app import ServeOptions, create_app

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
log = logging.getLogger("cvret.serve")


def check_bind(host: str, token: str | None, no_auth: bool):
    """Listening beyond this machine needs a token unless the user explicitly says --no-auth."""
    if token is not None and no_auth:
        raise ConfigError("--token and --no-auth contradict each other: give one of them")
    if token is not None and not token.strip():
        raise ConfigError("--token is empty")
    if host not in LOOPBACK and token is None and not no_auth:
        raise ConfigError(f"--host {host} lets other machines reach the server: give --token SECRET (every API call "
                          "then needs 'Authorization: Bearer SECRET'), or --no-auth to serve without one")


def warm_up(engine, passes: int = 2):
    """Run the encoder and every gallery's search once, so the first user request is not the slow one."""
    probe = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(probe).line([(40, 40), (180, 180)], fill="black", width=3)
    for _ in range(passes):
        feat = engine.encoder.encode_images([probe])[0]
    for domain in engine.index.domains:
        engine.query_features(feat, domain=domain, k=1)


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host in ("::", "::1") else host)
    return f"http://{shown}:{port}/"


def serve(index_dir: Path | str, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None,
          no_auth: bool = False, open_browser: bool = False, weights: str | None = None, device: str = "auto",
          precision: str = "auto", say: Callable[[str], None] = print, ray: str | None = None) -> str | None:
    """Serve one index until SIGINT/SIGTERM; returns the name of the signal that stopped it."""
    import uvicorn

    options = options or ServeOptions()
    check_bind(host, options.token, no_auth)
    engine = open_engine(index_dir, ray=ray, weights=weights, device=device, precision=precision)
    try:
        say(f"loading the encoder and warming up {Path(index_dir)} ...")
        warm_up(engine)
        app = create_app(engine, str(index_dir), options)
        config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="on",
                                limit_concurrency=options.max_queue * 2 + 16, timeout_graceful_shutdown=10,
                                server_header=False)
        url = url_for(host, port)

        class Server(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                if self.started:
                    s = engine.index.summary()
                    weights_id = str(s["fingerprint"].get("weights"))
                    say(f"cvret serve: {url} (index {index_dir}: {s['shapes']} shapes, {s['views']} views, "
                        f"weights {weights_id}); API docs at {url}docs; Ctrl-C stops")
                    if weights_id.startswith("untrained"):
                        say("note: untrained weights: rankings are random-feature similarities, not CLIP's")
                    if open_browser:  # the page reads a token from the fragment, which is never sent to a server
                        webbrowser.open(url + (f"#token={options.token}" if options.token else ""))

        caught: list[int] = []
        previous = {sig: signal.signal(sig, lambda s, f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            Server(config).run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        engine.index.close()
    name = signal.Signals(caught[0]).name if caught else None
    say(f"cvret serve: stopped{' on ' + name if name else ''}; the index is closed")
    return name
