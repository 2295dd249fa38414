"""Ray (the optional `cluster` extra): shards embedded by worker actors and served by shard actors.

Embedding (`cvret index ... --shards K --ray auto`): one `EmbedWorker` actor per worker, each with
its own encoder (a GPU each where the cluster has GPUs), builds whole shards with the ordinary
indexer, reading the images from a path every node can see and writing its shard's folder itself;
the driver only hands out shard numbers and shows progress from the shards' manifests, so it
never holds a feature. A worker that dies is restarted by Ray and its shard resumes from its last
commit (the storage engine makes every commit durable and every rerun idempotent).

Serving (`--ray` on `cvret query` / `cvret serve`): one `ShardActor` per shard holds that shard
opened in memory; `ShardedIndex` talks to them through `RemoteShard` proxies, so a query is
embedded once by the caller, fanned out, and the per-shard exact top-k lists are merged exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import CvretError
from .index import ShapeIndex
from .store import MANIFEST_FILE, ViewRecord
from .viewpoints import Viewpoint


def _ray():
    try:
        import ray
    except ImportError:
        raise CvretError("--ray needs Ray: pip install -e '.[cluster]'") from None
    return ray


def connect(address: str):
    """Join a Ray cluster: 'auto' (the running one), 'local' (start one here), or a head's address."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        if address == "local":
            ray.init(**kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CvretError(f"cannot connect to the Ray cluster at {address!r} ({str(e).splitlines()[0]})") from None
    return ray


# ---------------------------------------------------------------- embedding
class _EmbedWorker:
    """One encoder, building whole shards with the ordinary indexer."""

    def __init__(self, spec, options: dict, encoder_factory=None):
        self.spec = spec
        self.options = options
        self.factory = encoder_factory
        self.cache: dict = {}

    def pid(self) -> int:
        return os.getpid()

    def build(self, dataset, out: str, n_shards: int, k: int) -> dict:
        from .shards import build_sharded

        if self.factory is not None and "encoder" not in self.cache:
            self.cache["encoder"] = self.factory()
        reports = build_sharded(dataset, Path(out), self.spec, n_shards, [k], encoder_cache=self.cache,
                                **self.options)
        return {"shard": k, **(reports[k].to_dict() if k in reports else {"embedded": 0, "skipped": "empty"})}


def build_on_ray(dataset, out: Path | str, spec, n_shards: int, address: str = "auto", *, workers: int | None = None,
                 shards: list[int] | None = None, progress: bool = True, encoder_factory=None,
                 on_workers=None, **options) -> dict:
    """Build the shards of a sharded index on a Ray cluster; returns {shard: report dict}."""
    from .shards import declare_shards, shard_folder, shard_of

    ray = connect(address)
    out = Path(out).resolve()
    declare_shards(out, n_shards)
    todo = [k for k in (range(n_shards) if shards is None else shards)
            if any(shard_of(v.shape, n_shards) == k for v in dataset.views)]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if workers is None:
        workers = gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
    workers = max(1, min(workers, len(todo) or 1))
    options = {**options, "progress": False}
    if gpus:
        options.setdefault("device", "cuda")
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=3, max_task_retries=3)(_EmbedWorker)
    actors = [actor_cls.remote(spec, options, encoder_factory) for _ in range(workers)]
    if on_workers is not None:
        on_workers(ray.get([a.pid.remote() for a in actors]))
    pending = {}
    queue = list(todo)
    for a in actors:
        if queue:
            k = queue.pop(0)
            pending[a.build.remote(dataset, str(out), n_shards, k)] = a
    total = sum(1 for v in dataset.views if shard_of(v.shape, n_shards) in todo)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"embedding on Ray ({workers} workers)", unit="view", dynamic_ncols=True)
    results = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                a = pending.pop(ref)
                rep = ray.get(ref)
                results[rep["shard"]] = rep
                if queue:
                    k = queue.pop(0)
                    pending[a.build.remote(dataset, str(out), n_shards, k)] = a
            if bar is not None:
                bar.n = sum(_committed_views(shard_folder(out, k)) for k in todo)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        for a in actors:
            ray.kill(a)
    return results


