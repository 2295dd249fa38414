"""Storage engine v2: crash consistency, full disks, bit flips, one writer, readers on a snapshot, upgrade.

Most tests build indexes with `fake_encoder.FakeEncoder` (features seeded by image content) so that
dozens of builds stay fast; the indexer and the store are the real code.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import StoreError
from retrieval.index import ShapeIndex
from retrieval.store import (LOCK_FILE, MANIFEST_FILE, PREVIOUS_MANIFEST_FILE, SEGMENTS_DIR, FeatureStore,
                             IndexWriter)

from .conftest import UNTRAINED, make_dataset, run_cli
from .fake_encoder import FakeEncoder, build

FAKE = Path(__file__).with_name("fake_encoder.py")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers
def state(folder) -> dict:
    """Everything a query can see, keyed by (domain, shape, viewpoint): path, image hash, feature bytes."""
    with FeatureStore(folder) as st:
        recs = st.records()
        raw = st.read_raw([r.row for r in recs])
        return {r.key: (r.path, r.sha256, raw[i].tobytes()) for i, r in enumerate(recs)}


def rankings(folder, dim=4096) -> list:
    """Per-viewpoint top-5 of a fixed query in every domain: shapes and distances."""
    q = np.random.default_rng(7).standard_normal((1, dim)).astype(np.float32)
    out = []
    with ShapeIndex(folder, gpu="never") as si:
        for d in si.domains:
            for vp in si.viewpoint_names(d):
                dist, rows = si.search(d, vp, q, 5)
                out.append((d, vp, [si.record(r).shape for r in rows[0]], dist[0].tolist()))
    return out


def fake_build_subprocess(data, out, commit_views=4, dim=4096, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(FAKE), str(data), str(out), str(commit_views), str(dim)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("storage") / "d", n_shapes=6)


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "idx"
    build(data, out)
    return out


# ---------------------------------------------------------------- layout and size
def test_one_copy_of_the_features(clean):
    files = sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file())
    assert MANIFEST_FILE in files and not any(f.endswith((".faiss", ".h5", ".npy")) for f in files)
    segs = [p for p in (clean / SEGMENTS_DIR).iterdir()]
    # 54 views of 4096 float16 numbers, each stored once, in segments of at most 4 views
    assert sum(p.stat().st_size for p in segs) == 54 * 4096 * 2
    assert len(segs) == 14
    doc = json.loads((clean / MANIFEST_FILE).read_text())
    assert doc["generation"] >= 14 and len(doc["views"]["row"]) == 54


def test_identical_images_share_one_stored_feature(tmp_path):
    data = make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    shutil.copytree(data / "npr" / "shape00", data / "npr" / "shape09")
    rep = build(data, tmp_path / "i")
    assert rep.copied == 3 and rep.embedded == 6
    with FeatureStore(tmp_path / "i") as st:
        a = {r.viewpoint: (r.segment, r.position) for r in st.records() if r.shape == "shape00"}
        b = {r.viewpoint: (r.segment, r.position) for r in st.records() if r.shape == "shape09"}
        assert a == b
    assert sum(p.stat().st_size for p in (tmp_path / "i" / SEGMENTS_DIR).iterdir()) == 6 * 4096 * 2


# ---------------------------------------------------------------- kills
STEP_FUNCTIONS = ("fsync", "replace", "link", "unlink", "ftruncate")


def _crash_at(step: int, fn, torn: bool = False) -> int:
    """Run fn in a forked child that dies (os._exit, like SIGKILL: no cleanup) at its `step`-th file-system
    step; with `torn`, a crash at an fsync first cuts the file being synced to half its length, as a
    kill or power loss in the middle of writing it would. Returns the number of steps fn took when it
    was not stopped, or -1 when it was."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        count = [0]

        real_ftruncate = os.ftruncate

        def wrap(name, real):
            def f(*a, **k):
                count[0] += 1
                if count[0] == step:
                    if torn and name == "fsync":
                        with contextlib.suppress(OSError):  # a folder's fd cannot be cut
                            real_ftruncate(a[0], os.fstat(a[0]).st_size // 2)
                    os._exit(86)
                return real(*a, **k)
            return f

        for name in STEP_FUNCTIONS:
            setattr(os, name, wrap(name, getattr(os, name)))
        code = 0
        try:
            fn()
        except BaseException:
            code = 3
        os.write(w, str(count[0]).encode())
        os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    steps = os.read(r, 100)
    os.close(r)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 86), f"the writer failed at step {step} with exit code {code}"
    return int(steps) if code == 0 else -1


