"""Reading any image safely and preprocessing it the same way for every domain.

Sketches arrive as 16-bit scans, palette PNGs, RGBA exports with transparent backgrounds,
or huge photographs; all of them become the same thing: RGB on white, padded to a white
square, resized to the model's input size (bicubic), normalised with CLIP's mean and std.
Every failure is an `ImageError` whose message names the file and the problem.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, ImageTooLarge

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
DEFAULT_MAX_PIXELS = 100_000_000  # about 10,000 × 10,000; raise with --max-pixels
PAPER_LEVEL = 230  # grey level (0-255) below which a pixel counts as ink


def load_image(path: str | Path, max_pixels: int | None = None, keep_alpha: bool = False) -> Image.Image:
    """Decode `path` into an RGB image on white, or raise ImageError naming the file and the problem.

    `keep_alpha`: RGBA (or RGB) with the transparency kept, for `framing.on_paper` to decide the paper.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    return _decode(path, path, max_pixels, keep_alpha)


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = None,
                     keep_alpha: bool = False) -> Image.Image:
    """The same as `load_image` for an image held in memory (an upload); `name` labels the errors."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, keep_alpha)


def _decode(source, path, max_pixels: int | None, keep_alpha: bool = False) -> Image.Image:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        im = open_unchecked(source)  # the header only: our own limit below, checked before decoding
        w, h = im.size
        if w * h > limit:
            raise ImageTooLarge(f"{path}: image is {w}×{h} pixels, over the limit of {limit:,} (raise it with --max-pixels)")
        if w == 0 or h == 0:
            raise ImageError(f"{path}: image has no pixels ({w}×{h})")
        if im.format == "JPEG":
            im.draft("RGB", (1024, 1024))  # decode big JPEGs at a reduced scale: we resize to 224 anyway
        im.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, (SyntaxError, OSError)):
            raise ImageError(f"{path}: truncated or corrupt image data ({msg})") from None
        raise ImageError(f"{path}: cannot decode ({msg})") from None
    except Exception as e:  # decoders raise odd things on hostile files
        raise ImageError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    try:
        return to_rgba(im) if keep_alpha else to_rgb_on_white(im)
    except Exception as e:
        raise ImageError(f"{path}: unsupported pixel format {im.mode!r} ({e})") from None


def open_unchecked(path) -> Image.Image:
    """`Image.open` without PIL's process-wide `MAX_IMAGE_PIXELS` check: reads the header, decodes nothing.

    cvret applies its own per-call limit (`max_pixels`) to the size this returns. Changing PIL's
    global for the duration of a call is not an option: decoding threads restoring each other's
    saved values left the guard disabled for the whole process. This runs PIL's own format
    plugins in PIL's order, exactly as `Image.open` does, minus the global check (and its warning).
    """
    if hasattr(path, "read"):  # an image held in memory (an upload)
        start = path.tell()
        prefix = path.read(16)
    else:
        with open(path, "rb") as f:
            prefix = f.read(16)
    for init in (Image.preinit, Image.init):  # common formats first, then every plugin, like Image.open
        init()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            ok = accept(prefix) if accept else True
            if not ok or isinstance(ok, str):  # a str is PIL's reason for declining
                continue
            try:
                if hasattr(path, "read"):
                    path.seek(start)
                    return factory(path, "")
                return factory(str(path))  # the plugin opens (and after load() closes) its own file
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}")


def to_rgba(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGBA (opaque when the image has no transparency), 16-bit scaled down."""
    im = _to_8bit(im)
    return im if im.mode == "RGBA" else im.convert("RGBA")


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if im.mode == "F" and a.max(initial=0) <= 1.0:
            hi = 1.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def to_rgb_on_white(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, transparent parts composited on white, 16-bit scaled down."""
    im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im.convert("RGBA"))
        return bg.convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def ink_fraction(im: Image.Image, paper: int = PAPER_LEVEL) -> float:
    """Fraction of pixels darker than paper once composited on white: 0.0 for a blank sketch.

    Servers refuse sketches with (almost) no ink before spending an encoder pass on them.
    """
    grey = np.asarray(to_rgb_on_white(im).convert("L"))
    return float((grey < paper).mean()) if grey.size else 0.0


def pad_to_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess_image(im: Image.Image, size: int = 224) -> Image.Image:
    """RGB on white → white-padded square at `size`×`size` (bicubic)."""
    im = pad_to_square(to_rgb_on_white(im))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return im


def preprocess_array(im: Image.Image, size: int = 224) -> np.ndarray:
    """(3, size, size) float32, CLIP-normalised."""
    a = np.asarray(preprocess_image(im, size), dtype=np.float32) / 255.0
    a = (a - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def preprocess_batch(images, size: int = 224) -> np.ndarray:
    """PIL images or paths → (B, 3, size, size) float32, what an encoder's `encode_images` feeds its trunk
    (a path is decoded with `load_image`, so a bad file raises ImageError naming it)."""
    return np.stack([preprocess_array(load_image(im) if isinstance(im, (str, Path)) else im, size) for im in images])


def content_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
