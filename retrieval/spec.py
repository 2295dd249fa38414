"""What an encoder is (model, layer, weights, input size), known without torch.

A query that runs on the ONNX model (`portable.py`) and the indexer's early checks need the
spec, its fingerprint and the weights' identity, but not torch: keeping them here means that
importing them never costs torch's import (about 1.5 s on a 2-core machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import EncoderError
from .fingerprint import Fingerprint
from .weights import MODEL_NAME, weights_identity

LAYERS = ("layer1", "layer2", "layer3", "layer4")
PREPROCESS_VERSION = "white-alpha/pad-white-square/bicubic/clip-norm/v1"
# open_clip's ModifiedResNet configurations (blocks per stage, stem width); checked against
# open_clip's own config whenever a trunk is built from it.
ARCHITECTURES = {"RN50": ((3, 4, 6, 3), 64), "RN101": ((3, 4, 23, 3), 64)}
EXPANSION = 4


def feature_shape(layer: str, image_size: int, model: str = MODEL_NAME) -> tuple[int, int, int]:
    """(C, H, W) of the feature map, without running the model: the stem divides by 4, each later stage by 2."""
    i = LAYERS.index(layer)
    side = image_size // 4
    for _ in range(i):
        side //= 2
    return ARCHITECTURES[model][1] * 2 ** i * EXPANSION, side, side


@dataclass(frozen=True)
class EncoderSpec:
    """What to build: model, layer and weights (`openai`, `untrained`, or a checkpoint path)."""
    weights: str = "openai"
    layer: str = "layer3"
    seed: int = 0
    image_size: int = 224
    model: str = MODEL_NAME

    @classmethod
    def from_fingerprint(cls, fp: "Fingerprint | dict", weights_path: str | None = None) -> "EncoderSpec":
        """The spec that reproduces an index's encoder; a local file must be given again by path."""
        fp = Fingerprint.from_dict(fp)
        w = str(fp.weights or "")
        if w.startswith("untrained:seed="):
            return cls("untrained", fp.layer, int(w.split("=", 1)[1]), int(fp.image_size), fp.model)
        if w == "openai":
            return cls("openai", fp.layer, 0, int(fp.image_size), fp.model)
        if w.startswith("sha256:"):
            if not weights_path:
                weights_path = remembered_weights_file(fp)
            return cls(weights_path, fp.layer, 0, int(fp.image_size), fp.model)
        raise EncoderError(f"unknown weights in fingerprint: {w!r}")

    @property
    def identity(self) -> str:
        """The weights' identity as the fingerprint records it (hashes a checkpoint file)."""
        return weights_identity(self.weights, self.seed)

    def expected_fingerprint(self) -> Fingerprint:
        """The compared part of the fingerprint, known without building the model."""
        return Fingerprint(model=self.model, layer=self.layer, weights=self.identity, image_size=self.image_size,
                           preprocess=PREPROCESS_VERSION)


def check_spec(spec: EncoderSpec):
    """Refuse a layer or model cvret cannot build, before any weights are read."""
    if spec.layer not in LAYERS:
        raise EncoderError(f"unknown layer {spec.layer!r}; choose one of {', '.join(LAYERS)}")
    if spec.model != MODEL_NAME:
        raise EncoderError(f"unsupported model {spec.model!r}; cvret extracts features from {MODEL_NAME}")


def weights_file_record(weights: str) -> dict:
    """{'weights_file': absolute path} for a local checkpoint (its hash is the fingerprint's `weights`),
    so that queries find the file by themselves while it stays where the index was built from."""
    if weights in ("openai", "untrained"):
        return {}
    return {"weights_file": str(Path(weights).resolve())}


def remembered_weights_file(fp: Fingerprint) -> str:
    """The local weights file an index records, when it is still there with the recorded hash."""
    w = str(fp.weights)
    path = (fp.extra or {}).get("weights_file")
    if not path:
        raise EncoderError(f"the index was built with a local weights file ({w[:19]}...); pass it with --weights PATH")
    if not Path(path).is_file():
        raise EncoderError(f"the index was built with the weights file {path}, which is no longer there; "
                           "pass its new place with --weights PATH")
    if weights_identity(path) != w:
        raise EncoderError(f"{path}: this weights file changed since the index was built (its hash is not "
                           f"{w[:19]}...); pass the original with --weights PATH")
    return path
