"""Render settings and the perspective camera shared by the NPR and RGB renderers.

The defaults reproduce the seed paper's Blender setup (the object's bounding box centred and
scaled to a half-diagonal of 0.56, a 35 mm lens on a 32 mm sensor at distance 1.5, elevation
10°), so that our renders can stand in for theirs. Every option lives in one frozen
dataclass whose `fingerprint()` lets the batch renderer tell whether files on disk were made
with the same settings.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import ConfigError
from ..viewpoints import Viewpoint
from .orientation import CONVENTIONS, DEFAULT_CONVENTION, check_axis

LINE_TONES = ("freestyle", "flat")
RGB_COLORS = ("mesh", "uniform")

# Bump when a code change alters pixels, so that resumed runs re-render old outputs.
RENDERER_VERSION = "2"  # 2: mesh files turned from their convention (front/up) before rendering


@dataclass(frozen=True)
class RenderSettings:
    """All knobs of the renderer. Lengths in pixels are at the output size unless noted."""

    size: int = 224                    # output width = height, pixels
    supersample: int = 3               # ray-cast / shading grid is size*supersample (anti-aliasing)
    line_supersample: int = 4          # lines are drawn at size*line_supersample, then box-filtered
    half_diagonal: float = 0.56        # bounding-box half-diagonal after normalisation
    camera_distance: float = 1.5       # camera to origin
    focal_mm: float = 35.0             # lens; horizontal fov = 2*atan(sensor/2/focal)
    sensor_mm: float = 32.0            # sensor width
    normalize: bool = True             # centre + scale the mesh before rendering (idempotent)
    crease_angle: float = 134.43       # Freestyle's: crease where the dihedral angle is below this
    line_width: float = 1.25           # stroke width, output pixels
    line_tone: str = "freestyle"       # freestyle: coverage in linear light, stored sRGB; flat: 8-bit box filter
    piece_length: float = 0.5          # hidden-line test granularity along an edge, output pixels
    depth_tolerance: float = 2e-3      # occlusion slack, world units at half_diagonal 0.56 (scaled)
    min_stroke_length: float = 0.75    # drop visible specks shorter than this, output pixels
    base_color: tuple = (0.72, 0.72, 0.72)  # surface colour when the mesh has none (linear 0..1)
    ambient: float = 0.35              # RGB shading: ambient term
    diffuse: float = 0.65              # RGB shading: Lambert term of the key light
    light_dir: tuple = (-0.45, 0.6, 0.66)   # key light in camera space (x right, y up, z to viewer)
    front: str = CONVENTIONS[DEFAULT_CONVENTION][0]  # the object's front in the mesh file (shapenet-v2: -z)
    up: str = CONVENTIONS[DEFAULT_CONVENTION][1]     # the object's up in the mesh file (+y)
    azimuth_sign: int = 1              # +1: increasing azimuth goes round to the object's left; -1: its right
    rgb_colors: str = "mesh"           # mesh: the file's colours (base_color where it has none); uniform: base_color

    def __post_init__(self):
        if int(self.size) < 8:
            raise ConfigError(f"size must be >= 8 pixels, got {self.size}")
        for name in ("supersample", "line_supersample"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("half_diagonal", "camera_distance", "focal_mm", "sensor_mm", "piece_length"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < float(self.crease_angle) <= 180:
            raise ConfigError(f"crease_angle must be in (0, 180], got {self.crease_angle}")
        if not float(self.line_width) > 0:
            raise ConfigError(f"--line-width must be > 0 pixels, got {self.line_width} (0 would draw no lines)")
        if self.rgb_colors not in RGB_COLORS:
            raise ConfigError(f"--rgb-colors {self.rgb_colors!r}: unknown; choose from {', '.join(RGB_COLORS)}")
        object.__setattr__(self, "front", check_axis(self.front, "front"))
        object.__setattr__(self, "up", check_axis(self.up, "up"))
        if self.front[1] == self.up[1]:
            raise ConfigError(f"--front {self.front} and --up {self.up} are on the same axis; "
                              "they must be perpendicular")
        if self.line_tone not in LINE_TONES:
            raise ConfigError(f"--line-tone {self.line_tone!r}: unknown; choose from {', '.join(LINE_TONES)}")
        if self.azimuth_sign not in (1, -1):
            raise ConfigError(f"--azimuth-sign must be +1 or -1, got {self.azimuth_sign}")
        object.__setattr__(self, "azimuth_sign", int(self.azimuth_sign))
        # tuples stay tuples (a list would make the dataclass unhashable)
        object.__setattr__(self, "base_color", tuple(float(c) for c in self.base_color))
        object.__setattr__(self, "light_dir", tuple(float(c) for c in self.light_dir))

    @property
    def fov_deg(self) -> float:
        """Horizontal (= vertical, square images) field of view in degrees."""
        return math.degrees(2 * math.atan(self.sensor_mm / 2 / self.focal_mm))

    def to_dict(self) -> dict:
        return asdict(self)

    def orientation(self) -> dict:
        """The file convention and azimuth direction, as recorded in dataset.json."""
        from .orientation import convention_name, describe

        return {"convention": convention_name(self.front, self.up), "front": self.front, "up": self.up,
                "azimuth_sign": self.azimuth_sign,
                "description": describe(self.front, self.up, self.azimuth_sign)}

    def fingerprint(self) -> str:
        """Short stable hash of every setting plus the renderer version (used to resume runs)."""
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        if payload["rgb_colors"] == "mesh":  # the behaviour before the option: old datasets stay up to date
            del payload["rgb_colors"]
        payload["_renderer"] = RENDERER_VERSION
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking at the origin with +Y up; image x right, y down, in pixels.

    Works in the oriented frame (the object's front on +Z, see orientation.py), so azimuth 0
    is always the object's front; settings.azimuth_sign decides which way azimuths turn."""

    position: np.ndarray   # (3,) world
    right: np.ndarray      # (3,) world, image +x
    up: np.ndarray         # (3,) world, image -y
    forward: np.ndarray    # (3,) world, viewing direction
    size: int              # image width = height, pixels
    focal_px: float        # focal length in pixels at `size`

    @classmethod
    def from_viewpoint(cls, viewpoint: Viewpoint, settings: RenderSettings,
                       size: int | None = None) -> "Camera":
        """Camera of `viewpoint` (azimuth 0 on +Z; counter-clockwise from above, towards +X = the
        object's left, or clockwise when settings.azimuth_sign is -1)."""
        az = math.radians(settings.azimuth_sign * viewpoint.azimuth)
        el = math.radians(viewpoint.elevation)
        d = settings.camera_distance
        pos = d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        fwd = -pos / np.linalg.norm(pos)
        world_up = np.array([0.0, 1.0, 0.0])
        right = np.cross(fwd, world_up)
        if np.linalg.norm(right) < 1e-9:  # looking straight down/up: pick -Z/+Z as screen up
            right = np.cross(fwd, np.array([0.0, 0.0, -1.0 if el > 0 else 1.0]))
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        size = int(size or settings.size)
        focal_px = size * settings.focal_mm / settings.sensor_mm
        return cls(pos, right, up, fwd, size, focal_px)

    def scaled(self, factor: int) -> "Camera":
        """Same view on a grid `factor` times finer (supersampling)."""
        return Camera(self.position, self.right, self.up, self.forward,
                      self.size * factor, self.focal_px * factor)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (N,3) -> camera coordinates (x right, y up, z = depth along the view axis)."""
        rel = np.asarray(points, dtype=np.float64) - self.position
        return np.stack([rel @ self.right, rel @ self.up, rel @ self.forward], axis=-1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> pixel coordinates (N,2) (x right, y down) and depth (N,)."""
        c = self.to_camera(points)
        z = c[..., 2]
        zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
        half = self.size / 2.0
        xy = np.stack([half + self.focal_px * c[..., 0] / zs, half - self.focal_px * c[..., 1] / zs], axis=-1)
        return xy, z

    def pixel_rays(self, rows: slice = slice(None),
                   cols: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions (h*w, 3) through the pixel centres of a window, row-major."""
        n = self.size
        coords = (np.arange(n, dtype=np.float64) + 0.5 - n / 2.0) / self.focal_px
        xs, ys = np.meshgrid(coords[cols], -coords[rows])  # rows go down the image = -up
        dirs = (xs[..., None] * self.right + ys[..., None] * self.up + self.forward).reshape(-1, 3)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(self.position, dirs.shape).copy()
        return origins, dirs

    def rays_through(self, xy: np.ndarray) -> np.ndarray:
        """Unit world directions through pixel coordinates (N,2) (x right, y down, at `size`)."""
        xy = np.asarray(xy, dtype=np.float64)
        half = self.size / 2.0
        u = (xy[:, 0] - half) / self.focal_px
        v = -(xy[:, 1] - half) / self.focal_px
        dirs = u[:, None] * self.right + v[:, None] * self.up + self.forward
        return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