def _committed_views(folder: Path) -> int:
    import json

    try:
        return len(json.loads((folder / MANIFEST_FILE).read_text())["views"]["row"])
    except (OSError, ValueError, KeyError):
        return 0


# ---------------------------------------------------------------- serving
class _ShardActor:
    """One shard held in memory, answering the searches of `RemoteShard`."""

    def __init__(self, folder: str):
        self.index = ShapeIndex(folder, gpu="auto")

    def table(self) -> dict:
        st = self.index.store
        return {"records": [r.__dict__ for r in st.records()], "viewpoints": [v.to_dict() for v in st.viewpoints],
                "categories": st.categories, "fingerprint": st.fingerprint, "feature_dim": st.feature_dim,
                "feature_dtype": st.feature_dtype, "problems": st.problems, "layout": st.layout,
                "generation": st.generation, "size_bytes": st.size_bytes(), "calibration": st.calibration}

    def call(self, method: str, *args, **kwargs):
        if method.startswith("compressed."):
            return getattr(self.index.compressed(), method.split(".", 1)[1])(*args, **kwargs)
        if method.startswith("store."):
            return getattr(self.index.store, method.split(".", 1)[1])(*args, **kwargs)
        return getattr(self.index, method)(*args, **kwargs)


class _RemoteStore:
    """The table of a remote shard, kept here; feature reads go to the actor."""

    def __init__(self, actor, table: dict):
        self.actor = actor
        self._t = table
        self._records = [ViewRecord(**r) for r in table["records"]]
        self.viewpoints = [Viewpoint.from_dict(v) for v in table["viewpoints"]]
        self.categories = table["categories"]
        self.fingerprint = table["fingerprint"]
        self.feature_dim = table["feature_dim"]
        self.feature_dtype = table["feature_dtype"]
        self.problems = table["problems"]
        self.layout = table["layout"]
        self.generation = table["generation"]
        self.calibration = table.get("calibration", {})  # gallery extents and distance scale (calibration.py)

    @property
    def n_views(self) -> int:
        return len(self._records)

    def records(self):
        return list(self._records)

    def size_bytes(self) -> int:
        return int(self._t["size_bytes"])

    def _call(self, method, *args):
        return _ray().get(self.actor.call.remote("store." + method, *args))

    def read_raw(self, rows):
        return self._call("read_raw", np.asarray(rows))

    def read_features(self, rows):
        return self._call("read_features", np.asarray(rows))

    def verify(self, progress=None):
        return self._call("verify")

    def close(self):
        pass


class RemoteShard(ShapeIndex):
    """A shard held by a `ShardActor`: tables here, features and searches there."""

    def __init__(self, folder: Path, actor):
        self.folder = Path(folder)
        self.name = self.folder.name
        self.actor = actor
        self.store = _RemoteStore(actor, _ray().get(actor.table.remote()))
        self._sources = {}
        self._build_tables()

    def _call(self, method, *args, **kwargs):
        return _ray().get(self.actor.call.remote(method, *args, **kwargs))

    def gpu_backend(self):
        return self._call("gpu_backend")

    def search(self, *args, **kwargs):
        return self._call("search", *args, **kwargs)

    def exact_distances(self, *args):
        return self._call("exact_distances", *args)

    def distances_to_all(self, *args):
        return self._call("distances_to_all", *args)

    def features(self, *args):
        return self._call("features", *args)

    def compressed(self):
        shard = self

        class _Codes:
            def approximate_distances(self, *args):
                return shard._call("compressed.approximate_distances", *args)

            def memory_per_view(self):
                return shard._call("compressed.memory_per_view")

        return _Codes()

    def close(self):
        pass


def open_remote_shards(folder: Path | str, address: str = "auto") -> list[tuple[int, RemoteShard]]:
    """Start one ShardActor per built shard of a sharded folder and return proxies for ShardedIndex."""
    from .shards import read_shards, shard_folder
    from .store import index_exists

    ray = connect(address)
    folder = Path(folder).resolve()
    actor_cls = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(_ShardActor)
    parts = []
    for k in range(read_shards(folder)):
        sf = shard_folder(folder, k)
        if index_exists(sf):
            parts.append((k, RemoteShard(sf, actor_cls.remote(str(sf)))))
    return parts
