"""Framing a sketch like the gallery: find its ink, put it on white paper, crop and pad it to the gallery's scale.

The seed paper found that layer features match best when the object has the same scale in the
sketch as in the gallery views; a sketch drawn small, off-centre or on a wide canvas shrinks
when it is padded to a square and retrieves the wrong shape. This module makes the object's
extent (the longer side of its ink box over the square's side) equal to a target extent, which
`calibration.py` measures on the gallery. It also turns the two ways a sketch hides its ink on
white into dark-on-white: light strokes on a dark background are inverted, light strokes on a
transparent background are composited on black first (and then inverted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .errors import BlankSketch
from .images import PAPER_LEVEL, pad_to_square, to_rgb_on_white, to_rgba

INK_CONTRAST = 25        # a pixel is ink when this much darker than the paper (the median grey)...
DARK_PAPER = 128         # ... and a paper (median grey) darker than this is a dark background: inverted
SPECK_FRACTION = 1e-4    # ink components smaller than this fraction of the image (at least 4 px) are specks
WORK_SIDE = 1024         # ink is found on a copy at most this large (the encoder sees 224 px anyway)


@dataclass(frozen=True)
class Target:
    """Where the gallery puts its objects: the extent and centre a sketch is framed to, and the spread of the
    gallery's own extents and centres, within which a sketch already counts as framed and is left as drawn."""

    extent: float
    centre: tuple[float, float] = (0.0, 0.0)
    extent_range: tuple[float, float] | None = None  # None: every sketch is framed
    centre_radius: float = 0.0

    def fits(self, extent: float, centre: tuple[float, float]) -> bool:
        if self.extent_range is None:
            return False
        lo, hi = self.extent_range
        return lo <= extent <= hi and math.dist(centre, self.centre) <= self.centre_radius


def on_paper(im: Image.Image) -> tuple[Image.Image, bool]:
    """Any decoded image (alpha kept) → dark ink on light paper (RGB), and whether it was inverted.

    Transparent parts go on white; when that leaves no ink but the alpha holds strokes (white ink
    on a transparent background) they go on black instead. A dark paper is then inverted.
    """
    rgba = to_rgba(im)
    alpha = np.asarray(rgba.getchannel("A"))
    flat = to_rgb_on_white(rgba)
    if alpha.min() < 255 and (alpha > 0).any() and ink_box(flat) is None:
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        black.alpha_composite(rgba)
        flat = black.convert("RGB")
    grey = np.asarray(flat.convert("L"))
    if grey.size and float(np.median(grey)) < DARK_PAPER:
        return ImageOps.invert(flat), True
    return flat, False


def ink_mask(im: Image.Image) -> np.ndarray:
    """Boolean mask of ink pixels: darker than the paper by INK_CONTRAST (and than PAPER_LEVEL), specks dropped."""
    grey = np.asarray(im.convert("L"), dtype=np.int16)
    if grey.size == 0:
        return np.zeros(grey.shape, dtype=bool)
    paper = float(np.median(grey))
    mask = grey < min(PAPER_LEVEL, paper - INK_CONTRAST)
    if not mask.any():
        return mask
    from scipy import ndimage  # here, not at the top: 0.2 s to import, which `cvret index` often never needs

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= max(4, SPECK_FRACTION * grey.size)
    keep[0] = False
    return keep[labels]


def ink_box(im: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the ink, in `im`'s pixels (right/bottom exclusive), or None when blank."""
    scale = 1.0
    work = im
    if max(im.size) > WORK_SIDE:
        scale = max(im.size) / WORK_SIDE
        work = im.resize((max(1, round(im.width / scale)), max(1, round(im.height / scale))), Image.BOX)
    mask = ink_mask(work)
    if not mask.any():
        return None
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    box = (xs[0] * scale, ys[0] * scale, (xs[-1] + 1) * scale, (ys[-1] + 1) * scale)
    return (max(0, math.floor(box[0])), max(0, math.floor(box[1])), min(im.width, math.ceil(box[2])),
            min(im.height, math.ceil(box[3])))


def placement(im: Image.Image) -> tuple[float, tuple[float, float]] | None:
    """The object's extent (the ink box's longer side over the image's longer side) and the offset of the ink
    box's centre from the image's centre (x, y, in fractions of that side), as the image would be padded to a
    square; None when blank."""
    box = ink_box(im)
    if box is None:
        return None
    side = max(im.size)
    pad_x, pad_y = (side - im.width) / 2, (side - im.height) / 2
    cx = (pad_x + (box[0] + box[2]) / 2) / side - 0.5
    cy = (pad_y + (box[1] + box[3]) / 2) / side - 0.5
    return max(box[2] - box[0], box[3] - box[1]) / side, (cx, cy)


def frame(im: Image.Image, target: Target, name: str) -> Image.Image:
    """Crop `im` (dark ink on light paper) to its ink and put it on a white square so that its extent is
    `target.extent` and its box's centre sits `target.centre` (fractions of the side) from the square's centre;
    a sketch whose extent and centre already fit the gallery's spread (`Target.fits`) is only padded to a square.

    Raises BlankSketch (an ImageError) naming `name` when no ink is left (a blank sketch).
    """
    extent, centre = target.extent, target.centre
    if not 0.0 < extent <= 1.0:
        raise ValueError(f"extent must be in (0, 1], got {extent}")
    box = ink_box(im)
    if box is None:
        raise BlankSketch(f"{name}: blank sketch (no ink found: every pixel is within {INK_CONTRAST} grey levels "
                         "of the paper or in a speck)")
    now = placement(im)
    if target.fits(*now):
        return pad_to_square(im)
    crop = im.crop(box)
    side = max(1, math.ceil(max(crop.size) / extent))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    x = round(side * (0.5 + centre[0]) - crop.width / 2)
    y = round(side * (0.5 + centre[1]) - crop.height / 2)
    canvas.paste(crop, (min(max(x, 0), side - crop.width), min(max(y, 0), side - crop.height)))  # never cut
    return canvas


def normalize_sketch(im: Image.Image, target: Target, name: str) -> Image.Image:
    """A decoded sketch (alpha kept) → dark ink on white, framed to `target`: what a query embeds."""
    flat, _ = on_paper(im)
    return frame(flat, target, name)
