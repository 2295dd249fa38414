"""Ray: shards embedded by worker actors (also when one is killed) and served by shard actors, on a local
cluster started here (loopback only) and stopped at the end."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.dataset import discover
from retrieval.shards import ShardedIndex, build_sharded, shard_folder

from .conftest import UNTRAINED, make_dataset, run_cli
from .fake_encoder import SPEC, FakeEncoder
from .test_shards import _per_view
from .test_storage import state

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
pytestmark = pytest.mark.slow  # a local Ray cluster starts for these
ROOT = Path(__file__).resolve().parents[1]


class SlowFakeEncoder(FakeEncoder):
    """Slow enough to be killed in the middle of a shard."""

    def encode_paths(self, paths, **kw):
        for out in super().encode_paths(paths, **kw):
            time.sleep(0.3)
            yield out


def slow_encoder():
    return SlowFakeEncoder()


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ray") / "d", n_shapes=6, domains=("npr", "rgb"))


@pytest.fixture(scope="module")
def local_build(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "idx"
    build_sharded(discover(data), out, SPEC, 3, encoder=FakeEncoder(), commit_views=2, batch_size=2, progress=False)
    return out


def test_ray_build_equals_one_process(cluster, data, local_build, tmp_path):
    from retrieval.cluster import build_on_ray

    out = tmp_path / "r"
    reps = build_on_ray(discover(data), out, SPEC, 3, "auto", workers=2, encoder_factory=FakeEncoder,
                        commit_views=2, batch_size=2, progress=False)
    assert sorted(reps) == [0, 1, 2] and sum(r["embedded"] for r in reps.values()) == 36
    for k in range(3):
        assert state(shard_folder(out, k)) == state(shard_folder(local_build, k))


def test_killed_worker_is_restarted_and_its_shard_resumes(cluster, data, local_build, tmp_path):
    from retrieval.cluster import build_on_ray

    out = tmp_path / "k"
    pids, result, errors = [], {}, []

    def run():
        try:
            result.update(build_on_ray(discover(data), out, SPEC, 3, "auto", workers=2, encoder_factory=slow_encoder,
                                       commit_views=2, batch_size=2, progress=False, on_workers=pids.extend))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any((shard_folder(out, k) / "manifest.json").exists() for k in range(3)):
        time.sleep(0.05)
    assert pids, "no worker started"
    os.kill(pids[0], signal.SIGKILL)  # in the middle of a shard: its first commit is on disk, the rest is not
    t.join(300)
    assert not t.is_alive() and not errors, errors
    for k in range(3):
        assert state(shard_folder(out, k)) == state(shard_folder(local_build, k))


def test_fan_out_search_equals_in_process(cluster, local_build):
    qs = list(np.random.default_rng(0).standard_normal((2, 4096)).astype(np.float32))

    def per_view(index):
        from retrieval.search import QueryEngine

        eng = QueryEngine(index, encoder=FakeEncoder())
        out = []
        for q in qs:
            out.append([(h.shape, h.viewpoint, h.distance) for h in eng.query_features(q, domain="npr", k=5)])
            hits, _ = eng.query_views({"az000": q, "az030": q}, domain="rgb", k=4)
            out.append([(h.shape, h.distance) for h in hits])
        return out

    with ShardedIndex(local_build, ray="auto") as remote, ShardedIndex(local_build) as local:
        assert [type(p).__name__ for _, p in remote.parts] == ["RemoteShard"] * 3
        assert per_view(remote) == per_view(local)
        assert remote.summary()["views"] == local.summary()["views"] == 36
    assert _per_view(local_build, qs)  # the module's own helper still opens it in-process


def test_cli_query_with_ray(cluster, tmp_path):
    data = make_dataset(tmp_path / "d", n_shapes=3, domains=("npr", "sketch"))
    out = tmp_path / "s"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--shards", "2", "--precision", "fp32"])
    img = data / "sketch" / "shape01" / "az000.png"
    a = json.loads(run_cli(["query", img, "--index", out, "--json", "--precision", "fp32", "--ray", "auto"]).stdout)
    b = json.loads(run_cli(["query", img, "--index", out, "--json", "--precision", "fp32"]).stdout)
    assert a["hits"] == b["hits"]
    run_cli(["index", data, "--out", tmp_path / "u", *UNTRAINED, "--quiet", "--precision", "fp32"])
    res = run_cli(["query", img, "--index", tmp_path / "u", "--ray", "auto"], ok=False)
    assert res.exit_code == 1 and "sharded index" in res.output
