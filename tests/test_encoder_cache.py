"""The in-process trunk cache and the seeded weights: fast to reuse, never shared mutably, no global RNG reset."""
from __future__ import annotations

import numpy as np
import torch

from retrieval.encoder import EncoderSpec, LayerEncoder, TrunkCache, build_visual


def test_cache_builds_once_and_hands_out_copies():
    cache, built = TrunkCache(size=2), []

    def build(tag):
        def make():
            built.append(tag)
            return torch.nn.Linear(2, 2)
        return make

    a = cache.get("a", build("a"))
    b = cache.get("a", build("a"))
    assert built == ["a"] and a is not b
    with torch.no_grad():
        a.weight.fill_(7.0)  # a caller changing its copy
    assert not torch.equal(cache.get("a", build("a")).weight, a.weight)
    cache.get("b", build("b"))
    cache.get("c", build("c"))  # beyond size 2: the least recently used ("a") is dropped
    cache.get("a", build("a"))
    assert built == ["a", "b", "c", "a"] and len(cache) == 2


def test_encoders_share_weights_not_modules(dataset, encoder32):
    img = [dataset / "npr" / "shape01" / "az000.png"]
    other = LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision="fp32")
    assert other.trunk is not encoder32.trunk
    before = encoder32.encode_images(img)
    np.testing.assert_array_equal(other.encode_images(img), before)
    with torch.no_grad():
        for p in other.trunk.parameters():
            p.mul_(0.5)
    assert not np.array_equal(other.encode_images(img), before)
    np.testing.assert_array_equal(encoder32.encode_images(img), before)
    # another seed is another model, not a cache hit
    seed1 = LayerEncoder(EncoderSpec("untrained", seed=1), device="cpu", precision="fp32")
    assert not np.array_equal(seed1.encode_images(img), before)


def test_seeded_weights_leave_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = build_visual(EncoderSpec("untrained", layer="layer1", seed=3))
    assert torch.equal(torch.rand(4), expected)
    # and the seed alone decides the weights, whatever the global stream was
    torch.manual_seed(999)
    again = build_visual(EncoderSpec("untrained", layer="layer1", seed=3))
    assert torch.equal(first.conv1.weight, again.conv1.weight)