@pytest.mark.slow
def test_fault_injection_at_every_write_step(tmp_path):
    """Kill the writer at every fsync/rename/link/unlink/truncate of an update (segments, manifest commits,
    garbage collection, lock release), also with the file being synced torn in half: the index opens,
    every view verifies, and finishing the update gives the same state as an uninterrupted update."""
    dim = 64
    rng = np.random.default_rng(0)
    feats = {f"s{i}": rng.standard_normal((3, dim)).astype(np.float32) for i in range(6)}
    base = tmp_path / "base"
    with IndexWriter(base, fingerprint={"model": "fake"}, feature_dim=dim, commit_views=3) as w:
        for s in ("s0", "s1"):
            w.add([("npr", s, f"v{k}", f"{s}/{k}.png", f"h-{s}-{k}") for k in range(3)], feats[s])

    def update(folder):
        with IndexWriter(folder, commit_views=2) as w:
            for s in ("s2", "s3", "s4"):
                w.add([("npr", s, f"v{k}", f"{s}/{k}.png", f"h-{s}-{k}") for k in range(3)], feats[s])
            w.add([("npr", "s0", "v0", "s0/0.png", "h-new")], feats["s5"][:1])  # a changed image
            w.add_copies([("rgb", "s1", "v0", "x.png", "h-s1-0")], [w.lookup()[("npr", "s1", "v0")].row])
            gone = w.lookup().get(("npr", "s1", "v2"))  # idempotent: a finished run already removed it
            w.remove([gone.row] if gone else [])

    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    total = _crash_at(0, lambda: update(ref))
    assert total > 10
    expected = state(ref)
    for step, torn in [(n, t) for n in range(1, total + 1) for t in (False, True)]:
        work = tmp_path / f"crash{step}{'t' if torn else ''}"
        shutil.copytree(base, work)
        assert _crash_at(step, lambda: update(work), torn) == -1
        with FeatureStore(work) as st:  # a consistent snapshot: the old state or a committed step of the update
            assert st.verify() == []
            assert {("npr", "s0", f"v{k}") for k in range(3)} <= set(st.lookup())
        update(work)
        assert state(work) == expected, f"after a kill at step {step} (torn write: {torn})"
        referenced = {r.segment for r in FeatureStore(work).records()}
        prev = json.loads((work / PREVIOUS_MANIFEST_FILE).read_text())["segments"]
        leftovers = {p.name for p in (work / SEGMENTS_DIR).iterdir()} - referenced - {s["name"] for s in prev}
        assert not leftovers, f"step {step}: {leftovers}"
        shutil.rmtree(work)


@pytest.mark.slow
def test_sigkill_during_index_then_resume(data, clean, tmp_path):
    """SIGKILL a real indexing process at a dozen random moments, rerunning each time: every rerun works
    and the final index equals a clean build (features bitwise, table, query results)."""
    t = time.perf_counter()
    p = fake_build_subprocess(data, tmp_path / "timing", dim=200704)
    assert p.wait() == 0, p.stderr.read()
    span = time.perf_counter() - t
    out = tmp_path / "killed"
    rnd = random.Random(1)
    kills = 0
    for attempt in range(12):
        p = fake_build_subprocess(data, out, dim=200704)
        time.sleep(rnd.uniform(0.2, span))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    p = fake_build_subprocess(data, out, dim=200704)
    assert p.wait() == 0, p.stderr.read()
    assert kills >= 6
    assert state(out) == state(tmp_path / "timing")
    assert rankings(out, 200704) == rankings(tmp_path / "timing", 200704)


