"""cvret: retrieve 3D shapes from freehand sketches with CLIP ResNet101 layer-3 features."""
__version__ = "0.1.0"
