"""Embedded demo data: procedural 3D shapes and synthetic freehand-like sketches.

No dataset can be downloaded in CI or on a fresh machine, so cvret ships a small deterministic
generator: :func:`generate_shape` builds chairs, tables, lamps and airplanes from trimesh
primitives (+Y up, fronts towards +Z), :func:`sketchify` turns the renderer's visible NPR strokes
into amateur-looking sketches, and :func:`make_demo_dataset` writes both, plus NPR and RGB
renders, in the cvret dataset layout.
"""
from .demo_data import DEFAULT_COUNTS, DEMO_SMALL_COUNTS, DOMAINS, demo_fingerprint, make_demo_dataset, render_demo_shape
from .shapes import (CATEGORIES, GENERATOR_VERSION, ShapeSpec, generate_shape, generate_shape_spec, generate_shapes,
                     parse_shape_id, shape_id)
from .sketch import SKETCH_VERSION, STYLES, SketchStyle, resolve_style, simplify_polyline, sketch_polylines, sketch_seed, sketchify

__all__ = [
    "CATEGORIES", "GENERATOR_VERSION", "ShapeSpec", "generate_shape", "generate_shape_spec", "generate_shapes",
    "parse_shape_id", "shape_id",
    "SKETCH_VERSION", "STYLES", "SketchStyle", "resolve_style", "simplify_polyline", "sketch_polylines", "sketch_seed",
    "sketchify",
    "DEFAULT_COUNTS", "DEMO_SMALL_COUNTS", "DOMAINS", "demo_fingerprint", "make_demo_dataset", "render_demo_shape",
]
