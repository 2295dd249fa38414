"""The folded trunk as an ONNX model, run by onnxruntime: a one-sketch query that never imports torch.

A cold `cvret query` used to spend most of its time importing torch (1.5-2 s of about 3 s on a
2-core machine) to run one forward pass of 0.03-0.08 s. onnxruntime imports in about 0.1 s and
runs the same trunk in fp32 (features equal torch's fp32 ones to about 1e-6 relative), so a
short query uses it when the ONNX model of its weights is already in the cvret cache
(`cache.py`). The model is exported from the folded trunk by torch's own ONNX exporter: by
`cvret index` when it has just built the trunk, or after a query that had to fall back to
torch. Like the folded trunk it is checksummed (xxh3, in a sidecar JSON written after the
model) and a damaged or foreign file is logged and ignored, never trusted.

Long jobs stay on torch: its bf16 kernels are faster per view than onnxruntime's fp32 ones,
so beyond a few dozen sketches torch's import is paid back (`ONNX_MAX_IMAGES`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np

from .cache import cache_dir, key_name, trunk_key
from .errors import EncoderError
from .fingerprint import Fingerprint
from .spec import EncoderSpec, check_spec, feature_shape, weights_file_record

log = logging.getLogger(__name__)

FORMAT = "cvret-onnx-trunk/v1"
INPUT, OUTPUT = "image", "features"
OPSET = 18
ONNX_MAX_IMAGES = 32  # a query with more sketches than this runs on torch (bf16 pays back its import)
BACKENDS = ("auto", "torch", "onnx")


def check_backend(backend: str):
    """Refuse a backend name cvret does not have (one message for the engine and `encoder_for_index`)."""
    if backend not in BACKENDS:
        raise EncoderError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def enabled() -> bool:
    """`CVRET_ONNX=0` (or off/false/no) turns the ONNX encoder off: no model is written, queries run on torch."""
    return os.environ.get("CVRET_ONNX", "1").strip().lower() not in ("0", "off", "false", "no")


def runtime_available() -> bool:
    return enabled() and importlib.util.find_spec("onnxruntime") is not None


def exporter_available() -> bool:
    """torch's ONNX exporter (torch.export based) needs the onnx and onnxscript packages."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def model_key(spec: EncoderSpec) -> dict:
    """The folded trunk's key plus what the exported graph fixes: the input size and this file format."""
    return {**trunk_key(spec.model, spec.layer, spec.identity), "onnx": FORMAT, "image_size": spec.image_size}


def model_paths(spec: EncoderSpec) -> tuple[Path, Path] | None:
    """(model file, sidecar JSON) in the cvret cache, or None when the disk cache is off."""
    folder = cache_dir()
    if folder is None:
        return None
    name = key_name(model_key(spec))
    return folder / "onnx" / f"{name}.onnx", folder / "onnx" / f"{name}.json"


def _xxh3(data) -> str:
    import xxhash

    return xxhash.xxh3_64(data).hexdigest()


def read_model(spec: EncoderSpec) -> bytes | None:
    """The cached ONNX model's bytes for `spec`, or None (absent, or unreadable, foreign or damaged: logged)."""
    paths = model_paths(spec)
    if paths is None or not paths[1].is_file():
        return None
    model, side = paths
    try:
        meta = json.loads(side.read_text())
        if meta.get("key") != model_key(spec):
            raise ValueError("written for another trunk")
        data = model.read_bytes()
        if len(data) != meta.get("bytes") or _xxh3(data) != meta.get("xxh3"):
            raise ValueError("checksum mismatch")
        return data
    except (OSError, ValueError) as e:  # a cache is never trusted over a rebuild
        log.warning("%s: ignoring the cached ONNX model (%s)", model, str(e).splitlines()[0][:120])
        return None


