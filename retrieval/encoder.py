"""CLIP ResNet101 feature extraction at an intermediate layer, with weights resolved in one place.

The seed uses "the third layer of the pretrained ResNet101 CLIP image encoder, following
CLIPasso". open_clip names the residual stages `layer1`..`layer4` after a 3-conv stem, so
its `layer3` gives 1024×14×14 at 224 px (our default); CLIPasso counts the stem as a layer,
so its "layer 3" is open_clip's `layer2` (512×28×28). Both are available through `layer=`.

Weights come from `weights.py` (as open_clip keeps `pretrained.py` apart from its factory):
`openai` (open_clip's download and cache), a local checkpoint file, or `untrained` with a
seed — the last one an explicit choice for tests and the offline demo, recorded in the
`Fingerprint` so that an index built with random weights can never be queried with real ones.
What an encoder *is* (`EncoderSpec`, the layers) lives in `spec.py`, which needs no torch; it is
re-exported here.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .errors import EncoderError
from .fingerprint import Fingerprint
from .images import load_image, preprocess_array, preprocess_batch
from .spec import (LAYERS, PREPROCESS_VERSION, EncoderSpec, check_spec, remembered_weights_file,  # noqa: F401
                   weights_file_record)
from .trunk import FoldedStates, FoldedTrunk, materialize, trunk_key
from .weights import checkpoint_path, read_state_dict

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def build_visual(spec: EncoderSpec, full: bool = False) -> torch.nn.Module:
    """The RN101 visual tower with the requested weights, cut after `spec.layer`.

    `full=True` keeps every module (and requires every tensor in a checkpoint): fine-tuning
    writes complete visual state dicts, so it must start from one.
    """
    check_spec(spec)
    checkpoint = checkpoint_path(spec.weights, spec.model)
    visual = _new_visual_tower(spec)
    if checkpoint is not None:
        sd = read_state_dict(checkpoint)
        needed = [k for k in visual.state_dict() if full or k.split(".")[0] in _modules_up_to(spec.layer)]
        missing = [k for k in needed if k not in sd]
        if missing:
            raise EncoderError(f"{checkpoint}: not an RN101 visual checkpoint (missing {len(missing)} tensors, "
                               f"e.g. {missing[0]})")
        try:
            visual.load_state_dict({k: v for k, v in sd.items() if k in visual.state_dict()}, strict=False)
        except RuntimeError as e:
            raise EncoderError(f"{checkpoint}: tensors do not fit RN101 ({str(e).splitlines()[0][:160]})") from None
    if full:
        return visual.eval()
    # Drop what the feature never uses: no compute, no memory for layer4 / attention pool.
    keep = _modules_up_to(spec.layer)
    for name in list(dict(visual.named_children())):
        if name not in keep:
            setattr(visual, name, torch.nn.Identity())
    return visual.eval()


def _new_visual_tower(spec: EncoderSpec) -> torch.nn.Module:
    """open_clip's RN101 visual tower, randomly initialised from `spec.seed` (weights loaded later).

    Built without the text tower; its initial weights equal `open_clip.create_model('RN101').visual`
    under the same seed.
    """
    import open_clip

    # A forked generator: seeding here must not reset the random stream of the rest of the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            from open_clip.model import _build_vision_tower

            cfg = open_clip.get_model_config(spec.model)
            return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True)
        except (ImportError, TypeError, KeyError) as e:  # a future open_clip without the helper
            log.info("open_clip has no _build_vision_tower (%s); building the whole CLIP model", e)
            return open_clip.create_model(spec.model, pretrained=None).visual


def _modules_up_to(layer: str) -> set[str]:
    stem = {"conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool"}
    return stem | set(LAYERS[: LAYERS.index(layer) + 1])


# ---------------------------------------------------------------- the encoder

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EncoderError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` picks the fastest precision that meets the ranking-agreement target (see README, Performance)."""
    if precision not in PRECISIONS:
        raise EncoderError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


