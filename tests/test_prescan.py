"""`cvret index` reads the image files (hashes, a new index's extents) in a forked child while torch loads.

What is stored must not change: the child runs the same `scan_views` as the main process would, an index
built through the CLI (child scan) equals one built in-process with no scan (inline) bit for bit, and
when the child fails the main process scans inline and reports what it finds as before.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retrieval.calibration import measure_extents
from retrieval.dataset import View, discover
from retrieval.errors import ImageError
from retrieval.images import content_sha256
from retrieval.indexer import build_index
from retrieval.prescan import ViewScan, scan_views, start_scan
from retrieval.store import FeatureStore

from .conftest import make_dataset
from .fake_encoder import SPEC, FakeEncoder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("prescan") / "data", n_shapes=3, domains=("npr",))


def _run(code: str, *args, env=None) -> subprocess.CompletedProcess:
    """A fresh interpreter (torch not yet imported: the fork path) running `code` from the repository."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_scan_views_equals_hashes_and_extents_computed_directly(small, tmp_path):
    views = discover(small).views + [View("npr", "gone", "az000", str(tmp_path / "gone.png"))]
    scan = scan_views(views, extents=True)
    assert scan.shas == {i: content_sha256(v.path) for i, v in enumerate(views[:-1])}
    assert scan.unreadable == {len(views) - 1: f"{views[-1].path}: cannot read (No such file or directory)"}
    assert scan.extents == measure_extents([(v.domain, v.shape, v.viewpoint, v.path) for v in views])
    assert scan_views(views).extents is None  # measured only when asked for
    assert scan.covers(views, None) and not scan.covers(views[:-1], None) and not scan.covers(views, 10**6)


def test_no_fork_once_torch_is_loaded(small):
    """The test process has imported torch (conftest): forking it is unsafe, so the caller scans inline."""
    assert "torch" in sys.modules
    assert start_scan(discover(small).views, extents=True) is None


def test_child_scan_comes_back_identical_and_a_dead_child_gives_none(small):
    code = """
        import os, pickle, sys
        from retrieval import prescan
        from retrieval.dataset import discover
        views = discover(sys.argv[1]).views
        pending = prescan.start_scan(views, extents=True)
        assert isinstance(pending, prescan.PendingScan), pending
        assert pending.result() == prescan.scan_views(views, extents=True)
        prescan._scan_in_child = lambda *a: os._exit(3)   # a child that dies before sending anything
        assert prescan.start_scan(views, extents=True).result() is None
        def fails(*a):
            raise MemoryError("no memory in the child")
        prescan.scan_views = fails                        # a child whose scan raises
        assert prescan.start_scan(views).result() is None
        assert "torch" not in sys.modules
        print("ok")
    """
    p = _run(code, small)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert "Traceback" not in p.stderr  # a failing child says nothing: the main process scans and reports


def test_build_index_uses_a_scan_only_when_it_covers_the_views(small, tmp_path):
    ds = discover(small)
    other = scan_views(ds.views[:-1], extents=True)
    wrong = ViewScan(other.views, None, {i: "0" * 64 for i in other.shas}, {}, {"npr": {}})
    a = build_index(ds, tmp_path / "a", SPEC, encoder=FakeEncoder(64), progress=False)
    b = build_index(ds, tmp_path / "b", SPEC, encoder=FakeEncoder(64), progress=False, scan=wrong)
    c = build_index(ds, tmp_path / "c", SPEC, encoder=FakeEncoder(64), progress=False,
                    scan=scan_views(ds.views, extents=True))
    assert a.embedded == b.embedded == c.embedded == len(ds.views)
    docs = [_stored(tmp_path / n) for n in "abc"]
    assert docs[0] == docs[1] == docs[2]


def test_unreadable_view_is_reported_or_stops_strict(small, tmp_path):
    ds = discover(small)
    gone = View("npr", "gone", "az000", str(tmp_path / "gone.png"))
    ds = replace(ds, views=ds.views + [gone])
    rep = build_index(ds, tmp_path / "i", SPEC, encoder=FakeEncoder(64), progress=False)
    assert rep.failed == [(gone.path, f"{gone.path}: cannot read (No such file or directory)")]
    with pytest.raises(ImageError, match="gone.png: cannot read"):
        build_index(ds, tmp_path / "j", SPEC, encoder=FakeEncoder(64), progress=False, strict=True)


