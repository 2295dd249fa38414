"""The `cvret` command: a thin click layer over the library (parse, call, print).

Every expected failure is a CvretError and becomes one line on stderr with exit code 1;
a Ctrl-C during `cvret index` leaves the committed batches in place (exit code 130).
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
    """Turns CvretError into a one-line message instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CvretError as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            _fail("interrupted; what was committed is kept, run the same command again to resume", 130)


@click.group(cls=CvretGroup)
@click.version_option(__version__, prog_name="cvret")
def main():
    """cvret: retrieve 3D shapes from freehand sketches (CLIP RN101 layer-3 features + FAISS)."""


def encoder_options(f):
    f = click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="compute precision (auto: fastest that keeps rankings, see README)")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")(f)
    return f


@main.command("index")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="index folder to create or update")
@click.option("--pattern", "patterns", multiple=True,
              help="relative path pattern with {domain} {shape} {viewpoint} [{ext}] (repeatable); "
                   "default: the cvret layout {domain}/{shape}/{viewpoint}.{ext}")
@click.option("--default-domain", default="sketch", show_default=True,
              help="domain of views matched by a pattern without {domain}")
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
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--quiet", is_flag=True, help="no progress bars")
def index_cmd(dataset_dir, out, patterns, default_domain, domains, azimuths, elevation, weights, seed, layer, precision,
              device, batch_size, feature_dtype, strict, max_pixels, overwrite, prune, compress, compress_sample,
              as_json, quiet):
    """Embed every view of DATASET_DIR into an index folder (resumable: run again to continue)."""
    from .dataset import discover
    from .encoder import EncoderSpec
    from .indexer import build_index
    from .viewpoints import make_viewpoints, parse_azimuths

    vps = None
    if azimuths:
        try:
            vps = make_viewpoints(parse_azimuths(azimuths), elevation)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--azimuths")
    dom = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    ds = discover(dataset_dir, patterns=list(patterns) or None, domains=dom, viewpoints=vps,
                  default_domain=default_domain)
    for p in ds.problems[:20]:
        click.echo(f"warning: {p}", err=True)
    if len(ds.problems) > 20:
        click.echo(f"warning: ... and {len(ds.problems) - 20} more dataset problems", err=True)
    spec = EncoderSpec(weights=weights, layer=layer, seed=seed)
    if weights == "untrained" and not as_json:
        click.echo(f"note: untrained RN101 weights (seed {seed}): features are random projections, not CLIP's; "
                   "numbers from this index are not the paper's", err=True)
    rep = build_index(ds, out, spec, domains=dom, device=device, precision=precision, batch_size=batch_size,
                      feature_dtype=feature_dtype, strict=strict, max_pixels=max_pixels, overwrite=overwrite,
                      prune=prune, progress=not quiet, compress=compress, compress_sample=compress_sample)
    for path, msg in rep.failed:
        click.echo(f"skipped: {msg}", err=True)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(f"{out}: {rep.embedded} embedded, {rep.copied} copied from identical images, "
                   f"{rep.unchanged} unchanged, {len(rep.failed)} skipped "
                   f"({rep.seconds:.1f} s; {rep.views_per_second:.1f} views/s embedding)")


@main.command("query")
@click.argument("sketch", required=False, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path))
@click.option("--view", "views", multiple=True, metavar="VIEWPOINT=IMAGE",
              help="a sketch view with a known viewpoint (repeatable): shapes ranked by the mean over views")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--domain", default="npr", show_default=True, help="gallery domain (npr, rgb, ...)")
@click.option("--viewpoint", default=None, help="only this gallery viewpoint (per-view queries)")
@click.option("--pairs", is_flag=True, help="list (shape, viewpoint) pairs instead of one best viewpoint per shape")
@click.option("--weights", default=None, help="local weights file, when the index was built with one")
@click.option("--search", "mode", type=click.Choice(["exact", "compressed"]), default="exact", show_default=True,
              help="compressed: candidates from the PCA index (built with `cvret index --compress`), re-ranked exactly")
@click.option("--candidates", type=int, default=None, help="compressed search: candidates to re-rank (default max(100, 10k))")
@encoder_options
@click.option("--json", "as_json", is_flag=True, help="print hits as JSON")
def query_cmd(sketch, index_dir, views, k, domain, viewpoint, pairs, weights, mode, candidates, precision, device,
              as_json):
    """Rank shapes for SKETCH (or for several --view VIEWPOINT=IMAGE sketches)."""
    from .images import load_image
    from .search import open_engine

    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="-k")
    if (sketch is None) == (not views):
        raise click.UsageError("give either one SKETCH or one or more --view VIEWPOINT=IMAGE")
    engine = open_engine(index_dir, mode=mode, candidates=candidates, weights=weights, device=device,
                         precision=precision)
    excluded = 0
    if sketch is not None:
        hits = engine.query(load_image(sketch), domain=domain, viewpoint=viewpoint, k=k, per_shape=not pairs)
        query = {"sketch": str(sketch)}
    else:
        parsed = {}
        for item in views:
            if "=" not in item:
                raise click.BadParameter(f"{item!r} is not VIEWPOINT=IMAGE", param_hint="--view")
            vp, path = item.split("=", 1)
            parsed[vp.strip()] = load_image(path)
        hits, excluded = engine.query_views(parsed, domain=domain, k=k)
        query = {"views": dict(v.split("=", 1) for v in views)}
    if as_json:
        click.echo(json.dumps({"query": query, "index": str(index_dir), "domain": domain,
                               "weights": engine.index.fingerprint.get("weights"),
                               "excluded_shapes": excluded, "hits": [h.to_dict() for h in hits]},
                              indent=2, ensure_ascii=False))
        return
    click.echo(format_hits(hits))
    if excluded:
        click.echo(f"({excluded} shapes left out: they lack one of the query viewpoints)")


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
    from .index import ShapeIndex

    with ShapeIndex(index_dir, gpu="never") as si:
        s = si.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2, ensure_ascii=False))
        return
    fp = s["fingerprint"]
    click.echo(f"index:       {s['index']}")
    click.echo(f"shapes:      {s['shapes']}" + (f"  ({', '.join(f'{k}: {v}' for k, v in s['categories'].items())})"
                                               if s["categories"] else ""))
    click.echo(f"views:       {s['views']}  ({', '.join(f'{k}: {v}' for k, v in s['domains'].items())})")
    click.echo("viewpoints:  " + ", ".join(f"{v['name']} (az {v['azimuth']:g}, el {v['elevation']:g})"
                                           for v in s["viewpoints"]))
    click.echo(f"encoder:     {fp.get('model')} {fp.get('layer')} weights={fp.get('weights')} "
               f"input={fp.get('image_size')} precision={fp.get('precision')}")
    click.echo(f"features:    {s['feature_dim']} x {s['feature_dtype']}; layout {s['layout']}")
    click.echo(f"size:        {s['size_bytes'] / 1e6:.1f} MB on disk ({s['bytes_per_view'] / 1e3:.0f} kB per view)")
    if str(fp.get("weights", "")).startswith("untrained"):
        click.echo("note:        untrained weights: numbers from this index are not the paper's")
    if s["problems"]:
        click.echo(f"problems:    {len(s['problems'])} at the last build, e.g. {s['problems'][0]}")


