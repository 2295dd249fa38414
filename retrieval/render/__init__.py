"""Mesh renderer: Freestyle-like line drawings (npr) and shaded views (rgb) without OpenGL.

Meshes are normalised like the seed paper (bounding box centred, half-diagonal 0.56), seen by
a 35 mm / 32 mm perspective camera at distance 1.5, and ray cast with Embree. Every public
render function accepts a raw trimesh.Trimesh (normalised inside, unless
settings.normalize=False) or a PreparedMesh (to share the BVH and edges across calls).
"""
from .batch import (DOMAINS, RenderReport, find_mesh_files, render_dataset, render_mesh_to_dataset,
                    render_views, views_fingerprint)
from .camera import RENDERER_VERSION, Camera, RenderSettings
from .edges import EdgeSet
from .mesh import MESH_EXTENSIONS, PreparedMesh, load_mesh, normalize_mesh, prepare
from .npr import Stroke, draw_strokes, render_npr, visible_strokes
from .raycast import RayCast, RayScene
from .rgb import render_rgb

__all__ = [
    "Camera", "DOMAINS", "EdgeSet", "MESH_EXTENSIONS", "PreparedMesh", "RENDERER_VERSION", "RayCast",
    "RayScene", "RenderReport", "RenderSettings", "Stroke", "draw_strokes", "find_mesh_files", "load_mesh",
    "normalize_mesh",
    "prepare", "render_dataset", "render_mesh_to_dataset", "render_npr", "render_rgb", "render_views",
    "views_fingerprint", "visible_strokes",
]
