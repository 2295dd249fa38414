"""Where an encoder's weights come from, and their identity (as open_clip keeps `pretrained.py` apart).

`openai`: open_clip's download and cache (probed first, so an offline machine fails at once
with the alternatives named); a local checkpoint: an OpenAI JIT archive, an open_clip state
dict or a visual-only state dict; `untrained`: no file, a seed. The identity string goes into
the index's fingerprint.
"""
from __future__ import annotations

import logging
import os
import socket
import zipfile
from pathlib import Path

from .errors import EncoderError
from .images import content_sha256

log = logging.getLogger(__name__)

MODEL_NAME = "RN101"


def checkpoint_path(weights: str, model: str = MODEL_NAME) -> Path | None:
    """The file to load for `weights` ('openai' → the cached or downloaded one), or None for 'untrained'."""
    if weights == "untrained":
        return None
    if weights == "openai":
        return openai_checkpoint(model)
    path = Path(weights)
    if not path.is_file():
        raise EncoderError(f"{path}: weights file not found (use 'openai', 'untrained', or a checkpoint path)")
    return path


def weights_identity(weights: str, seed: int = 0) -> str:
    """What the fingerprint records: 'openai', 'untrained:seed=N', or 'sha256:<file hash>' of a checkpoint."""
    if weights == "untrained":
        return f"untrained:seed={seed}"
    if weights == "openai":
        return "openai"
    path = Path(weights)
    if not path.is_file():
        raise EncoderError(f"{path}: weights file not found (use 'openai', 'untrained', or a checkpoint path)")
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:  # a checkpoint is hundreds of MB: hash it once per process, not per check
        _HASHED[key] = "sha256:" + content_sha256(path)
    return _HASHED[key]


_HASHED: dict[tuple, str] = {}


def openai_checkpoint(model: str = MODEL_NAME) -> Path:
    """Path of the cached openai RN101 checkpoint, downloading it when the network allows."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, "openai")
    hf = cfg.get("hf_hub", "").rstrip("/")
    try:
        from huggingface_hub import try_to_load_from_cache
        for fname in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            hit = try_to_load_from_cache(hf, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    except Exception as e:  # cache probing is best effort
        log.debug("huggingface cache probe failed: %s", e)
    url_cache = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg.get("url", "RN101.pt"))
    if url_cache.is_file():
        return url_cache
    if not network_reachable("huggingface.co"):
        raise EncoderError(
            "cannot fetch the openai RN101 weights (offline, not in the cache): pass --weights PATH to a local "
            "checkpoint (OpenAI RN101.pt or an open_clip state dict), or --weights untrained --seed N "
            "for random weights (tests, offline demo; numbers are not the paper's)")
    try:
        return Path(download_pretrained(cfg))
    except Exception as e:
        raise EncoderError(
            f"cannot fetch the openai RN101 weights ({str(e).splitlines()[0][:160]}): pass --weights PATH "
            "to a local checkpoint, or --weights untrained --seed N") from None


def network_reachable(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def checkpoint_format(path: Path) -> str:
    """'torchscript', 'safetensors' or 'torch' (a torch.save file), read from the file's first bytes.

    Knowing the format up front means each file goes to the one loader that reads it, so no loader
    is tried and failed (whose warnings would then have to be silenced process-wide).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                # torch.save and torch.jit.save both write zips; only TorchScript archives hold constants.pkl
                if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist()):
                    return "torchscript"
            return "torch"
    except (OSError, zipfile.BadZipFile) as e:
        raise EncoderError(f"{path}: cannot read the checkpoint ({e})") from None
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    return "torch"


def read_state_dict(path: Path) -> dict:
    """Visual-tower tensors from an OpenAI JIT archive, an open_clip state dict, or a visual-only dict.

    Plain checkpoints are read with `torch.load(weights_only=True)` (tensors and containers only, no
    code run); only a TorchScript archive (OpenAI's RN101.pt) goes through `torch.jit.load`, whose own
    deprecation warning torch then shows: cvret changes no warning filter.
    """
    import torch  # here, not at the top: the identity functions above must not cost torch's import

    path = Path(path)
    kind = checkpoint_format(path)
    try:
        if kind == "torchscript":
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        elif kind == "safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EncoderError(f"{path}: not a readable {kind} checkpoint ({msg})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EncoderError(f"{path}: checkpoint holds no state dict")
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("visual."):
            out[k[len("visual."):]] = v
        elif k.startswith("visual_encoder."):
            out[k[len("visual_encoder."):]] = v
        elif not any(k.startswith(p) for p in ("transformer.", "token_embedding", "ln_final", "text_projection",
                                               "positional_embedding", "logit_scale", "attn_mask")):
            out[k] = v
    return out
