"""The folded trunk and its caches: the same features as open_clip's tower, built once, never shared mutably."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import trunk as trunk_mod
from retrieval.encoder import EncoderSpec, LayerEncoder, Trunk, build_visual
from retrieval.trunk import LAYERS, FoldedStates, FoldedTrunk, materialize, read_cached, trunk_key, write_cached


@pytest.mark.parametrize("layer", LAYERS)
def test_folded_trunk_equals_open_clip_tower(layer):
    """Folding changes the arithmetic, not the function: every layer matches the unfolded tower, and the
    shape computed without a forward pass is the real one."""
    spec = EncoderSpec("untrained", layer=layer, seed=2, image_size=64)
    visual = build_visual(spec)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that folding has something to fold
        g = torch.Generator().manual_seed(0)
        for m in visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    reference = Trunk(visual, layer).eval()
    folded = FoldedTrunk.from_visual(visual, layer)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, got = reference(x), folded(x)
    assert tuple(got.shape[1:]) == tuple(want.shape[1:]) == FoldedTrunk.feature_shape(layer, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_states_built_once_then_read_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    built = []
    key = trunk_key("RN101", "layer1", "untrained:seed=9")

    def build():
        built.append(1)
        return FoldedTrunk.from_visual(build_visual(EncoderSpec("untrained", layer="layer1", seed=9)),
                                       "layer1").state_dict()

    first = FoldedStates().get(key, build)
    assert built == [1] and len(list((tmp_path / "trunks").iterdir())) == 1
    again = FoldedStates().get(key, build)  # a new process: read from disk, not rebuilt
    assert built == [1]
    assert all(torch.equal(first[k], again[k]) for k in first)
    # another weights identity is another file, never a hit
    FoldedStates().get(trunk_key("RN101", "layer1", "untrained:seed=8"),
                       lambda: {k: v + 1 for k, v in first.items()})
    assert len(list((tmp_path / "trunks").iterdir())) == 2


def test_damaged_cache_file_is_rebuilt_not_trusted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    key = trunk_key("RN101", "layer1", "untrained:seed=4")
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    path = write_cached(key, state)
    assert torch.equal(read_cached(key)["w"], state["w"])
    # flip one byte inside the tensor data (the file stays a readable archive)
    raw = bytearray(path.read_bytes())
    at = raw.find(np.arange(1000, dtype=np.float32)[500:502].tobytes())
    assert at > 0
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))
    assert read_cached(key) is None and "checksum" in caplog.text
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert read_cached(key) is None
    # a file saved for another key under this name is refused too
    other = trunk_key("RN101", "layer1", "untrained:seed=5")
    write_cached(other, state)
    (tmp_path / "trunks" / f"{trunk_mod.key_name(other)}.pt").replace(path)
    assert read_cached(key) is None


def test_no_disk_cache_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("CVRET_CACHE_DIR", "")
    assert write_cached(trunk_key("RN101", "layer1", "x"), {"w": torch.zeros(2)}) is None
    assert read_cached(trunk_key("RN101", "layer1", "x")) is None


def test_states_lru(monkeypatch):
    monkeypatch.setenv("CVRET_CACHE_DIR", "")  # memory only
    states, built = FoldedStates(size=2), []
    for name in ("a", "b", "c", "a"):
        states.get({"n": name}, lambda: built.append(name) or {})
    assert built == ["a", "b", "c", "a"] and len(states) == 2


def test_materialize_hands_out_copies():
    state = {k: v for k, v in FoldedTrunk.from_visual(
        build_visual(EncoderSpec("untrained", layer="layer1", seed=1, image_size=32)), "layer1").state_dict().items()}
    a = materialize(state, "layer1", "RN101", "cpu", torch.float32)
    b = materialize(state, "layer1", "RN101", "cpu", torch.float32)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in a.parameters():  # weights and biases
            p.mul_(0.0)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert all(torch.equal(v, state[k]) for k, v in b.state_dict().items())
    assert materialize(state, "layer1", "RN101", "cpu", torch.bfloat16).stem[0].weight.dtype == torch.bfloat16


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


def test_checkpoint_folded_from_tensors_alone(tmp_path):
    """A checkpoint folds to the same weights as the tower it loads into, bit for bit, and a process that
    encodes with it never imports open_clip (the start-up cost the folded path exists to skip)."""
    import subprocess
    import sys

    from retrieval.errors import EncoderError
    from retrieval.weights import read_state_dict

    visual = build_visual(EncoderSpec("untrained", layer="layer4", seed=5))
    ckpt = tmp_path / "rn101_visual.pt"
    torch.save({"state_dict": {f"visual.{k}": v for k, v in visual.state_dict().items()}}, ckpt)
    want = FoldedTrunk.from_visual(visual, "layer3").state_dict()
    got = FoldedTrunk.from_state_dict(read_state_dict(ckpt), "layer3").state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    code = ("import sys, numpy as np; from retrieval.encoder import EncoderSpec, LayerEncoder; "
            f"e = LayerEncoder(EncoderSpec({str(ckpt)!r}), device='cpu', precision='fp32'); "
            "e.encode_arrays(np.zeros((1, 3, 224, 224), np.float32)); "
            "print('open_clip' in sys.modules, 'torchvision' in sys.modules)")
    env = {**__import__("os").environ, "CVRET_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr

    sd = read_state_dict(ckpt)
    sd["layer3.4.conv2.weight"] = sd["layer3.4.conv2.weight"][:, :128]
    with pytest.raises(EncoderError, match="x.pt: tensors do not fit RN101 .layer3.4.conv2.weight"):
        FoldedTrunk.from_state_dict(sd, "layer3", source="x.pt")
    del sd["layer2.1.bn1.running_var"]
    with pytest.raises(EncoderError, match="x.pt: not an RN101 visual checkpoint .missing 1 tensors, e.g. layer2.1"):
        FoldedTrunk.from_state_dict(sd, "layer3", source="x.pt")