AUDIT = """
    import json, os, sys, threading
    log = open(os.environ["AUDIT_LOG"], "a", buffering=1)
    seen = set()
    def hook(event, args):
        name = "scipy.ndimage" if event == "import" and args[0].startswith("scipy.ndimage") else args and args[0]
        if event == "os.fork" or (event == "import" and name in ("torch", "scipy.ndimage") and
                                  (os.getpid(), name) not in seen):
            seen.add((os.getpid(), name))
            log.write(json.dumps([os.getpid(), event, name or None]) + "\\n")
    sys.addaudithook(hook)
    import atexit, gc  # runs after the handlers `cvret index` registers (last in, first out)
    atexit.register(lambda: log.write(json.dumps([os.getpid(), "frozen at exit", gc.get_freeze_count() > 0]) + "\\n"))
    from retrieval.cli import main
    sys.argv = ["cvret"] + sys.argv[1:]
    main()
"""


def _stored(folder: Path) -> dict:
    """What an index stores, less what differs between any two builds (timestamps, generation, segment names)."""
    with FeatureStore(folder) as s:
        recs = s.records()
        feats = s.read_features([r.row for r in recs])
        return {"views": [(r.row, r.domain, r.shape, r.viewpoint, r.path, r.sha256, r.checksum) for r in recs],
                "features": feats.tobytes(), "dtype": str(feats.dtype), "calibration": s.calibration,
                "fingerprint": s.fingerprint}


def test_cli_index_scans_in_a_child_and_stores_what_an_inline_build_stores(small, tmp_path, encoder32):
    """A new index, then a resumed one with a shape more: each CLI run scans in a child forked before torch is
    imported, and stores exactly what the same builds in-process (no scan given: inline) store."""
    import shutil

    data = shutil.copytree(small, tmp_path / "data")
    shutil.move(data / "npr" / "shape02", tmp_path / "held")
    log, out, ref = tmp_path / "audit.jsonl", tmp_path / "cli", tmp_path / "inline"
    for run, embedded in ((1, 6), (2, 3)):
        if run == 2:
            shutil.move(tmp_path / "held", data / "npr" / "shape02")
        log.unlink(missing_ok=True)
        p = _run(AUDIT, "index", data, "--out", out, "--weights", "untrained", "--seed", "0", "--quiet",
                 "--compile", "never", "--precision", "fp32", "--device", "cpu", "--json",
                 env={"AUDIT_LOG": str(log)})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["embedded"] == embedded
        events = [json.loads(line) for line in log.read_text().splitlines()]
        parent = events[0][0]
        mine = [e[1:] for e in events if e[0] == parent]
        assert ["os.fork", None] in mine and ["import", "torch"] in mine
        assert mine.index(["os.fork", None]) < mine.index(["import", "torch"])  # the child started before torch
        assert ["import", "scipy.ndimage"] not in mine  # the extents were measured in the child only
        assert any(e[0] != parent and e[1:] == ["import", "scipy.ndimage"] for e in events)
        assert ["frozen at exit", True] in mine  # the last collections skipped (cli.skip_final_collection)

        # the same dataset built the old way: in-process, no scan given, the same encoder settings, and one thread
        # like the CLI run (_run sets OMP_NUM_THREADS=1): fp32 convolutions split over two threads round differently
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            build_index(discover(data), ref, encoder32.spec, encoder=encoder32, progress=False, compile="never")
        finally:
            torch.set_num_threads(threads)
        got, want = _stored(out), _stored(ref)
        assert got["fingerprint"] == want["fingerprint"]
        assert got["calibration"] == want["calibration"] and len(got["calibration"]["extents"]["npr"]) == 3
        assert got["views"] == want["views"] and len(got["views"]) == {1: 6, 2: 9}[run]
        assert got["features"] == want["features"]


def test_discover_names_only_the_empty_shape_folders(small, tmp_path):
    """discover's empty-folder check is one set look-up per folder (it was a pass over every view per folder:
    quadratic in the number of shapes); exactly the empty folders are named."""
    import shutil

    root = shutil.copytree(small, tmp_path / "data")
    (root / "npr" / "empty1").mkdir()
    (root / "npr" / "empty2").mkdir()
    problems = [p for p in discover(root).problems if "shape folder has no views" in p]
    assert problems == [f"{root / 'npr' / 'empty1'}: shape folder has no views",
                        f"{root / 'npr' / 'empty2'}: shape folder has no views"]
