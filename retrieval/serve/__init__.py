"""`cvret serve`: the HTTP query service (FastAPI + uvicorn) and its draw-to-search page.

The encoder and the index are loaded once; concurrent sketches share encoder passes
(`batching`); bodies, pixels, queue length and time are bounded (`app.ServeOptions`).
"""
from .app import ServeOptions, create_app
from .server import check_bind, serve

__all__ = ["ServeOptions", "create_app", "check_bind", "serve"]
