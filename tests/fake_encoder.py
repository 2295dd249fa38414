"""A deterministic stand-in for the RN101 encoder, for storage tests that must run many builds quickly.

Its feature of an image is a pseudo-random vector seeded by the image's content, so a rebuild
gives bitwise the same features whatever the batching; everything else (dataset reading, the
indexer, the store) is the real code. Run as a script, it builds an index like `cvret index`:
    python tests/fake_encoder.py DATASET OUT [COMMIT_VIEWS] [DIM]
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from retrieval.encoder import EncoderSpec
from retrieval.fingerprint import Fingerprint

SPEC = EncoderSpec(weights="untrained", seed=0)


class FakeEncoder:
    def __init__(self, dim: int = 4096):
        self.feature_dim = dim
        self.spec = SPEC
        self.fingerprint = Fingerprint.from_dict({**SPEC.expected_fingerprint().to_dict(), "feature_shape": [dim],
                                                  "precision": "fake"})

    def feature_of(self, path) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(Path(path).read_bytes()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.feature_dim).astype(np.float32)

    def compile_for(self, n_views: int, mode: str = "auto") -> bool:
        return False  # nothing to compile: features come from the file bytes

    def encode_paths(self, paths, batch_size=16, max_pixels=None, on_error=None, workers=2):
        for s in range(0, len(paths), batch_size):
            pos = list(range(s, min(len(paths), s + batch_size)))
            yield pos, np.stack([self.feature_of(paths[p]) for p in pos])


def build(dataset: Path, out: Path, commit_views: int = 4, dim: int = 4096, batch_size: int = 2):
    from retrieval.dataset import discover
    from retrieval.indexer import build_index

    return build_index(discover(dataset), out, SPEC, encoder=FakeEncoder(dim), commit_views=commit_views,
                       batch_size=batch_size, progress=False)


if __name__ == "__main__":
    from retrieval.errors import CvretError

    try:
        build(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:5]))
    except CvretError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
