"""cvret: retrieve 3D shapes from freehand sketches with CLIP ResNet101 layer-3 features.

The front door of the Python API (the README's examples use these names):

    from retrieval import discover, EncoderSpec, build_index, ShapeIndex, QueryEngine, evaluate

Names are imported on first use (PEP 562), so `import retrieval` and the `cvret` command stay
fast: torch, FAISS and matplotlib load only when something needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

_EXPORTS = {
    "discover": "dataset",
    "EncoderSpec": "spec",
    "LayerEncoder": "encoder",
    "OnnxEncoder": "portable",
    "Fingerprint": "fingerprint",
    "build_index": "indexer",
    "ShapeIndex": "index",
    "ShardedIndex": "shards",
    "build_sharded": "shards",
    "merge_shards": "shards",
    "FeatureStore": "store",
    "IndexWriter": "store",
    "open_store": "store",
    "finetune": "finetune",
    "FinetuneOptions": "finetune",
    "ImageTooLarge": "errors",
    "QueryEngine": "search",
    "open_engine": "search",
    "Hit": "search",
    "evaluate": "studies",
    "run_studies": "studies",
    "write_report": "studies",
    "render_dataset": "render",
    "RenderSettings": "render",
    "make_demo_dataset": "synth",
    "run_demo": "demo",
    "CvretError": "errors",
    "ConfigError": "errors",
    "DatasetError": "errors",
    "EncoderError": "errors",
    "ImageError": "errors",
    "MeshError": "errors",
    "StoreError": "errors",
    "StudyError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)
