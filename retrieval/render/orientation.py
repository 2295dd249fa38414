"""Which way a mesh file faces: named conventions, and the rotation into the camera's frame.

Mesh files disagree about where an object's front is: ShapeNetCore v2 puts it on −Z with +Y
up, ShapeNetCore v1 on +X with +Y up, CAD and STL exports usually have +Z up and the front on
−Y (Blender's front view). The cameras always work in one frame (front +Z, up +Y, azimuth 0 on
+Z), so each mesh is turned from its file's convention into that frame before rendering; the
az000 camera then sits on the object's front side whatever the file's convention.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}

# name -> (front, up) in the mesh file
CONVENTIONS = {
    "shapenet-v2": ("-z", "+y"),
    "shapenet-v1": ("+x", "+y"),
    "z-up": ("-y", "+z"),
}
DEFAULT_CONVENTION = "shapenet-v2"
# what cvret rendered before conventions were recorded (front +Z, up +Y)
LEGACY_ORIENTATION = {"front": "+z", "up": "+y", "azimuth_sign": 1}

AZIMUTH_TEXT = {
    1: "increasing azimuth moves the camera round towards the object's left side (counter-clockwise seen from above)",
    -1: "increasing azimuth moves the camera round towards the object's right side (clockwise seen from above)",
}


def check_axis(name: str, what: str) -> str:
    """Normalise '+X' / 'z' / '-y' into '+x' / '+z' / '-y'; ConfigError for anything else."""
    text = str(name).strip().lower()
    if text in ("x", "y", "z"):
        text = "+" + text
    if text not in AXES:
        raise ConfigError(f"--{what} {name!r}: not an axis; choose from {', '.join(AXES)}")
    return text


def resolve(convention: str | None = None, front: str | None = None, up: str | None = None) -> tuple[str, str]:
    """(front, up) from a convention name, overridden by explicit axes; checked for sense.

    `up` alone on the default front's axis (`--up z`) takes the front that goes with it (z-up: -y)."""
    name = convention or DEFAULT_CONVENTION
    if name not in CONVENTIONS:
        raise ConfigError(f"--convention {name!r}: unknown; choose from {', '.join(CONVENTIONS)}")
    f, u = CONVENTIONS[name]
    f = check_axis(front, "front") if front else f
    u = check_axis(up, "up") if up else u
    if up and not front and not convention and f[1] == u[1]:
        # `--up z` alone means a Z-up file: its front is the z-up convention's (-y), or +y when upside down
        f = CONVENTIONS["z-up"][0] if u == CONVENTIONS["z-up"][1] else "+y"
    if f[1] == u[1]:
        raise ConfigError(f"--front {f} and --up {u} are on the same axis; they must be perpendicular")
    return f, u


def convention_name(front: str, up: str) -> str:
    """The preset's name for (front, up), else 'custom'."""
    for name, fu in CONVENTIONS.items():
        if fu == (front, up):
            return name
    return "custom"


def rotation(front: str, up: str) -> np.ndarray:
    """3x3 rotation taking the file's `front` onto +Z and its `up` onto +Y (the cameras' frame)."""
    f = np.asarray(AXES[check_axis(front, "front")], dtype=np.float64)
    u = np.asarray(AXES[check_axis(up, "up")], dtype=np.float64)
    if abs(float(f @ u)) > 0:
        raise ConfigError(f"--front {front} and --up {up} are on the same axis; they must be perpendicular")
    return np.stack([np.cross(u, f), u, f])  # rows: the file's axes that become X, Y, Z


def describe(front: str, up: str, azimuth_sign: int) -> str:
    """One sentence for dataset.json and the README: the file convention and the azimuth direction."""
    return (f"mesh files read with front {front.upper()}, up {up.upper()} ({convention_name(front, up)}); "
            f"azimuth 0 puts the camera on the object's front side; {AZIMUTH_TEXT[int(azimuth_sign)]}; "
            "elevation lifts the camera above the ground plane")
