"""The `cvret` command: a thin click layer over the library (parse, call, print).

Every expected failure is a CvretError and becomes one line on stderr with exit code 1; a
command-line usage mistake (unknown option, missing argument, options that do not go together)
is one line too, with click's exit code 2; a Ctrl-C during `cvret index` leaves the committed
batches in place (exit code 130).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import CvretError

WEIGHTS_HELP = ("'openai' (open_clip's download/cache), 'untrained' (random weights from --seed: tests and "
                "offline demos only, numbers are not the paper's), or a path to a local checkpoint")


def _fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


class CvretGroup(click.Group):
    """Turns CvretError (exit 1) and click's usage errors (exit 2) into one line instead of a traceback or
    click's three-line usage block."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "cvret"
            _fail(f"{where}: {e.format_message()} (see '{where} --help')", e.exit_code)
        except CvretError as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            _fail("interrupted; what was committed is kept, run the same command again to resume", 130)


@click.group(cls=CvretGroup, name="cvret")
@click.version_option(__version__, prog_name="cvret")
def main():
    """cvret: retrieve 3D shapes from freehand sketches (CLIP RN101 layer-3 features + FAISS)."""


def skip_final_collection():
    """At exit, freeze what is alive instead of letting the interpreter's last garbage collections walk it.

    After torch is imported those sweeps take 0.2-0.3 s of every short command's life, and the process is
    ending: nothing they could free matters. Registered with atexit, so an in-process caller (tests, a
    Python program calling `main`) keeps a normal collector until its own exit.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def encoder_options(f):
    f = click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="compute precision (auto: fastest that keeps rankings, see README)")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")(f)
    return f


@main.command("index")
@click.argument("dataset_dir", type=click.Path(path_type=Path), required=False)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="index folder to create or update")
@click.option("--pattern", "patterns", multiple=True,
              help="relative path pattern with {domain} {shape} {viewpoint} [{ext}] (repeatable); "
                   "default: the cvret layout {domain}/{shape}/{viewpoint}.{ext}")
@click.option("--preset", default=None, type=click.Choice(["amateursketch", "prosketch", "sketch2model", "shrec13",
                                                          "shrec14"]),
              help="read a public sketch dataset in place (expected trees: README, Dataset presets)")
@click.option("--views", "view_map", default=None, metavar="VIEW=VIEWPOINT,...",
              help="amateursketch/prosketch: file view token -> viewpoint, e.g. 0=az000,1=az030,2=az075 (the default)")
@click.option("--split", default="all", type=click.Choice(["train", "test", "all"]), show_default=True,
              help="shrec13/shrec14: which sketches")
@click.option("--sketch-viewpoints", default="nearest", type=click.Choice(["nearest", "own"]), show_default=True,
              help="sketch2model: snap each sketch to the nearest declared viewpoint (--azimuths, default the seed's), "
                   "or keep its own (for a gallery rendered with `cvret render --viewpoints-from`)")
@click.option("--default-domain", default="sketch", show_default=True,
              help="domain of views matched by a pattern without {domain} (and of preset sketches)")
@click.option("--domains", default=None, help="comma-separated domains to embed (default: all found)")
@click.option("--azimuths", default=None, help="declare viewpoints by azimuth, e.g. 0,30,75 (default: dataset.json)")
@click.option("--elevation", type=float, default=10.0, show_default=True)
@click.option("--weights", default="openai", show_default=True, help=WEIGHTS_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="seed of untrained weights")
@click.option("--layer", type=click.Choice(["layer1", "layer2", "layer3", "layer4"]), default="layer3",
              show_default=True, help="open_clip stage whose output is the feature (CLIPasso's 'layer 3' = layer2)")
@encoder_options
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--strict", is_flag=True, help="stop at the first unreadable view instead of skipping it")
@click.option("--max-pixels", type=int, default=None, help="largest image accepted (default 100,000,000)")
@click.option("--overwrite", is_flag=True, help="discard an existing index in --out and start again")
@click.option("--prune", is_flag=True, help="drop stored views whose files are no longer in the dataset")
@click.option("--compress", default=None, metavar="pca:R",
              help="also build a compressed candidate index (PCA codes of R numbers; queries re-rank exactly)")
@click.option("--compress-sample", type=int, default=2048, show_default=True, help="views sampled to fit the PCA")
@click.option("--commit-every", type=click.IntRange(min=1), default=256, show_default=True,
              help="views per committed segment (an interrupted run loses at most this many)")
@click.option("--no-verify", is_flag=True, help="skip reading every stored view's checksum before updating")
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="run the CPU encoder compiled ahead of time (compiled once per machine, about "
              "a minute, then cached); auto: for 2,000+ views to embed, or when already compiled")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="spread shapes over K shard folders by a stable hash of the shape id")
@click.option("--shard", "only_shards", type=int, multiple=True,
              help="with --shards: build only this shard (repeatable), e.g. one per machine")
@click.option("--merge", "merge_from", multiple=True, type=click.Path(path_type=Path),
              help="put the shard folders of sharded indexes built elsewhere into --out (repeatable; no embedding)")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="with --shards: embed the shards on a Ray cluster (pip install -e '.[cluster]')")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="with --ray: embedding actors (default: one per GPU, else one per 2 CPUs)")
@click.option("--normalize", is_flag=True,
              help="frame every view to its domain and viewpoint's measured object extent, as sketch queries are "
                   "(off: renders are already framed)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--quiet", is_flag=True, help="no progress bars")
def index_cmd(dataset_dir, out, patterns, preset, view_map, split, sketch_viewpoints, default_domain, domains, azimuths,
              elevation, weights, seed, layer, precision, device, batch_size, feature_dtype, strict, max_pixels,
              overwrite, prune, compress, compress_sample, commit_every, no_verify, compile_mode, shards, only_shards,
              merge_from, ray_address, workers, normalize, as_json, quiet):
    """Embed every view of DATASET_DIR into an index folder (resumable: run again to continue)."""
    from .dataset import discover
    from .indexer import build_index
    from .shards import build_sharded, is_sharded, merge_shards, read_shards
    from .viewpoints import make_viewpoints, parse_azimuths

    if merge_from:
        if dataset_dir is not None:
            raise click.UsageError("--merge combines built shards; give no DATASET_DIR with it")
        added = merge_shards(list(merge_from), out)
        click.echo(f"{out}: merged shards {', '.join(map(str, added)) or '(none new)'} of {read_shards(out)}")
        return
    if dataset_dir is None:
        raise click.UsageError("missing DATASET_DIR")
    if only_shards and not shards:
        raise click.UsageError("--shard needs --shards K")
    if ray_address and not shards and not is_sharded(out):
        raise click.UsageError("--ray builds a sharded index: give --shards K")
    if shards is None and is_sharded(out):
        shards = read_shards(out)

    vps = None
    if azimuths:
        try:
            vps = make_viewpoints(parse_azimuths(azimuths), elevation)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--azimuths")
    dom = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    if preset:
        from .presets import read_preset

        if patterns:
            raise click.UsageError("give either --preset or --pattern, not both")
        ds = read_preset(preset, dataset_dir, views=view_map, domain=default_domain, split=split, elevation=elevation,
                         viewpoints="own" if sketch_viewpoints == "own" else vps)
    else:
        if view_map:
            raise click.UsageError("--views needs --preset amateursketch or prosketch")
        ds = discover(dataset_dir, patterns=list(patterns) or None, domains=dom, viewpoints=vps,
                      default_domain=default_domain)
    for p in ds.problems[:20]:
        click.echo(f"warning: {p}", err=True)
    if len(ds.problems) > 20:
        click.echo(f"warning: ... and {len(ds.problems) - 20} more dataset problems", err=True)
    scan = None
    if not shards and not ray_address:  # hash the files and measure the extents while torch loads
        from .prescan import start_scan

        chosen = [v for v in ds.views if not dom or v.domain in dom]
        scan = start_scan(chosen, max_pixels, extents=True) if chosen else None
    from . import encoder  # noqa: F401 (imports torch, 1.5-2 s, while the child scans: not before it forks)
    from .spec import EncoderSpec

    skip_final_collection()

    spec = EncoderSpec(weights=weights, layer=layer, seed=seed)
    if weights == "untrained" and not as_json:
        click.echo(f"note: untrained RN101 weights (seed {seed}): features are random projections, not CLIP's; "
                   "numbers from this index are not the paper's", err=True)
    options = dict(domains=dom, device=device, precision=precision, batch_size=batch_size,
                   feature_dtype=feature_dtype, strict=strict, max_pixels=max_pixels, overwrite=overwrite,
                   prune=prune, progress=not quiet, compress=compress, compress_sample=compress_sample,
                   commit_views=commit_every, verify=not no_verify, compile=compile_mode, normalize=normalize)
    if shards and ray_address:
        from .cluster import build_on_ray
        from .indexer import IndexReport

        raw = build_on_ray(ds, out, spec, shards, ray_address, workers=workers, shards=list(only_shards) or None,
                           **options)
        reports = {k: IndexReport(index=str(out), embedded=r.get("embedded", 0), copied=r.get("copied", 0),
                                  unchanged=r.get("unchanged", 0), seconds=r.get("seconds", 0.0),
                                  embed_seconds=r.get("embedded", 0) / r["views_per_second"]
                                  if r.get("views_per_second") else 0.0,
                                  notes=r.get("notes", []), repaired=r.get("repaired", 0),
                                  failed=[(f["path"], f["error"]) for f in r.get("failed", [])])
                   for k, r in sorted(raw.items())}
    elif shards:
        reports = build_sharded(ds, out, spec, shards, list(only_shards) or None, **options)
    else:
        reports = {None: build_index(ds, out, spec, scan=scan, **options)}
    for rep in reports.values():
        for note in rep.notes:
            click.echo(f"note: {note}", err=True)
        for path, msg in rep.failed:
            click.echo(f"skipped: {msg}", err=True)
    if as_json:
        doc = {str(k): r.to_dict() for k, r in reports.items()} if shards else reports[None].to_dict()
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for k, rep in reports.items():
        click.echo(f"{out}{'' if k is None else f' shard {k}'}: {rep.embedded} embedded, {rep.copied} copied from "
                   f"identical images, {rep.unchanged} unchanged, {len(rep.failed)} skipped"
                   + (f", {rep.repaired} damaged views re-embedded" if rep.repaired else "") + " "
                   f"({rep.seconds:.1f} s; {rep.views_per_second:.1f} views/s embedding)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def sketch_files(sources) -> list[Path]:
    """SKETCH arguments → image files: files as given, folders expanded to their images (sorted)."""
    from .errors import ImageError

    files = []
    for src in sources:
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{src}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(src)
    return files


@main.command("query")
@click.argument("sketches", nargs=-1, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path))
@click.option("--view", "views", multiple=True, metavar="VIEWPOINT=IMAGE",
              help="a sketch view with a known viewpoint (repeatable): shapes ranked by the mean over views")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--domain", default="npr", show_default=True, help="gallery domain (npr, rgb, ...)")
@click.option("--viewpoint", default=None, help="only this gallery viewpoint (per-view queries)")
@click.option("--pairs", is_flag=True, help="list (shape, viewpoint) pairs instead of one best viewpoint per shape")
@click.option("--weights", default=None,
              help="the local weights file the index was built with, needed only when it moved from the path the "
                   "index recorded (default: the index's own weights)")
@click.option("--search", "mode", type=click.Choice(["exact", "compressed"]), default="exact", show_default=True,
              help="compressed: candidates from the PCA index (built with `cvret index --compress`), re-ranked exactly")
@click.option("--candidates", type=int, default=None, help="compressed search: candidates to re-rank (default max(100, 10k))")
@click.option("--batch-size", type=int, default=16, show_default=True, help="sketches embedded per forward pass")
@click.option("--max-pixels", type=int, default=None, help="largest sketch image accepted (default 100,000,000)")
@encoder_options
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="sharded index: search its shards in actors of a Ray cluster")
@click.option("--no-normalize", is_flag=True,
              help="embed sketches as drawn (no inversion, crop or scaling to the gallery's object extent)")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True,
              help="what runs the encoder: onnx (onnxruntime, fp32 on the CPU, no torch import: a cold query starts "
                   "in about a second), torch, or auto (onnx for up to 32 sketches when its model is cached)")
@click.option("--json", "as_json", is_flag=True,
              help="print hits as JSON (a list of rankings when several sketches or a folder are given)")
def query_cmd(sketches, index_dir, views, k, domain, viewpoint, pairs, weights, mode, candidates, batch_size,
              max_pixels, precision, device, ray_address, no_normalize, backend, as_json):
    """Rank shapes for each SKETCH (image files or folders of them), or for several --view VIEWPOINT=IMAGE sketches.

    The model is built once for all sketches; each gets its own ranking.
    """
    from .portable import ONNX_MAX_IMAGES
    from .search import open_engine, query_result

    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="-k")
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    if bool(sketches) == bool(views):
        raise click.UsageError("give either SKETCH files/folders or one or more --view VIEWPOINT=IMAGE")
    if views and (pairs or viewpoint):
        raise click.UsageError(f"{'--pairs' if pairs else '--viewpoint'} does nothing with --view (a --view query "
                               "ranks shapes by the mean over the given viewpoints); leave it out")
    files = sketch_files(sketches)
    if backend == "auto" and len(files) + len(views) > ONNX_MAX_IMAGES:
        backend = "torch"  # a long job: torch's bf16 kernels pay back its import
    engine = open_engine(index_dir, ray=ray_address, mode=mode, candidates=candidates, weights=weights, device=device,
                         precision=precision, normalize=not no_normalize, max_pixels=max_pixels, backend=backend)
    if views:
        parsed, named = {}, {}
        for item in views:
            if "=" not in item:
                raise click.BadParameter(f"{item!r} is not VIEWPOINT=IMAGE", param_hint="--view")
            vp, path = item.split("=", 1)
            parsed[vp.strip()] = Path(path)  # framed (normalised) by query_views
            named[vp.strip()] = path
        hits, excluded = engine.query_views(parsed, domain=domain, k=k)
        results = [(query_result(engine, str(index_dir), {"views": named}, domain, hits, excluded), hits)]
    else:
        results = []
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            feats = engine.embed([engine.prepare(p, domain, viewpoint) for p in chunk])
            for path, feat in zip(chunk, feats):
                hits = engine.query_features(feat, domain=domain, viewpoint=viewpoint, k=k, per_shape=not pairs)
                results.append((query_result(engine, str(index_dir), {"sketch": str(path)}, domain, hits), hits))
    as_list = len(sketches) > 1 or any(p.is_dir() for p in sketches)
    for note in engine.calibration.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        data = [r for r, _ in results] if as_list else results[0][0]
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_results(results, as_list)
    if backend == "auto" and engine.save_onnx_model():
        click.echo("note: wrote the ONNX model of these weights to the cvret cache: later queries start without torch",
                   err=True)


def print_results(results: list, as_list: bool):
    """The rankings as `cvret query` prints them without --json."""
    for i, (res, hits) in enumerate(results):
        if as_list:
            click.echo(("\n" if i else "") + f"== {res['query']['sketch']}")
        click.echo(format_hits(hits))
        if res["warning"]:
            click.echo(f"warning: {res['warning']}")
        if res["excluded_shapes"]:
            click.echo(f"({res['excluded_shapes']} shapes left out: they lack one of the query viewpoints)")
    click.echo(weights_line(results[0][0]["weights"]))


def weights_line(weights: str | None) -> str:
    """The weights a ranking came from, as `query --json` names them (untrained ones said to be so)."""
    from .fingerprint import Fingerprint

    untrained = Fingerprint(weights=weights).is_untrained
    return f"weights: {weights}" + (" (untrained: not the paper's numbers)" if untrained else "")


def format_hits(hits) -> str:
    rows = [("rank", "shape", "category", "viewpoint", "domain", "distance", "path")]
    rows += [(str(h.rank), h.shape, h.category or "-", h.viewpoint, h.domain, f"{h.distance:.6g}", h.path)
             for h in hits]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


@main.command("info")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info_cmd(index_dir, as_json):
    """What an index holds: shapes, domains, viewpoints, encoder fingerprint, size on disk."""
    from .fingerprint import Fingerprint
    from .index import ShapeIndex

    with ShapeIndex(index_dir, gpu="never") as si:
        s = si.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2, ensure_ascii=False))
        return
    fp = Fingerprint.from_dict(s["fingerprint"])
    click.echo(f"index:       {s['index']}")
    click.echo(f"shapes:      {s['shapes']}" + (f"  ({', '.join(f'{k}: {v}' for k, v in s['categories'].items())})"
                                               if s["categories"] else ""))
    click.echo(f"views:       {s['views']}  ({', '.join(f'{k}: {v}' for k, v in s['domains'].items())})")
    click.echo("viewpoints:  " + ", ".join(f"{v['name']} (az {v['azimuth']:g}, el {v['elevation']:g})"
                                           for v in s["viewpoints"]))
    click.echo(f"encoder:     {fp.model} {fp.layer} weights={fp.weights} input={fp.image_size} precision={fp.precision}")
    click.echo(f"features:    {s['feature_dim']} x {s['feature_dtype']}; layout {s['layout']}, "
               f"generation {s['generation']}")
    click.echo(f"size:        {s['size_bytes'] / 1e6:.1f} MB on disk ({s['bytes_per_view'] / 1e3:.0f} kB per view)")
    if fp.is_untrained:
        click.echo("note:        untrained weights: numbers from this index are not the paper's")
    if s["problems"]:
        click.echo(f"problems:    {len(s['problems'])} at the last build, e.g. {s['problems'][0]}")


@main.command("verify")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def verify_cmd(index_dir, as_json, quiet):
    """Read every stored view and check its checksum; exit 1 when any is damaged."""
    from .shards import ShardedIndex, is_sharded
    from .store import open_store

    store = ShardedIndex(index_dir, gpu="never").store if is_sharded(index_dir) else open_store(index_dir)
    try:
        bar = None
        if not quiet and not as_json:
            from tqdm import tqdm
            bar = tqdm(total=store.n_views, desc="verify", unit="view", leave=False)
        bad = store.verify(progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        n, layout = store.n_views, store.layout
    finally:
        store.close()
    result = {"index": str(index_dir), "views": n, "layout": layout,
              "damaged": [{"row": r.row, "shape": r.shape, "domain": r.domain, "viewpoint": r.viewpoint,
                           "path": r.path, "segment": r.segment} for r in bad]}
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        for r in bad:
            click.echo(f"damaged: shape {r.shape}, {r.domain} {r.viewpoint} (row {r.row}, segment {r.segment})")
        click.echo(f"{index_dir}: {n} views checked, {len(bad)} damaged"
                   + ("; run `cvret index` on the dataset to re-embed them" if bad else ""))
    if bad:
        sys.exit(1)


@main.command("serve")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback needs --token (or --no-auth)")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", envvar="CVRET_TOKEN", default=None,
              help="bearer token every /api call must carry (also from $CVRET_TOKEN, which keeps it out of `ps`)")
@click.option("--no-auth", is_flag=True, help="serve a non-loopback --host without a token (you take the risk)")
@click.option("--open-browser", is_flag=True, help="open the draw-to-search page once the server listens")
@click.option("--weights", default=None, help="local weights file, when the index was built with one")
@encoder_options
@click.option("--max-body-mb", type=float, default=10.0, show_default=True, help="largest request body (413 above)")
@click.option("--max-pixels", type=int, default=16_000_000, show_default=True, help="largest uploaded image")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="requests waiting for the encoder before new ones get 503")
@click.option("--max-batch", type=int, default=8, show_default=True, help="sketches per encoder pass")
@click.option("--batch-window-ms", type=float, default=5.0, show_default=True,
              help="how long a lone request waits for others to share its encoder pass")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True, help="per-request limit (s)")
@click.option("--cors-origin", "cors_origins", multiple=True, help="allow this browser origin (repeatable; none by default)")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="sharded index: hold each shard in an actor of a Ray cluster and fan queries out to them")
def serve_cmd(index_dir, host, port, token, no_auth, open_browser, weights, precision, device, max_body_mb, max_pixels,
              max_queue, max_batch, batch_window_ms, timeout_s, cors_origins, ray_address):
    """Serve an index over HTTP: the draw-to-search page at /, the JSON API under /api (docs at /docs)."""
    import logging

    from .errors import ConfigError
    from .serve import ServeOptions, check_bind, serve

    check_bind(host, token, no_auth)  # before the minutes of model loading
    for name, value in (("--max-body-mb", max_body_mb), ("--max-pixels", max_pixels), ("--max-queue", max_queue),
                        ("--max-batch", max_batch), ("--timeout", timeout_s)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if batch_window_ms < 0:
        raise ConfigError(f"--batch-window-ms must be 0 or more, got {batch_window_ms}")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for name in ("multipart", "python_multipart"):  # a warning per malformed upload; our 400 line says it
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, level in (("cvret.serve", logging.INFO), ("uvicorn.error", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
    options = ServeOptions(max_body_bytes=int(max_body_mb * 1_000_000), max_pixels=max_pixels, max_queue=max_queue,
                           max_batch=max_batch, batch_window_ms=batch_window_ms, timeout_s=timeout_s, token=token,
                           cors_origins=list(cors_origins))
    serve(index_dir, host=host, port=port, options=options, no_auth=no_auth, open_browser=open_browser,
          weights=weights, device=device, precision=precision, say=lambda m: click.echo(m, err=True), ray=ray_address)


@main.command("render")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="dataset folder to write")
@click.option("--viewpoints", "azimuths", default="0,30,75", show_default=True, help="camera azimuths in degrees")
@click.option("--elevation", type=float, default=10.0, show_default=True)
@click.option("--size", type=int, default=224, show_default=True, help="output size in pixels")
@click.option("--supersample", type=int, default=3, show_default=True, help="anti-aliasing factor")
@click.option("--line-width", type=float, default=1.25, show_default=True,
              help="NPR line width in output pixels (above 0)")
@click.option("--crease-angle", type=float, default=134.43, show_default=True,
              help="Freestyle crease angle in degrees (edges sharper than this are drawn)")
@click.option("--line-tone", type=click.Choice(["freestyle", "flat"]), default="freestyle", show_default=True,
              help="freestyle: anti-aliased coverage composited in linear light, stored sRGB (Blender's look); "
                   "flat: 8-bit box filter (darker, cvret's first look)")
@click.option("--domains", default="npr,rgb", show_default=True)
@click.option("--rgb-colors", type=click.Choice(["mesh", "uniform"]), default="mesh", show_default=True,
              help="mesh: the file's face/vertex/texture colours (light grey where it has none or its texture is "
                   "missing); uniform: one light grey material for every mesh")
@click.option("--convention", type=click.Choice(["shapenet-v2", "shapenet-v1", "z-up"]), default=None,
              help="where the mesh files put the object's front and up: shapenet-v2 (the default; a --preset sets "
                   "its own) = front -Z, up +Y; shapenet-v1 = front +X, up +Y; z-up = front -Y, up +Z")
@click.option("--front", default=None, metavar="AXIS", help="the object's front in the files (+x,-x,+y,-y,+z,-z); "
                                                            "overrides --convention")
@click.option("--up", default=None, metavar="AXIS", help="the object's up in the files; overrides --convention")
@click.option("--azimuth-sign", type=click.Choice(["+1", "-1"]), default="+1", show_default=True,
              help="+1: increasing azimuth moves the camera to the object's left; -1: to its right")
@click.option("--preset", default=None, type=click.Choice(["shapenet-v1", "shapenet-v2", "shrec13", "shrec14"]),
              help="read a public mesh tree in place (shape ids, categories and, for ShapeNet, the convention)")
@click.option("--only", "only", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="a text file of shape ids (one per line): render only these (e.g. the shapes that have sketches)")
@click.option("--viewpoints-from", "viewpoints_from", default=None, type=click.Path(path_type=Path),
              help="a sketch2model tree: render each shape at its sketch's own viewpoint (view.txt)")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="processes, one mesh each (default: one per 4 cores, 1 to 4: see README)")
@click.option("--force", is_flag=True, help="render again even when outputs are up to date")
@click.option("--quiet", is_flag=True)
def render_cmd(sources, out, azimuths, elevation, size, supersample, line_width, crease_angle, line_tone, domains,
               rgb_colors, convention, front, up, azimuth_sign, preset, only, viewpoints_from, workers, force, quiet):
    """Render meshes (files or folders) into a dataset folder of npr and rgb views (resumable)."""
    from .render import RenderSettings, render_dataset
    from .render.orientation import resolve
    from .viewpoints import make_viewpoints, parse_azimuths

    tree = None
    if preset:
        from .presets import read_mesh_preset

        if len(sources) != 1:
            raise click.UsageError("--preset reads one tree: give its root folder once")
        tree = read_mesh_preset(preset, sources[0])
        for p in tree.problems:
            click.echo(f"warning: {p}", err=True)
        if convention is None and not front and not up:
            convention = tree.convention
    front, up = resolve(convention, front, up)
    try:
        vps = make_viewpoints(parse_azimuths(azimuths), elevation)
        settings = RenderSettings(size=size, supersample=supersample, line_width=line_width,
                                  crease_angle=crease_angle, line_tone=line_tone, front=front, up=up,
                                  azimuth_sign=int(azimuth_sign), rgb_colors=rgb_colors)
    except ValueError as e:
        raise click.BadParameter(str(e))
    doms = tuple(d.strip() for d in domains.split(",") if d.strip())
    files = tree.files if tree else None
    if only is not None:
        from .errors import ConfigError
        from .render import find_mesh_files

        try:
            wanted = [ln.strip() for ln in only.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{only}: cannot read the --only list ({e})") from None
        pool = files if files is not None else find_mesh_files(list(sources) if len(sources) > 1 else sources[0])
        files = [(p, sid) for p, sid in pool if sid in set(wanted)]
        absent = sorted(set(wanted) - {sid for _, sid in files})
        if absent:
            click.echo(f"warning: {only}: {len(absent)} ids have no mesh, e.g. {', '.join(absent[:3])}", err=True)
    own = None
    if viewpoints_from is not None:
        from .presets import sketch2model_viewpoints

        own = {sid: [vp] for sid, vp in sketch2model_viewpoints(viewpoints_from).items()}
    rep = render_dataset(list(sources) if len(sources) > 1 else sources[0], out, viewpoints=vps, settings=settings,
                         domains=doms, workers=workers, progress=not quiet, force=force,
                         shape_files=files, categories=tree.categories if tree else None,
                         viewpoints_for=own)
    click.echo(rep.summary())
    if not rep.rendered and not rep.skipped:
        _fail(f"{out}: no mesh could be rendered")


@main.command("eval")
@click.option("--index", "index_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="index folder (repeatable: several indexes side by side)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="report folder")
@click.option("--pairs", default="sketch-npr,sketch-rgb,npr-rgb", show_default=True,
              help="domain pairs query-gallery, comma-separated")
@click.option("--objects", type=int, default=10, show_default=True,
              help="shapes in the Fig. 1 heatmaps (at most the shapes of a pair: more is lowered, with a note)")
@click.option("--study2-objects", type=int, default=100, show_default=True, help="objects averaged in Study 2")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory-mb", type=int, default=2048, show_default=True, help="memory budget for feature blocks")
@click.option("--device", default="auto", show_default=True, help="matrix products on auto, cpu or cuda")
@click.option("--relevance", type=click.Choice(["shape", "category"]), default=None,
              help="shape (default): the seed's studies, the same shape is the right answer; category: SHREC "
                   "metrics (NN, FT, ST, E, DCG, mAP, PR curve), any shape of the query's category is relevant")
@click.option("--preset", default=None, type=click.Choice(["amateursketch", "prosketch", "sketch2model", "shrec13",
                                                          "shrec14"]),
              help="the dataset's protocol: shrec13/shrec14 evaluate with --relevance category, the others with shape")
@click.option("--trained-on", default=None,
              help="comma-separated categories a fine-tuned encoder was trained on (marked in the per-category table)")
@click.option("--json", "as_json", is_flag=True, help="print report.json to stdout")
@click.option("--quiet", is_flag=True)
def eval_cmd(index_dirs, out, pairs, objects, study2_objects, seed, memory_mb, device, relevance, preset, trained_on,
             as_json, quiet):
    """The seed's Study 1 and Study 2 as retrieval evaluations (or SHREC category metrics): report.json,
    report.md, CSVs, figures."""
    from . import gemm
    from .index import ShapeIndex
    from .studies import evaluate, headline_table

    if relevance is None:
        relevance = "category" if preset in ("shrec13", "shrec14") else "shape"

    pair_list = []
    for item in pairs.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(parts):
            raise click.BadParameter(f"{item!r} is not DOMAIN-DOMAIN", param_hint="--pairs")
        pair_list.append(tuple(parts))
    names = [Path(d).name for d in index_dirs]
    if len(set(names)) != len(names):
        raise click.BadParameter("indexes must have distinct folder names (they label the report)")
    matmul_device = gemm.resolve(device)
    sources = [ShapeIndex(d, gpu="never") for d in index_dirs]
    try:
        if relevance == "category":
            from .shrec import evaluate_category, headline_table as category_table

            report = evaluate_category(sources, out, pairs=pair_list, memory_mb=memory_mb, device=matmul_device,
                                       cvret_version=__version__, progress=not quiet and not as_json)
        else:
            report = evaluate(sources, out, pairs=pair_list, objects=objects, seed=seed,
                              study2_objects=study2_objects, progress=not quiet and not as_json,
                              cvret_version=__version__, memory_mb=memory_mb, device=matmul_device,
                              trained_on=[c.strip() for c in (trained_on or "").split(",") if c.strip()])
    finally:
        for s in sources:
            s.close()
    for note in report.get("notes") or []:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo((Path(out) / "report.json").read_text(encoding="utf-8"))
        return
    click.echo(category_table(report) if relevance == "category" else headline_table(report))
    click.echo(f"report: {Path(out) / 'report.md'}")


def _csv(text: str | None) -> tuple:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


@main.command("finetune")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="weights file to write (a complete RN101 visual state dict); <out>.json gets the report")
@click.option("--from", "base", default="openai", show_default=True, help="starting weights: " + WEIGHTS_HELP)
@click.option("--weights-seed", type=int, default=0, show_default=True, help="seed of --from untrained")
@click.option("--seed", type=int, default=0, show_default=True, help="split, batch order, sketch styles and seeds")
@click.option("--train-categories", default=None, help="comma-separated categories to train on (others held out)")
@click.option("--train-shapes", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="file with one training shape id per line (added to --train-categories)")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="fraction of the training shapes kept for validation")
@click.option("--positives", default="npr", show_default=True, help="positive domains: npr or npr,rgb")
@click.option("--real-sketches", is_flag=True, help="also use the dataset's sketches of training shapes as anchors")
@click.option("--styles", default="0.15:0.9", show_default=True, help="synthetic sketch style range MIN:MAX in [0, 1]")
@click.option("--loss", type=click.Choice(["infonce", "triplet"]), default="infonce", show_default=True)
@click.option("--temperature", type=float, default=None, help="InfoNCE τ, absolute (default: 0.1 × each batch's mean negative distance)")
@click.option("--margin", type=float, default=None, help="triplet margin, absolute (default: 0.1 × each batch's mean negative distance)")
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--layer", type=click.Choice(["layer1", "layer2", "layer3", "layer4"]), default="layer3",
              show_default=True, help="feature layer whose view distance is trained")
@click.option("--train-stages", default="layer3", show_default=True,
              help="comma-separated stages that learn (the rest, and every batch norm, stay frozen)")
@click.option("--image-size", type=int, default=224, show_default=True,
              help="training input size (224 = what cvret index uses; smaller only for quick tests)")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu or cuda (cuda trains with bf16 autocast; bit-exact resume is promised on CPU fp32)")
@click.option("--no-amp", is_flag=True, help="full fp32 on CUDA too")
@click.option("--resume", is_flag=True, help="continue after the last finished epoch (<out>.resume.pt)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--quiet", is_flag=True, help="no progress bars")
def finetune_cmd(dataset_dir, out, base, weights_seed, seed, train_categories, train_shapes, val_fraction, positives,
                 real_sketches, styles, loss, temperature, margin, lr, weight_decay, epochs, batch_size, layer,
                 train_stages, image_size, device, no_amp, resume, as_json, quiet):
    """Fine-tune the encoder contrastively on synthetic sketches of some categories (the paper's protocol)."""
    from .dataset import discover
    from .errors import ConfigError, DatasetError
    from .finetune import FinetuneOptions, finetune

    try:
        lo, hi = (float(v) for v in styles.split(":"))
    except ValueError:
        raise ConfigError(f"--styles {styles!r}: expected MIN:MAX, e.g. 0.15:0.9") from None
    shapes: tuple = ()
    if train_shapes is not None:
        try:
            shapes = tuple(ln.strip() for ln in train_shapes.read_text(encoding="utf-8").splitlines() if ln.strip())
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{train_shapes}: cannot read the training shape list ({e})") from None
        if not shapes:
            raise DatasetError(f"{train_shapes}: no shape ids in the file")
    opts = FinetuneOptions(base=base, weights_seed=weights_seed, seed=seed, layer=layer, image_size=image_size,
                           train_categories=_csv(train_categories), train_shapes=shapes, val_fraction=val_fraction,
                           positives=_csv(positives), real_sketches=real_sketches, style_min=lo, style_max=hi,
                           loss=loss, temperature=temperature, margin=margin, lr=lr, weight_decay=weight_decay,
                           epochs=epochs, batch_size=batch_size, train_stages=_csv(train_stages), device=device,
                           amp=not no_amp)
    opts.check()
    if base == "untrained" and not as_json:
        click.echo(f"note: starting from untrained RN101 weights (seed {weights_seed}); numbers are not the paper's",
                   err=True)
    ds = discover(dataset_dir)
    res = finetune(ds, out, opts, resume=resume, progress=not quiet and not as_json,
                   log=(lambda m: None) if as_json else click.echo)
    if as_json:
        click.echo(Path(res.report).read_text(encoding="utf-8"))
    else:
        click.echo(f"{res.weights}: fine-tuned weights ({res.seconds:.1f} s); report {res.report}")


@main.command("demo")
@click.option("--out", "out", default="demo_out", show_default=True, type=click.Path(path_type=Path))
@click.option("--small", is_flag=True, help="10 shapes instead of 160 (seconds instead of minutes)")
@click.option("--weights", default="auto", show_default=True,
              help="auto (openai when available, else untrained with a note), or as for `cvret index`")
@click.option("--seed", type=int, default=0, show_default=True, help="data seed and untrained-weights seed")
@click.option("--style", default="medium", show_default=True, help="sketch style: clean, medium, abstract or 0..1")
@encoder_options
@click.option("--workers", type=int, default=None, help="processes for data generation")
@click.option("--quiet", is_flag=True, help="no progress bars")
def demo_cmd(out, small, weights, seed, style, precision, device, workers, quiet):
    """Generate demo shapes and sketches, index them, query, and run the studies (offline)."""
    from .demo import run_demo

    run_demo(out, small=small, weights=weights, seed=seed, style=style, device=device, precision=precision,
             workers=workers, progress=not quiet, log=click.echo)


if __name__ == "__main__":
    main()