@pytest.mark.slow
def test_sigkill_real_cvret_index(tmp_path):
    """The real CLI with the real (untrained) encoder, killed once while embedding, then resumed."""
    data = make_dataset(tmp_path / "d", n_shapes=4, domains=("npr",))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "retrieval.cli", "index", str(data), "--out", str(tmp_path / "k"), *UNTRAINED,
           "--batch-size", "2", "--commit-every", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    manifest = tmp_path / "k" / MANIFEST_FILE
    while time.time() < deadline and p.poll() is None:  # wait for the first committed segment, then kill
        # committed = listed by the manifest (renamed into place atomically); a segment file alone is not yet
        # committed, and a kill just after it was written would rightly leave nothing to resume from
        try:
            if json.loads(manifest.read_text()).get("segments"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    res = subprocess.run([*cmd, "--json", "--quiet"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["unchanged"] >= 2 and rep["unchanged"] + rep["embedded"] == 12
    run_cli(["index", data, "--out", tmp_path / "clean", *UNTRAINED, "--batch-size", "2", "--quiet"])
    assert state(tmp_path / "k") == state(tmp_path / "clean")


# ---------------------------------------------------------------- full disk
def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_full_disk_exits_with_one_line_and_loses_nothing(data, clean, tmp_path):
    mnt = tmp_path / "small"
    mounted = _mount_tmpfs(mnt, "160k")
    try:
        out = mnt / "idx"
        kw = {}
        if not mounted:  # no tmpfs here: a file-size limit gives the same failure (EFBIG) to the writer
            import resource

            kw["preexec_fn"] = lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)))
        p = fake_build_subprocess(data, out, **kw)
        assert p.wait() == 1
        err = p.stderr.read().strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        assert ("disk full" in err[0] or "too large" in err[0]) and "--overwrite" not in err[0]
        assert "intact" in err[0]
        before = state(out)  # what was committed opens and verifies
        assert 0 < len(before) < 54
        with FeatureStore(out) as st:
            assert st.verify() == []
        if mounted:
            assert subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)]).returncode == 0
        p = fake_build_subprocess(data, out)
        assert p.wait() == 0, p.stderr.read()
        after = state(out)
        assert after == state(clean)
        assert all(after[k] == v for k, v in before.items())
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)])


# ---------------------------------------------------------------- bit flips
def test_bit_flips_are_detected_or_harmless(data, tmp_path):
    src = tmp_path / "src"
    build(data, src)
    with ShapeIndex(src, gpu="never") as si:
        from retrieval.compress import build_compressed

        build_compressed(si, "pca:4")
    q = np.random.default_rng(3).standard_normal((1, 4096)).astype(np.float32)

    def results(folder):
        out = []
        with ShapeIndex(folder, gpu="never") as si:
            for mode in ("exact", "compressed"):
                for d in si.domains:
                    for vp in si.viewpoint_names(d):
                        dist, rows = si.search(d, vp, q, 3, mode=mode, candidates=4)
                        out.append((rows.tolist(), dist.tolist()))
        return out

    ref = results(src)
    rnd = random.Random(0)
    kinds = {"segment": sorted((src / SEGMENTS_DIR).iterdir()), "manifest": [src / MANIFEST_FILE],
             "previous manifest": [src / PREVIOUS_MANIFEST_FILE],
             "compressed": sorted((src / "compressed").iterdir())}
    detected = {k: 0 for k in kinds}
    for kind, files in kinds.items():
        for trial in range(20):
            f = rnd.choice(files)
            work = tmp_path / "w"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work)
            target = work / f.relative_to(src)
            raw = bytearray(target.read_bytes())
            at = rnd.randrange(len(raw))
            for i in range(at, min(len(raw), at + 8)):
                raw[i] ^= 0xFF
            target.write_bytes(bytes(raw))
            try:
                got = results(work)
            except StoreError as e:
                assert "\n" not in str(e)
                detected[kind] += 1
                continue
            assert got == ref, f"{kind} {target.name}: flipped bytes at {at} silently changed a ranking"
            if kind == "segment":  # whatever search read, verify reads every view
                with FeatureStore(work) as st:
                    assert st.verify(), f"flipped bytes at {at} of {target.name} went unnoticed"
    assert detected["segment"] > 0 and detected["manifest"] == 20 and detected["compressed"] > 0


