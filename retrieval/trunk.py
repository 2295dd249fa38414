"""The inference form of RN101 up to the feature layer, and its on-disk cache.

Building the feature extractor from open_clip costs seconds that a one-sketch `cvret query`
or a small `cvret index` would spend mostly there: importing open_clip (which imports
torchvision and, through it, torch._dynamo), random initialisation or a checkpoint read,
and folding every batch norm into its convolution. What inference needs is much smaller:
convolutions with a bias, ReLUs, average pools and residual adds. `FoldedTrunk` is exactly
that, in plain torch; `FoldedTrunk.from_visual` folds open_clip's tower into it with torch's
own `fuse_conv_bn_eval`. The folded float32 weights are saved once per weights identity
(checksummed, written atomically) under the cvret cache, so later processes load them with
torch alone. A damaged or stale cache file is rebuilt from open_clip, never trusted.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .cache import cache_dir, key_name, trunk_key  # noqa: F401 (trunk_key: re-exported)
from .errors import EncoderError
from .spec import ARCHITECTURES, EXPANSION, LAYERS, feature_shape

log = logging.getLogger(__name__)

BN_EPS = 1e-5  # open_clip's BatchNorm2d default, the one OpenAI's RN101 was trained with


class FoldedBottleneck(nn.Module):
    """open_clip's `Bottleneck` with each batch norm folded into the convolution before it."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1)
        self.downsample = None
        if stride > 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                                            nn.Conv2d(inplanes, planes * EXPANSION, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.conv2(out))
        out = self.conv3(self.avgpool(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu_(out + identity)


class FoldedTrunk(nn.Module):
    """The 3-conv stem and the residual stages up to `layer`: layer4 and the attention pool never exist."""

    def __init__(self, layer: str = "layer3", model: str = "RN101"):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}")
        blocks, width = ARCHITECTURES[model]
        self.layer, self.model = layer, model
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width // 2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AvgPool2d(2))
        stages, inplanes = [], width
        for i in range(LAYERS.index(layer) + 1):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            stage = [FoldedBottleneck(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            stage += [FoldedBottleneck(inplanes, planes, 1) for _ in range(1, blocks[i])]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    @staticmethod
    def feature_shape(layer: str, image_size: int, model: str = "RN101") -> tuple[int, int, int]:
        """(C, H, W) of the feature map, without running the model (`spec.feature_shape`)."""
        return feature_shape(layer, image_size, model)

    @classmethod
    def empty(cls, layer: str, model: str = "RN101") -> "FoldedTrunk":
        """The module without storage (meta tensors): no seconds spent on an initialisation that loading replaces."""
        with torch.device("meta"):
            return cls(layer, model)

    @classmethod
    def from_visual(cls, visual: nn.Module, layer: str, model: str = "RN101") -> "FoldedTrunk":
        """Fold open_clip's `ModifiedResNet` into a FoldedTrunk."""
        blocks, width = ARCHITECTURES[model]
        used = LAYERS[: LAYERS.index(layer) + 1]
        got = tuple(len(getattr(visual, n)) for n in used)
        if got != blocks[: len(used)] or visual.conv3.out_channels != width:
            raise ValueError(f"the visual tower is not {model} (blocks {got}, width {visual.conv3.out_channels})")
        eps = {m.eps for m in visual.modules() if isinstance(m, nn.BatchNorm2d)}
        if eps != {BN_EPS}:
            raise ValueError(f"batch norms with eps {sorted(eps)}, expected {BN_EPS}")
        return cls.from_state_dict(visual.state_dict(), layer, model)

    @classmethod
    def from_state_dict(cls, sd: dict, layer: str, model: str = "RN101", source: str = "checkpoint") -> "FoldedTrunk":
        """Fold a visual-tower state dict (open_clip names) with torch's `fuse_conv_bn_weights`.

        Works from tensors alone, so a checkpoint is folded without importing open_clip or building
        the modules it would load into; `source` names the file in errors.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        folded = cls.empty(layer, model)
        pairs = folding_pairs(folded)
        missing = [k for conv, bn in pairs.values() for k in
                   (conv + ".weight", *(f"{bn}.{t}" for t in ("weight", "bias", "running_mean", "running_var")))
                   if k not in sd]
        if missing:
            raise EncoderError(f"{source}: not an {model} visual checkpoint (missing {len(missing)} tensors, "
                               f"e.g. {missing[0]})")
        state, want = {}, folded.state_dict()
        for target, (conv, bn) in pairs.items():
            w, b = fuse_conv_bn_weights(sd[conv + ".weight"], None, sd[bn + ".running_mean"], sd[bn + ".running_var"],
                                        BN_EPS, sd[bn + ".weight"], sd[bn + ".bias"])
            if w.shape != want[target + ".weight"].shape:
                raise EncoderError(f"{source}: tensors do not fit {model} ({conv}.weight is {tuple(w.shape)}, "
                                   f"expected {tuple(want[target + '.weight'].shape)})")
            state[target + ".weight"], state[target + ".bias"] = w.detach().float(), b.detach().float()
        folded.load_state_dict(state, assign=True, strict=True)
        return folded.eval()


def folding_pairs(trunk: FoldedTrunk) -> dict[str, tuple[str, str]]:
    """Each folded convolution of `trunk` → the (conv, batch norm) of open_clip's tower it comes from."""
    pairs = {f"stem.{2 * i}": (f"conv{i + 1}", f"bn{i + 1}") for i in range(3)}
    for s, stage in enumerate(trunk.stages):
        for j, block in enumerate(stage):
            src, dst = f"{LAYERS[s]}.{j}", f"stages.{s}.{j}"
            for c in (1, 2, 3):
                pairs[f"{dst}.conv{c}"] = (f"{src}.conv{c}", f"{src}.bn{c}")
            if block.downsample is not None:
                pairs[f"{dst}.downsample.1"] = (f"{src}.downsample.0", f"{src}.downsample.1")
    return pairs


# ------------------------------------------------------------------ the caches

def _digest(state: dict) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().view(torch.uint8).numpy().data)
    return h.hexdigest()


def read_cached(key: dict) -> dict | None:
    """The folded float32 state dict saved for `key`, or None (absent, unreadable, stale or damaged: logged)."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / "trunks" / f"{key_name(key)}.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # mmap: 4x slower to first use
        if saved.get("key") != key:
            raise ValueError("written for another trunk")
        if _digest(saved["state"]) != saved.get("xxh3"):
            raise ValueError("checksum mismatch")
        return saved["state"]
    except Exception as e:  # a cache is never trusted over a rebuild
        log.warning("%s: ignoring the cached trunk (%s); rebuilding it", path, str(e).splitlines()[0][:120])
        return None


def write_cached(key: dict, state: dict) -> Path | None:
    """Save a folded state dict atomically; a cache that cannot be written is skipped with a note."""
    from .fsio import atomic_path

    folder = cache_dir()
    if folder is None:
        return None
    path = folder / "trunks" / f"{key_name(key)}.pt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in state.items()}
        with atomic_path(path) as tmp:
            torch.save({"key": key, "state": state, "xxh3": _digest(state)}, tmp)
        return path
    except OSError as e:
        log.info("cannot write the trunk cache %s (%s); continuing without it", path, e.strerror or e)
        return None


class FoldedStates:
    """Folded float32 state dicts per key, shared within a process (LRU): a process builds each model once.

    Callers never receive these tensors themselves (`materialize` copies), so one caller
    changing its module (hooks, in-place edits) cannot reach another.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: dict, build) -> dict:
        name = key_name(key)
        with self._lock:
            state = self._items.get(name)
            if state is not None:
                self._items.move_to_end(name)
                return state
        state = read_cached(key)
        if state is None:
            state = build()
            write_cached(key, state)
        with self._lock:
            self._items[name] = state
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return state

    def clear(self):
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def materialize(state: dict, layer: str, model: str, device, dtype, channels_last: bool = True) -> FoldedTrunk:
    """A FoldedTrunk owning fresh copies of `state`'s tensors on `device` in `dtype`."""
    owned = {}
    for k, v in state.items():
        v = v.to(device=device, dtype=dtype, copy=True)  # converting and re-laying out in one call is 20x slower
        owned[k] = v.contiguous(memory_format=torch.channels_last) if channels_last and v.dim() == 4 else v
    trunk = FoldedTrunk.empty(layer, model)
    trunk.load_state_dict(owned, assign=True, strict=True)
    return trunk.eval()
