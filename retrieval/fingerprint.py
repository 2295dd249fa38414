"""The encoder fingerprint: what made an index's features, so features of different encoders never mix.

Five fields decide compatibility (model, layer, weights identity, input size, preprocessing);
the rest (feature shape, precision, torch version, the store's feature dtype...) is recorded
for information. The index stores it as a JSON dict; this frozen dataclass is how the
encoder, the indexer, the query engine, the CLI and the studies read and compare it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

# Fields whose equality makes two encoders interchangeable; the others are recorded for information.
COMPARED = ("model", "layer", "weights", "image_size", "preprocess")


@dataclass(frozen=True)
class Fingerprint:
    model: str | None = None
    layer: str | None = None
    weights: str | None = None        # 'openai', 'sha256:<file hash>' or 'untrained:seed=N'
    image_size: int | None = None
    preprocess: str | None = None
    feature_shape: tuple | None = None
    precision: str | None = None
    torch: str | None = None
    extra: dict = field(default_factory=dict, hash=False)  # any other recorded key, kept for the round trip

    @classmethod
    def from_dict(cls, d: "dict | Fingerprint | None") -> "Fingerprint":
        """From an index's stored dict (missing keys stay None; unknown keys go to `extra`)."""
        if isinstance(d, Fingerprint):
            return d
        d = dict(d or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: d.pop(k) for k in list(d) if k in known}
        if kw.get("feature_shape") is not None:
            kw["feature_shape"] = tuple(kw["feature_shape"])
        return cls(**kw, extra=d)

    def to_dict(self) -> dict:
        """The JSON form stored in an index (None fields left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        if "feature_shape" in out:
            out["feature_shape"] = list(out["feature_shape"])
        out.update(self.extra)
        return out

    def diff(self, other: "Fingerprint | dict") -> list[str]:
        """Names of the compared fields on which the two differ (empty: the encoders are interchangeable)."""
        other = Fingerprint.from_dict(other)
        return [k for k in COMPARED if str(getattr(self, k)) != str(getattr(other, k))]

    def mismatch(self, other: "Fingerprint | dict", where: str, mine: str = "index", theirs: str = "encoder") -> str:
        """The one message for two incompatible encoders, naming every differing field and both values."""
        other = Fingerprint.from_dict(other)
        parts = ", ".join(f"{k}: {mine} {getattr(self, k)!r} vs {theirs} {getattr(other, k)!r}" for k in self.diff(other))
        return f"{where}: the index was built with another encoder ({parts})"

    @property
    def is_untrained(self) -> bool:
        """Random weights (tests, offline demos): every number made with them must say so."""
        return isinstance(self.weights, str) and self.weights.strip().lower().startswith("untrained")

    @property
    def label(self) -> str:
        """A short human label, e.g. 'RN101 layer3, weights untrained:seed=0; untrained, not the paper's numbers'."""
        w = str(self.weights) if self.weights is not None else "unknown weights"
        note = "; untrained, not the paper's numbers" if self.is_untrained else ""
        layer = self.layer if self.layer is not None else ""
        return f"{self.model or 'RN101'} {layer}, weights {w[:19]}{note}"