class Trunk(torch.nn.Module):
    """The stem and the residual stages up to the feature layer: layer4 and the attention pool never run."""

    def __init__(self, visual: torch.nn.Module, layer: str):
        super().__init__()
        self.stem = torch.nn.Sequential(visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
                                        visual.conv3, visual.bn3, visual.act3, visual.avgpool)
        self.stages = torch.nn.Sequential(*[getattr(visual, n) for n in LAYERS[: LAYERS.index(layer) + 1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def build_folded_state(spec: EncoderSpec) -> dict:
    """The folded float32 weights of `spec`'s trunk: the slow path that the caches skip.

    A checkpoint is folded from its tensors alone; only `untrained` builds open_clip's tower,
    because its random initialisation is what defines those weights.
    """
    checkpoint = checkpoint_path(spec.weights, spec.model)
    if checkpoint is None:
        return FoldedTrunk.from_visual(build_visual(spec), spec.layer, spec.model).state_dict()
    sd = read_state_dict(checkpoint)
    return FoldedTrunk.from_state_dict(sd, spec.layer, spec.model, source=str(checkpoint)).state_dict()


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

FOLDED = FoldedStates()


class LayerEncoder:
    """Batched layer-N feature extraction; every domain gets the same preprocessing.

    Reduced precision converts the whole trunk (weights and activations) rather than using
    autocast: on CPU with AVX-512 BF16 this is what makes oneDNN's bf16 kernels pay off.
    """

    def __init__(self, spec: EncoderSpec, device: str = "auto", precision: str = "auto"):
        check_spec(spec)  # before hashing a weights file or reading anything
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._weights_id = spec.identity
        self.dtype = _DTYPES[self.precision]
        self._trunk_key = trunk_key(spec.model, spec.layer, self._weights_id)
        state = FOLDED.get(self._trunk_key, lambda: build_folded_state(spec))
        self.trunk = materialize(state, spec.layer, spec.model, self.device, self.dtype)
        self._state = state
        self.compiled = None  # the AOTInductor package, once `compile_for` switched to it
        self.feature_shape = FoldedTrunk.feature_shape(spec.layer, spec.image_size, spec.model)
        self.feature_dim = int(np.prod(self.feature_shape))

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(model=self.spec.model, layer=self.spec.layer, weights=self._weights_id,
                           image_size=self.spec.image_size, preprocess=PREPROCESS_VERSION,
                           feature_shape=tuple(self.feature_shape), precision=self.precision,
                           torch=torch.__version__.split("+")[0], extra=weights_file_record(self.spec.weights))

    def fp32_trunk(self) -> FoldedTrunk:
        """A float32 CPU copy of the trunk (what the ONNX export and reference checks start from)."""
        return materialize(self._state, self.spec.layer, self.spec.model, "cpu", torch.float32, channels_last=False)

    def compile_for(self, n_views: int, mode: str = "auto") -> bool:
        """Switch to the compiled trunk when `mode` and the job's size call for it (see `compiled.py`).

        Returns whether the compiled trunk is now in use; any failure leaves the eager one.
        """
        from .compiled import load_or_compile, package_path, wants_compiled

        path = package_path(self._trunk_key, self.precision, self.device)
        if self.compiled is not None or not wants_compiled(mode, n_views, self.device, path):
            return self.compiled is not None
        size = self.spec.image_size
        example = torch.zeros(2, 3, size, size, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        self.compiled = load_or_compile(self.trunk, example, path)
        return self.compiled is not None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, dtype=self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.compiled is not None:
            out = self.compiled(x)
            return out[0] if isinstance(out, (list, tuple)) else out
        return self.trunk(x)

    def encode_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(B,3,H,W) preprocessed float32 → (B, D) float32 features, flattened C,H,W."""
        with torch.inference_mode():
            out = self._forward(torch.from_numpy(np.ascontiguousarray(batch)))
            out = out.float().contiguous().reshape(out.shape[0], -1)
            return out.cpu().numpy()

    def encode_images(self, images: Iterable) -> np.ndarray:
        """PIL images or paths → (B, D) float32 features (raises ImageError on the first bad image)."""
        return self.encode_arrays(preprocess_batch(images, self.spec.image_size))

    def encode_paths(self, paths: list[str], batch_size: int = 16, max_pixels: int | None = None,
                     on_error: Callable[[int, Exception], None] | None = None,
                     workers: int = 2, load: Callable | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield (positions, features) per batch; decoding runs in threads, overlapping the forward pass.

        Images that fail to load are passed to `on_error(position, error)` and left out; with no
        `on_error` the first failure is raised. `load(path)` replaces the plain decoding (framing).
        """
        size = self.spec.image_size
        load = load or (lambda p: load_image(p, max_pixels=max_pixels))

        def prepare(p):
            try:
                return preprocess_array(load(p), size), None
            except Exception as e:  # reported per image, never fatal for the batch
                return None, e

        pending: list[int] = []
        arrays: list[np.ndarray] = []
        for pos, (arr, err) in enumerate(prefetch(prepare, paths, workers, window=2 * batch_size)):
            if err is not None:
                if on_error is None:
                    raise err
                on_error(pos, err)
                continue
            pending.append(pos)
            arrays.append(arr)
            if len(arrays) == batch_size:
                yield pending, self.encode_arrays(np.stack(arrays))
                pending, arrays = [], []
        if arrays:
            yield pending, self.encode_arrays(np.stack(arrays))


def prefetch(fn, items, workers: int, window: int):
    """Ordered `map(fn, items)` on a thread pool with at most `window` results in flight (flat memory)."""
    from collections import deque

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue: deque = deque()
        it = iter(items)
        for item in it:
            queue.append(pool.submit(fn, item))
            if len(queue) >= window:
                break
        while queue:
            fut = queue.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                queue.append(pool.submit(fn, nxt))
            yield fut.result()


_END = object()
