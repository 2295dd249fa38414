"""Reading checkpoint files (retrieval.weights.read_state_dict): each format goes to its one loader,
and no process-wide warning state is touched (issue 9)."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from retrieval.errors import EncoderError
from retrieval.weights import checkpoint_format, read_state_dict


class Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3)


class Clip(torch.nn.Module):
    """Like OpenAI's archive: the visual tower under `visual.`, plus a text part that is dropped."""

    def __init__(self):
        super().__init__()
        self.visual = Tower()
        self.token_embedding = torch.nn.Embedding(5, 2)

    def forward(self, x):
        return self.visual.conv1(x)


@contextlib.contextmanager
def no_warning_filter_changes():
    """Fails the test when the code inside changes warning filters (process-wide state, not thread-safe)."""
    calls = []

    def spy(name, real):
        def f(*a, **kw):
            calls.append(name)
            return real(*a, **kw)
        return f

    with pytest.MonkeyPatch.context() as mp:
        for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
            mp.setattr(warnings, name, spy(name, getattr(warnings, name)))
        yield
    assert calls == [], f"warning filters touched: {calls}"


def test_torch_save_checkpoint_is_read_with_weights_only_and_never_through_jit(tmp_path, monkeypatch):
    m = Clip()
    path = tmp_path / "ft.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, path)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **kw: pytest.fail("torch.jit.load tried on a torch.save file"))
    assert checkpoint_format(path) == "torch"
    with no_warning_filter_changes():
        sd = read_state_dict(path)
    assert sorted(sd) == ["conv1.bias", "conv1.weight"]
    assert torch.equal(sd["conv1.weight"], m.visual.conv1.weight)


def test_torchscript_archive_is_read_through_jit(tmp_path):
    m = Clip()
    path = tmp_path / "RN101.pt"
    with pytest.warns(FutureWarning):  # torch.jit.save is deprecated; OpenAI's RN101.pt is such an archive
        torch.jit.script(m).save(str(path))
    assert checkpoint_format(path) == "torchscript"
    with pytest.warns(FutureWarning, match="jit.load"):  # torch's own deprecation warning, not hidden
        with no_warning_filter_changes():
            sd = read_state_dict(path)
    assert sorted(sd) == ["conv1.bias", "conv1.weight"]
    assert torch.equal(sd["conv1.weight"], m.visual.conv1.weight)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(4, 3, 3, 3)
    path = tmp_path / "w.safetensors"
    save_file({"visual.conv1.weight": w}, str(path))
    assert checkpoint_format(path) == "safetensors"
    with no_warning_filter_changes():
        assert torch.equal(read_state_dict(path)["conv1.weight"], w)


def test_unreadable_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with no_warning_filter_changes(), pytest.raises(EncoderError, match=r"junk\.pt: not a readable torch checkpoint"):
        read_state_dict(junk)
    # a pickle that needs arbitrary code to load is refused (weights_only), never executed
    evil = tmp_path / "evil.pt"
    torch.save({"obj": Tower()}, evil)
    with no_warning_filter_changes(), pytest.raises(EncoderError, match=r"evil\.pt: not a readable torch checkpoint"):
        read_state_dict(evil)