def test_verify_reports_and_index_repairs_damaged_views(data, tmp_path):
    out = tmp_path / "i"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--domains", "npr"])
    original = state(out)
    with FeatureStore(out) as st:
        rec = next(r for r in st.records() if r.shape == "shape03" and r.viewpoint == "az030")
        seg = out / SEGMENTS_DIR / rec.segment
        row_bytes = st.feature_dim * 2
    with open(seg, "r+b") as f:
        f.seek(rec.position * row_bytes + 1000)
        f.write(b"\x00\x7c" * 8)  # float16 infinities in the middle of the feature
    res = run_cli(["verify", out], ok=False)
    assert res.exit_code == 1 and "shape shape03, npr az030" in res.output
    q = run_cli(["query", data / "sketch" / "shape03" / "az030.png", "--index", out, "--viewpoint", "az030"],
                ok=False)
    assert q.exit_code == 1 and "damaged feature of shape shape03, npr az030" in q.output
    assert len([ln for ln in q.output.splitlines() if ln.startswith("error:")]) == 1
    rep = json.loads(run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--domains", "npr",
                              "--json"]).stdout)
    assert rep["repaired"] == 1 and rep["embedded"] == 1
    assert run_cli(["verify", out]).exit_code == 0
    assert state(out) == original


# ---------------------------------------------------------------- one writer, readers on snapshots
def test_second_writer_stops_at_once(data, clean, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(clean, out)
    with IndexWriter(out):
        res = run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"], ok=False)
        assert res.exit_code == 1
        assert f"being updated by process {os.getpid()}" in res.output and "--overwrite" not in res.output
        assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
        assert rankings(out) == rankings(clean)  # readers are never refused
    with IndexWriter(out):  # released when the first writer ended
        pass


def test_readers_keep_their_snapshot_while_a_writer_commits(data, tmp_path):
    out = tmp_path / "c"
    build(data, out)
    before = rankings(out)
    early = ShapeIndex(out, gpu="never")        # opened, nothing read yet
    loaded = ShapeIndex(out, gpu="never")
    q = np.random.default_rng(7).standard_normal((1, 4096)).astype(np.float32)
    loaded.search("npr", "az000", q, 5)
    enc = FakeEncoder()
    with IndexWriter(out, commit_views=1) as w:  # replace every npr view: each commit drops old segments
        for r in sorted(w.records(), key=lambda r: r.row):
            if r.domain == "npr":
                w.add([(r.domain, r.shape, r.viewpoint, r.path, "changed-" + r.sha256)], -enc.feature_of(r.path)[None])
    for si in (early, loaded):
        got = []
        for d in si.domains:
            for vp in si.viewpoint_names(d):
                dist, rows = si.search(d, vp, q, 5)
                got.append((d, vp, [si.record(r).shape for r in rows[0]], dist[0].tolist()))
        assert got == before
        si.close()
    assert rankings(out) != before  # a new reader sees the new generation


@pytest.fixture
def read_only_copy(clean, tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "4m"):
        pytest.skip("needs root and tmpfs to make a read-only file system")
    shutil.copytree(clean, mnt / "idx")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt / "idx"
    subprocess.run(["umount", "-l", str(mnt)])


def test_read_only_folder(read_only_copy, data, clean):
    res = run_cli(["index", data, "--out", read_only_copy, *UNTRAINED, "--quiet"], ok=False)
    assert res.exit_code == 1 and "read-only file system" in res.output and "--overwrite" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
    assert rankings(read_only_copy) == rankings(clean)
    assert run_cli(["verify", read_only_copy, "--quiet"]).exit_code == 0


def test_permission_and_lock_errors_say_what_is_true(clean, tmp_path, monkeypatch):
    """Without root's tmpfs: an EACCES on the lock file is reported as such (the writer never touches data)."""
    out = tmp_path / "c"
    shutil.copytree(clean, out)
    real_open = os.open

    def deny(path, *a, **k):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(StoreError, match="cannot update the index .permission denied"):
        IndexWriter(out)


# ---------------------------------------------------------------- format 1
def write_format1(folder: Path, src: Path):
    """A folder as cvret 0.1 wrote it (meta.h5 + float32 FAISS copies), from a format-2 index's content."""
    import faiss
    import h5py

    folder.mkdir(parents=True)
    with FeatureStore(src) as st:
        recs = st.records()
        feats = st.read_raw([r.row for r in recs])
        dt, dim, fp = st.feature_dtype, st.feature_dim, st.fingerprint
        vps, cats = [v.to_dict() for v in st.viewpoints], st.categories
    n = len(recs) + 1  # one superseded row stays inactive, as format 1 kept them
    s = h5py.string_dtype(encoding="utf-8")
    with h5py.File(folder / "meta.h5", "w") as h5:
        h5.attrs.update(format="cvret-store", format_version=1, fingerprint=json.dumps(fp), feature_dtype=dt,
                        n_views=n, viewpoints=json.dumps(vps), categories=json.dumps(cats), problems="[]")
        f = h5.create_dataset("features", shape=(n, dim), maxshape=(None, dim), dtype=dt, chunks=(1, dim))
        f[0] = np.zeros(dim, dtype=dt)
        f[1:] = feats
        g = h5.create_group("views")
        for c in ("domain", "shape", "viewpoint", "path", "sha256"):
            g.create_dataset(c, data=[getattr(recs[0], c)] + [getattr(r, c) for r in recs], dtype=s)
        g.create_dataset("active", data=np.array([0] + [1] * len(recs), dtype="u1"))
    idx = faiss.IndexFlatL2(dim)
    idx.add(feats[:3].astype(np.float32))
    faiss.write_index(idx, str(folder / "npr.az000.faiss"))
    np.save(folder / "npr.az000.rows.npy", np.arange(1, 4))
    (folder / "indexes.json").write_text("{}")


def test_format1_is_read_as_it_is_and_upgraded(data, clean, tmp_path):
    old = tmp_path / "old"
    write_format1(old, clean)
    assert rankings(old) == rankings(clean)
    info = json.loads(run_cli(["info", old, "--json"]).stdout)
    assert "meta.h5" in info["layout"] and info["views"] == 54
    with IndexWriter(old) as w:  # the next writer converts it
        assert any("upgraded from format 1" in n for n in w.notes)
    assert not list(old.glob("*.faiss")) and not (old / "meta.h5").exists() and not (old / "indexes.json").exists()
    assert state(old) == state(clean)
    assert rankings(old) == rankings(clean)
    with FeatureStore(old) as st:
        assert min(r.row for r in st.records()) == 1  # row numbers survive the upgrade
        assert st.doc["next_row"] == 55


def test_feature_dtype_mismatch_is_one_line(index32, dataset):
    res = run_cli(["index", dataset, "--out", index32, *UNTRAINED, "--quiet", "--feature-dtype", "float16"],
                  ok=False)
    assert res.exit_code == 1 and "stores float32 features, not float16" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1


def test_failed_index_leaves_no_empty_folder(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = run_cli(["index", dataset, "--out", tmp_path / "new", "--quiet"], ok=False)  # openai weights: offline
    assert res.exit_code == 1 and not (tmp_path / "new").exists()
    with contextlib.suppress(FileNotFoundError):
        assert not any((tmp_path / "new").iterdir())