@main.command("render")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="dataset folder to write")
@click.option("--viewpoints", "azimuths", default="0,30,75", show_default=True, help="camera azimuths in degrees")
@click.option("--elevation", type=float, default=10.0, show_default=True)
@click.option("--size", type=int, default=224, show_default=True, help="output size in pixels")
@click.option("--supersample", type=int, default=3, show_default=True, help="anti-aliasing factor")
@click.option("--line-width", type=float, default=1.25, show_default=True, help="NPR line width in output pixels")
@click.option("--crease-angle", type=float, default=134.43, show_default=True,
              help="Freestyle crease angle in degrees (edges sharper than this are drawn)")
@click.option("--domains", default="npr,rgb", show_default=True)
@click.option("--workers", type=int, default=None, help="processes (default: min(cores, 4))")
@click.option("--force", is_flag=True, help="render again even when outputs are up to date")
@click.option("--quiet", is_flag=True)
def render_cmd(sources, out, azimuths, elevation, size, supersample, line_width, crease_angle, domains, workers,
               force, quiet):
    """Render meshes (files or folders) into a dataset folder of npr and rgb views (resumable)."""
    from .render import RenderSettings, render_dataset
    from .viewpoints import make_viewpoints, parse_azimuths

    try:
        vps = make_viewpoints(parse_azimuths(azimuths), elevation)
        settings = RenderSettings(size=size, supersample=supersample, line_width=line_width,
                                  crease_angle=crease_angle)
    except ValueError as e:
        raise click.BadParameter(str(e))
    doms = tuple(d.strip() for d in domains.split(",") if d.strip())
    rep = render_dataset(list(sources) if len(sources) > 1 else sources[0], out, viewpoints=vps, settings=settings,
                         domains=doms, workers=workers, progress=not quiet, force=force)
    click.echo(rep.summary())
    if not rep.rendered and not rep.skipped:
        _fail(f"{out}: no mesh could be rendered")


@main.command("eval")
@click.option("--index", "index_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="index folder (repeatable: several indexes side by side)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="report folder")
@click.option("--pairs", default="sketch-npr,sketch-rgb,npr-rgb", show_default=True,
              help="domain pairs query-gallery, comma-separated")
@click.option("--objects", type=int, default=10, show_default=True, help="shapes in the Fig. 1 heatmaps")
@click.option("--study2-objects", type=int, default=100, show_default=True, help="objects averaged in Study 2")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory-mb", type=int, default=2048, show_default=True, help="memory budget for feature blocks")
@click.option("--device", default="auto", show_default=True, help="matrix products on auto, cpu or cuda")
@click.option("--trained-on", default=None,
              help="comma-separated categories a fine-tuned encoder was trained on (marked in the per-category table)")
@click.option("--json", "as_json", is_flag=True, help="print report.json to stdout")
@click.option("--quiet", is_flag=True)
def eval_cmd(index_dirs, out, pairs, objects, study2_objects, seed, memory_mb, device, trained_on, as_json, quiet):
    """The seed's Study 1 and Study 2 as retrieval evaluations: report.json, report.md, CSVs, figures."""
    from . import gemm
    from .index import ShapeIndex
    from .studies import evaluate, headline_table

    pair_list = []
    for item in pairs.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(parts):
            raise click.BadParameter(f"{item!r} is not DOMAIN-DOMAIN", param_hint="--pairs")
        pair_list.append(tuple(parts))
    names = [Path(d).name for d in index_dirs]
    if len(set(names)) != len(names):
        raise click.BadParameter("indexes must have distinct folder names (they label the report)")
    sources = [ShapeIndex(d, gpu="never") for d in index_dirs]
    try:
        with gemm.on(device):
            report = evaluate(sources, out, pairs=pair_list, objects=objects, seed=seed,
                              study2_objects=study2_objects, progress=not quiet and not as_json,
                              cvret_version=__version__, memory_mb=memory_mb,
                              trained_on=[c.strip() for c in (trained_on or "").split(",") if c.strip()])
    finally:
        for s in sources:
            s.close()
    if as_json:
        click.echo((Path(out) / "report.json").read_text(encoding="utf-8"))
        return
    click.echo(headline_table(report))
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