def write_model(spec: EncoderSpec, trunk) -> Path | None:
    """Export the fp32 FoldedTrunk `trunk` (its input `spec.image_size` square, any batch) into the cache.

    The model is written first and its sidecar (key, size, checksum) after it, both atomically, so an
    interrupted write leaves a model without a sidecar: absent to `read_model`, written again next time.
    Returns the model's path, or None when there is no cache or the export fails (logged: queries then
    stay on torch).
    """
    import torch

    from .fsio import atomic_path, atomic_write_bytes

    paths = model_paths(spec)
    if paths is None:
        return None
    model, side = paths
    size = spec.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.float32)
    try:
        model.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(model) as tmp:
            program = torch.onnx.export(trunk.float().eval(), (example,), dynamo=True, opset_version=OPSET,
                                        input_names=[INPUT], output_names=[OUTPUT], external_data=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
            program.save(str(tmp))
        data = model.read_bytes()
        meta = {"key": model_key(spec), "bytes": len(data), "xxh3": _xxh3(data)}
        atomic_write_bytes(side, json.dumps(meta, sort_keys=True).encode())
        return model
    except OSError as e:
        log.info("cannot write the ONNX model %s (%s); queries stay on torch", model, e.strerror or e)
    except Exception as e:  # an exporter that cannot handle this torch: torch keeps working
        log.warning("could not export the ONNX query model (%s: %s); queries stay on torch", type(e).__name__,
                    str(e).splitlines()[0][:160] if str(e) else "")
    return None


def model_listed(spec: EncoderSpec) -> bool:
    """Whether the cache holds a model for `spec` by its sidecar (key and size), without reading or hashing the
    model: the indexer's cheap check; `read_model` verifies every byte before a query trusts it."""
    paths = model_paths(spec)
    try:
        meta = json.loads(paths[1].read_text()) if paths is not None else None
        return bool(meta) and meta.get("key") == model_key(spec) and paths[0].stat().st_size == meta.get("bytes")
    except (OSError, ValueError):
        return False


def ensure_model(encoder, verify: bool = True) -> Path | None:
    """Write the ONNX model of a torch `LayerEncoder`'s weights when it can be used and is not cached yet.

    `verify`: a model already there counts only if every byte checks out (`read_model`: what a query that found
    it damaged needs, to write it again); False trusts its sidecar (`model_listed`: `cvret index`, which would
    otherwise read and hash 100 MB in every run). Returns the path written, or None (already there, no cache,
    or onnxruntime/the exporter missing).
    """
    spec = encoder.spec
    paths = model_paths(spec)
    if paths is None or not (runtime_available() and exporter_available()):
        return None
    if (read_model(spec) is not None) if verify else model_listed(spec):
        return None
    t = time.perf_counter()
    path = write_model(spec, encoder.fp32_trunk())
    if path is not None:
        log.info("wrote the ONNX query model %s (%.1f s)", path, time.perf_counter() - t)
    return path


def _threads() -> int:
    """onnxruntime's intra-op threads: OMP_NUM_THREADS when set (as torch reads it), else all usable cores."""
    from .pool import available_cores

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else available_cores()


class OnnxEncoder:
    """`LayerEncoder`'s query interface (encode_images / encode_arrays / fingerprint) on onnxruntime, fp32, CPU."""

    device = "cpu"
    precision = "fp32"

    def __init__(self, spec: EncoderSpec, model: bytes):
        import onnxruntime as ort

        check_spec(spec)
        self.spec = spec
        self.feature_shape = feature_shape(spec.layer, spec.image_size, spec.model)
        self.feature_dim = int(np.prod(self.feature_shape))
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # a model this onnxruntime cannot run
            raise EncoderError(f"onnxruntime cannot load the ONNX query model ({str(e).splitlines()[0][:160]})") \
                from None
        self.runtime = f"onnxruntime {ort.__version__}"

    @property
    def fingerprint(self) -> Fingerprint:
        return replace(self.spec.expected_fingerprint(), feature_shape=tuple(self.feature_shape),
                       precision=self.precision, extra={**weights_file_record(self.spec.weights), "runtime": self.runtime})

    def encode_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(B,3,H,W) preprocessed float32 → (B, D) float32 features, flattened C,H,W (as LayerEncoder's)."""
        out = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.reshape(out.shape[0], -1)

    def encode_images(self, images: Iterable) -> np.ndarray:
        """PIL images or paths → (B, D) float32 features (raises ImageError on the first bad image)."""
        from .images import preprocess_batch

        return self.encode_arrays(preprocess_batch(images, self.spec.image_size))


def open_onnx_encoder(spec: EncoderSpec) -> OnnxEncoder | None:
    """The ONNX encoder for `spec` when onnxruntime is installed and the model is cached, else None."""
    if not runtime_available():
        return None
    model = read_model(spec)
    if model is None:
        return None
    try:
        return OnnxEncoder(spec, model)
    except EncoderError as e:
        log.warning("%s; using torch", e)
        return None


def onnx_unsuitable(device: str, precision: str) -> str | None:
    """Why the ONNX encoder cannot serve these options (it runs fp32 on the CPU), or None when it can."""
    if device not in ("auto", "cpu"):
        return f"--device {device} asked (the ONNX encoder runs on the CPU)"
    if precision not in ("auto", "fp32"):
        return f"--precision {precision} asked (the ONNX encoder runs fp32)"
    return None
