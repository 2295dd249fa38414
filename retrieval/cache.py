"""Where cvret keeps the model files it derives from weights, and the key each is kept under.

Three artefacts come from the same weights: the folded trunk (`trunk.py`), its compiled package
(`compiled.py`) and its ONNX model (`portable.py`). They share one folder and one key, the
things that decide the folded weights, computed here without importing torch so that a
query on the ONNX model can find its file in a torch-free process.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

TRUNK_FORMAT = "cvret-folded-trunk/v1"


def cache_dir() -> Path | None:
    """Where derived model files are kept: $CVRET_CACHE_DIR (empty: no disk cache), else $XDG_CACHE_HOME/cvret."""
    env = os.environ.get("CVRET_CACHE_DIR")
    if env is not None:
        return Path(env) if env.strip() else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cvret"


def package_version(name: str) -> str:
    """An installed distribution's version without importing it (local build tags such as '+cpu' dropped)."""
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return "unknown"


def trunk_key(model: str, layer: str, weights_identity: str) -> dict:
    """What decides the folded weights. Random initialisation depends on open_clip's code, so its version counts."""
    return {"format": TRUNK_FORMAT, "model": model, "layer": layer, "weights": weights_identity,
            "open_clip": package_version("open_clip_torch") if weights_identity.startswith("untrained") else None,
            "torch": package_version("torch")}


def key_name(key: dict) -> str:
    """A file name for a key: the first 32 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
