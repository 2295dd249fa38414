"""The folded trunk compiled ahead of time by torch's inductor (AOTInductor), cached on disk.

On CPU, eager PyTorch runs each convolution, ReLU and residual add as its own oneDNN call and
re-lays out the weights on every call. Inductor with frozen weights fuses the ReLUs and adds
into the convolutions and packs the weights once; on this project's machines that was worth
far more than any batch-size or thread setting (README, Performance). Compiling costs about a
minute, so the package is built once per (weights, layer, precision, torch) with a dynamic
batch dimension and kept next to the folded trunk; later runs load it in about a second. It
pays off for long indexing runs, not for one query, which is why `cvret index` decides by the
number of views (`--compile auto`) and queries stay eager.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from .cache import cache_dir, key_name

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "always", "never")
AUTO_MIN_VIEWS = 2000  # below this a first compile (about a minute) costs more than it saves
FORMAT = "cvret-aoti-trunk/v1"


def compiler_available() -> bool:
    """Inductor's CPU backend writes C++ and needs a compiler on PATH."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def package_path(trunk_key: dict, precision: str, device: torch.device) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    key = {**trunk_key, "compiled": FORMAT, "precision": precision, "device": device.type}
    return folder / "compiled" / f"{key_name(key)}.pt2"


def wants_compiled(mode: str, n_views: int, device: torch.device, path: Path | None) -> bool:
    """Whether to use (and if needed build) the compiled trunk for a job of `n_views` images."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "never" or device.type != "cpu" or path is None:
        return False
    if mode == "always":
        return True
    return path.is_file() or (n_views >= AUTO_MIN_VIEWS and compiler_available())


def load_or_compile(trunk: torch.nn.Module, example: torch.Tensor, path: Path, compile_ok: bool = True):
    """A callable equal to `trunk` on any batch size: the cached package, or a new one compiled now.

    Returns None (and logs why) when neither works, so that the caller keeps the eager trunk.
    """
    if path.is_file():
        try:
            return torch._inductor.aoti_load_package(str(path))
        except Exception as e:  # a package from another torch or a damaged file: compile again
            log.warning("%s: cannot load the compiled trunk (%s); compiling it again", path,
                        str(e).splitlines()[0][:120])
    if not compile_ok:
        return None
    if not compiler_available():
        log.warning("no C++ compiler on PATH: the trunk runs uncompiled (install g++ for --compile)")
        return None
    from .fsio import fsync_dir

    building = path.with_name(f"{path.stem}.{os.getpid()}.building.pt2")  # inductor wants a .pt2 name
    try:
        log.info("compiling the trunk once for this machine (about a minute): %s", path)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.inference_mode():
            exported = torch.export.export(trunk, (example,), dynamic_shapes=({0: batch},))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(building),
                                                 inductor_configs={"freezing": True})
        with open(building, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(building, path)
        fsync_dir(path.parent)
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:  # compiling is an optimisation: never fatal
        log.warning("compiling the trunk failed (%s: %s); it runs uncompiled", type(e).__name__,
                    str(e).splitlines()[0][:160])
        return None
    finally:
        building.unlink(missing_ok=True)
