"""Named cameras shared by the renderer, the dataset reader and the studies.

A viewpoint is a name plus an azimuth and an elevation in degrees. The defaults are the
seed paper's three azimuths (0°, 30°, 75°) at the renderer's default elevation of 10°.
Axis convention (also written into every dataset.json): azimuth 0° puts the camera on the
object's front side (the renderer turns each mesh file from its convention, default ShapeNet
v2's front −Z / up +Y, so that the front faces the az000 camera), and increasing azimuths move
the camera round towards the object's left (counter-clockwise seen from above) unless the
render's azimuth sign is −1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

AXIS_CONVENTION = (
    "azimuth 0 deg = camera on the object's front side (mesh files read as ShapeNet v2: front -Z, up +Y, "
    "unless the render section says otherwise); increasing azimuth moves the camera round towards the "
    "object's left (counter-clockwise seen from above); elevation lifts the camera above the ground plane"
)
DEFAULT_ELEVATION = 10.0
DEFAULT_AZIMUTHS = (0.0, 30.0, 75.0)


@dataclass(frozen=True)
class Viewpoint:
    name: str
    azimuth: float
    elevation: float = DEFAULT_ELEVATION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Viewpoint":
        return cls(str(d["name"]), float(d["azimuth"]), float(d.get("elevation", DEFAULT_ELEVATION)))


def viewpoint_name(azimuth: float) -> str:
    """`az000`-style name for an azimuth (decimals kept when present: `az012.5`)."""
    if float(azimuth).is_integer():
        return f"az{int(azimuth) % 360:03d}"
    return f"az{azimuth:05.1f}"


def make_viewpoints(azimuths=DEFAULT_AZIMUTHS, elevation: float = DEFAULT_ELEVATION) -> list[Viewpoint]:
    return [Viewpoint(viewpoint_name(a), float(a), float(elevation)) for a in azimuths]


def parse_azimuths(text: str) -> list[float]:
    """Parse '0,30,75' into floats; raises ValueError with the offending token."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(float(tok))
        except ValueError:
            raise ValueError(f"not an azimuth in degrees: {tok!r}") from None
    if not out:
        raise ValueError("no azimuths given")
    return out


DEFAULT_VIEWPOINTS = make_viewpoints()
