"""Contrastive fine-tuning of the RN101 trunk on the view distance itself (the paper's training side).

The seed's main paper fine-tunes the pretrained encoder on one shape class with synthetic
sketches in several styles and measures retrieval on the *other* classes (zero-shot). Here:

* **pairs**: for a training shape and viewpoint, the anchor is a synthetic sketch drawn on the
  fly by :func:`retrieval.synth.sketchify` from the shape's visible NPR strokes, in a style
  sampled from a range and with a seed derived from (seed, epoch, shape, viewpoint), so no
  sketch is seen twice and the dataset's own `sketch` domain (the evaluation sketches) is never
  read unless `real_sketches` asks for those of *training* shapes; positives are the NPR view
  and optionally the RGB view; the other shapes of the batch are the negatives;
* **loss**: symmetric InfoNCE with similarity −d(x, y)/τ, d the seed's view distance (mean of
  squared differences over the layer's features), so training optimises what retrieval ranks
  by; a triplet-margin loss on the same d for comparison;
* **model**: the encoder's own weights resolution (:func:`retrieval.encoder.build_visual`),
  unfolded and in fp32; only `train_stages` get gradients, batch norms stay in eval mode;
* **output**: a complete RN101 visual state dict that `cvret index --weights PATH` loads as it
  is, plus `<out>.json` (options, base identity, split, per-epoch loss and validation acc@1);
  `<out>.resume.pt` after each epoch lets `resume=True` finish with bit-equal weights (CPU fp32).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, read_dataset_json
from .encoder import LAYERS, EncoderSpec, Trunk, build_visual, resolve_device
from .errors import ConfigError, DatasetError
from .fsio import atomic_path, atomic_write_text
from .images import content_sha256, load_image, preprocess_array

FINETUNE_VERSION = "cvret-finetune-1"
LOSSES = ("infonce", "triplet")
POSITIVE_DOMAINS = ("npr", "rgb")


@dataclass
class FinetuneOptions:
    """Every knob of a run; all of it is written to `<out>.json` and must match on resume."""
    base: str = "openai"                 # weights to start from: openai, untrained, or a checkpoint path
    weights_seed: int = 0                # seed of untrained base weights
    seed: int = 0                        # split, batch order, sketch styles and seeds
    layer: str = "layer3"
    image_size: int = 224
    train_categories: tuple = ()
    train_shapes: tuple = ()             # explicit shape ids (from --train-shapes FILE)
    val_fraction: float = 0.1
    positives: tuple = ("npr",)
    real_sketches: bool = False          # also use the dataset's sketches of *training* shapes as anchors
    style_min: float = 0.15              # synthetic sketch style range (0 clean .. 1 abstract)
    style_max: float = 0.9
    loss: str = "infonce"
    temperature: float | None = None     # None: 0.1 × the batch's mean negative distance (scale-free)
    margin: float | None = None          # triplet; None: 0.1 × the batch's mean negative distance
    lr: float = 1e-5
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 8
    train_stages: tuple = ("layer3",)
    device: str = "auto"                 # cuda when present, else cpu (bit-exact resume is a CPU fp32 promise)
    amp: bool = True                     # mixed precision (bf16 autocast) on CUDA; CPU always fp32

    def check(self):
        if self.layer not in LAYERS:
            raise ConfigError(f"unknown layer {self.layer!r}; choose one of {', '.join(LAYERS)}")
        bad = [s for s in self.train_stages if s not in LAYERS]
        if bad or not self.train_stages:
            raise ConfigError(f"--train-stages: unknown stage(s) {bad or '(none)'}; choose from {', '.join(LAYERS)}")
        beyond = [s for s in self.train_stages if LAYERS.index(s) > LAYERS.index(self.layer)]
        if beyond:
            raise ConfigError(f"--train-stages {','.join(beyond)} come after the feature layer {self.layer}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        bad = [d for d in self.positives if d not in POSITIVE_DOMAINS]
        if bad or not self.positives:
            raise ConfigError(f"--positives: unknown domain(s) {bad or '(none)'}; use npr and/or rgb")
        if not 0.0 <= self.style_min <= self.style_max <= 1.0:
            raise ConfigError(f"sketch style range must satisfy 0 <= min <= max <= 1, got {self.style_min}:{self.style_max}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2: the other shapes of a batch are the negatives")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        for name in ("temperature", "margin"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"--{name} must be > 0, got {v}")
        if not self.train_categories and not self.train_shapes:
            raise ConfigError("choose what to train on with --train-categories and/or --train-shapes; "
                              "every other shape is held out")

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneOptions":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


# ---------------------------------------------------------------- the split

@dataclass
class Split:
    """Shapes trained on, training-category shapes kept for validation, and everything held out."""
    train: list[str]
    val: list[str]
    held_out: list[str]
    held_out_categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_split(ds: Dataset, opts: FinetuneOptions) -> Split:
    """Seeded train/validation split of the chosen shapes; every other shape (and category) is held out."""
    shapes = ds.shapes
    chosen = set(opts.train_shapes)
    unknown = sorted(chosen - set(shapes))
    if unknown:
        raise DatasetError(f"{ds.root}: --train-shapes names {len(unknown)} shape(s) not in the dataset, "
                           f"e.g. {unknown[0]!r}")
    cats = set(opts.train_categories)
    if cats:
        known = set(ds.categories.values())
        missing = sorted(cats - known)
        if missing:
            raise DatasetError(f"{ds.root}: no shape of category {missing[0]!r} (dataset.json categories: "
                               f"{', '.join(sorted(known)) or 'none'})")
        chosen |= {s for s in shapes if ds.categories.get(s) in cats}
    pool = sorted(chosen)
    rng = np.random.default_rng([int(opts.seed), 1])
    order = [pool[i] for i in rng.permutation(len(pool))]
    n_val = int(round(opts.val_fraction * len(pool)))
    if opts.val_fraction > 0 and len(pool) >= 2:
        n_val = min(max(n_val, 1), len(pool) - 1)
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    if len(train) < 2:
        raise DatasetError(f"{ds.root}: {len(train)} training shape(s) after the split; need at least 2")
    held = sorted(set(shapes) - set(pool))
    train_cats = {ds.categories.get(s) for s in pool}
    held_cats = sorted({ds.categories[s] for s in held if s in ds.categories} - train_cats)
    return Split(train, val, held, held_cats)


# ---------------------------------------------------------------- strokes to sketch

class StrokeSource:
    """The visible NPR strokes of (shape, viewpoint), from the mesh that made the dataset's NPR views.

    Demo datasets (`dataset.json` with a `synth` entry) regenerate their procedural meshes;
    datasets made by `cvret render` reload the mesh named in `.render/<shape>.json`. Strokes are
    computed once per shape and kept: only the sketch drawn from them changes between epochs.
    """

    def __init__(self, ds: Dataset):
        from .render import RenderSettings

        self.ds = ds
        self.meta = read_dataset_json(Path(ds.root))
        self.synth = self.meta.get("synth") if isinstance(self.meta.get("synth"), dict) else None
        settings = (self.synth or {}).get("render_settings") or (self.meta.get("render") or {}).get("settings")
        try:
            self.settings = RenderSettings(**settings) if isinstance(settings, dict) else RenderSettings()
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{Path(ds.root) / 'dataset.json'}: unusable render settings ({e})") from None
        self.viewpoints = {vp.name: vp for vp in ds.viewpoints}
        self._cache: dict[str, dict] = {}

    def _locate(self, shape: str):
        """('synth', (category, index)) or ('file', mesh path); a DatasetError naming the shape otherwise."""
        if self.synth is not None:
            from .synth import parse_shape_id

            try:
                return "synth", parse_shape_id(shape)
            except ValueError:
                pass
        record = Path(self.ds.root) / ".render" / f"{shape}.json"
        try:
            source = json.loads(record.read_text(encoding="utf-8")).get("source", "")
        except (OSError, ValueError, AttributeError):
            source = ""
        if source and Path(source).is_file():
            return "file", source
        raise DatasetError(f"{record}: no mesh to draw synthetic sketches of shape {shape!r} from (fine-tuning "
                           "needs a dataset made by `cvret render` or `cvret demo`, whose meshes are still on disk)")

    def check(self, shapes):
        """Fail before any training when a shape's mesh cannot be found."""
        for s in shapes:
            self._locate(s)

    def _mesh(self, shape: str):
        kind, where = self._locate(shape)
        if kind == "synth":
            from .synth import generate_shape_spec

            return generate_shape_spec(where[0], where[1], int(self.synth.get("seed", 0))).mesh
        from .render.mesh import load_mesh

        return load_mesh(where)

    def strokes(self, shape: str, viewpoint: str) -> list:
        if shape not in self._cache:
            from . import render

            pm = render.prepare(self._mesh(shape), self.settings)
            self._cache[shape] = {name: render.visible_strokes(pm, vp, self.settings)
                                  for name, vp in self.viewpoints.items()}
        return self._cache[shape][viewpoint]

    def sketch(self, shape: str, viewpoint: str, style: float, seed: int):
        from .synth import sketchify

        return sketchify(self.strokes(shape, viewpoint), self.settings.size, style, seed,
                         line_width=self.settings.line_width, mode="RGB")


def item_seed(*parts) -> int:
    """A 63-bit seed from any values (stable across processes, unlike hash())."""
    key = "|".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


# ---------------------------------------------------------------- training data

@dataclass(frozen=True)
class Item:
    shape: str
    viewpoint: str
    anchor: str  # "synth" or "real"


class PairData:
    """Training items, their batches per epoch, and the tensors of a batch."""

    def __init__(self, ds: Dataset, split: Split, opts: FinetuneOptions, strokes: StrokeSource | None = None):
        self.ds, self.split, self.opts = ds, split, opts
        self.paths = {(v.domain, v.shape, v.viewpoint): v.path for v in ds.views}
        self.strokes = strokes if strokes is not None else StrokeSource(ds)
        self.items = self._items(split.train, real=opts.real_sketches)
        if not self.items:
            raise DatasetError(f"{ds.root}: no training views (need {', '.join(opts.positives)} views of the "
                               "training shapes)")
        self.val_items = self._items(split.val, real=False)
        self.strokes.check(sorted({it.shape for it in self.items + self.val_items}))
        assert_no_leak(self, ds, split)

    def _items(self, shapes, real: bool) -> list[Item]:
        out = []
        for s in shapes:
            for vp in self.ds.viewpoints:
                if all((d, s, vp.name) in self.paths for d in ("npr",) + tuple(self.opts.positives)):
                    out.append(Item(s, vp.name, "synth"))
                    if real and ("sketch", s, vp.name) in self.paths:
                        out.append(Item(s, vp.name, "real"))
        return out

    def anchor_paths(self) -> set[str]:
        """Every dataset image that can be an anchor in training (only real sketches are read from disk)."""
        return {self.paths[("sketch", it.shape, it.viewpoint)] for it in self.items if it.anchor == "real"}

    def batches(self, epoch: int) -> list[list[Item]]:
        """A seeded shuffle cut into batches of distinct shapes (another view of the same shape is no negative)."""
        rng = np.random.default_rng([int(self.opts.seed), 2, int(epoch)])
        pending = [self.items[i] for i in rng.permutation(len(self.items))]
        out = []
        while pending:
            batch, rest, seen = [], [], set()
            for it in pending:
                if len(batch) < self.opts.batch_size and it.shape not in seen:
                    batch.append(it)
                    seen.add(it.shape)
                else:
                    rest.append(it)
            if len(batch) >= 2:  # a lone item has no negative
                out.append(batch)
            pending = rest
        return out

    def anchor_image(self, it: Item, epoch: int):
        if it.anchor == "real":
            assert it.shape in self.split.train, f"real sketch of non-training shape {it.shape} used in training"
            return load_image(self.paths[("sketch", it.shape, it.viewpoint)])
        seed = item_seed(self.opts.seed, epoch, it.shape, it.viewpoint, "anchor")
        rng = np.random.default_rng(seed)
        style = float(rng.uniform(self.opts.style_min, self.opts.style_max))
        return self.strokes.sketch(it.shape, it.viewpoint, style, seed)

    def tensors(self, batch: list[Item], epoch: int) -> torch.Tensor:
        """(1 + P) × B images stacked: anchors, then each positive domain, CLIP-preprocessed."""
        size = self.opts.image_size
        arrs = [preprocess_array(self.anchor_image(it, epoch), size) for it in batch]
        for d in self.opts.positives:
            arrs += [preprocess_array(load_image(self.paths[(d, it.shape, it.viewpoint)]), size) for it in batch]
        return torch.from_numpy(np.stack(arrs))

    def val_tensors(self, vp: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Validation: fixed synthetic sketches (mid style, epoch-independent seed) and NPR views of one viewpoint."""
        items = [it for it in self.val_items if it.viewpoint == vp]
        if len(items) < 2:
            return None
        size, style = self.opts.image_size, (self.opts.style_min + self.opts.style_max) / 2
        sk = [preprocess_array(self.strokes.sketch(it.shape, vp, style, item_seed(self.opts.seed, "val", it.shape, vp)),
                               size) for it in items]
        npr = [preprocess_array(load_image(self.paths[("npr", it.shape, vp)]), size) for it in items]
        return torch.from_numpy(np.stack(sk)), torch.from_numpy(np.stack(npr))


def assert_no_leak(data: PairData, ds: Dataset, split: Split):
    """The zero-shot protocol as checks: held-out shapes are never trained on, evaluation sketches never read."""
    train = set(split.train)
    overlap = train & (set(split.held_out) | set(split.val))
    assert not overlap, f"training shapes overlap held-out/validation shapes: {sorted(overlap)[:3]}"
    eval_sketches = {v.path for v in ds.views if v.domain == "sketch" and v.shape not in train}
    leak = data.anchor_paths() & eval_sketches
    assert not leak, f"evaluation sketches used in training: {sorted(leak)[:3]}"
    assert {it.shape for it in data.items} <= train, "a training item is not a training shape"


# ---------------------------------------------------------------- distance and losses

def pairwise_mean_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) → (n, m) view distances d = mean((x − y)²), the torch twin of `distance.exact_mean_sq`.

    Expanded as (‖x‖² + ‖y‖² − 2x·y)/D in float32 so that autograd keeps only the features, not
    n × m differences of D numbers; the expansion's rounding is far below any margin that matters
    for a loss (tested against the exact definition).
    """
    a, b = a.float(), b.float()
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min(0.0) / a.shape[1]


def infonce(d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on similarity −d/τ: row i's positive is column i, the rest of the batch negatives."""
    logits = -d / temperature
    target = torch.arange(d.shape[0], device=d.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def triplet(d: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge max(0, d(a, p) − d(a, n) + margin) over every in-batch negative."""
    pos = d.diagonal()[:, None]
    off = ~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return torch.relu(pos - d + margin)[off].mean()


# ---------------------------------------------------------------- the model

def build_trainable(opts: FinetuneOptions) -> tuple[torch.nn.Module, Trunk, list[torch.nn.Parameter]]:
    """(complete visual tower, unfolded fp32 trunk sharing its modules, trained parameters)."""
    spec = EncoderSpec(weights=opts.base, layer=opts.layer, seed=opts.weights_seed, image_size=opts.image_size)
    visual = build_visual(spec, full=True).float()
    trunk = Trunk(visual, opts.layer)
    visual.requires_grad_(False)
    params = []
    for stage in opts.train_stages:
        for m in getattr(visual, stage).modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                continue  # frozen: statistics and affine, small batches cannot estimate them
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
                params.append(p)
    trunk.eval()  # batch norms use their running statistics, always
    return visual, trunk, params


# ---------------------------------------------------------------- the run

@dataclass
class FinetuneResult:
    weights: str
    report: str
    epochs: list
    seconds: float
    resumed_from: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _features(trunk: Trunk, x: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if amp:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = trunk(x)
    else:
        out = trunk(x)
    return out.float().reshape(out.shape[0], -1)


def _loss(feats: torch.Tensor, n: int, opts: FinetuneOptions) -> torch.Tensor:
    """The loss of anchors feats[:n] against each positive domain's block of n, averaged over domains.

    Without an explicit τ (margin), it is 0.1 × the batch's mean negative distance, detached: the
    loss then depends on how positives rank against negatives, not on the features' overall
    scale, which an absolute τ would let the network inflate to sharpen its logits (and which
    differs by orders of magnitude between untrained and CLIP weights).
    """
    anchors = feats[:n]
    off = ~torch.eye(n, dtype=torch.bool, device=feats.device)
    losses = []
    for k in range(len(opts.positives)):
        d = pairwise_mean_sq(anchors, feats[(k + 1) * n:(k + 2) * n])
        s = d.detach()[off].mean()
        if opts.loss == "infonce":
            losses.append(infonce(d, opts.temperature or 0.1 * s))
        else:
            losses.append(triplet(d, opts.margin or 0.1 * s))
    return torch.stack(losses).mean()


def train_step(trunk: Trunk, optimizer, x: torch.Tensor, n: int, opts: FinetuneOptions,
               device: torch.device = torch.device("cpu"), amp: bool = False) -> float:
    """One optimisation step on a batch of n anchors followed by their positives; returns the loss."""
    loss = _loss(_features(trunk, x, device, amp), n, opts)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def validate(trunk: Trunk, data: PairData, device: torch.device, amp: bool) -> float | None:
    """acc@1 of fixed synthetic sketches of validation shapes against their NPR views, per viewpoint."""
    hits = total = 0
    for vp in data.ds.viewpoints:
        pair = data.val_tensors(vp.name)
        if pair is None:
            continue
        sk, npr = (_features(trunk, t, device, amp) for t in pair)
        best = pairwise_mean_sq(sk, npr).argmin(1).cpu()
        hits += int((best == torch.arange(len(best))).sum())
        total += len(best)
    return hits / total if total else None


def _save_weights(visual: torch.nn.Module, path: Path):
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in visual.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)


def resume_path(out: Path) -> Path:
    return Path(str(out) + ".resume.pt")


def report_path(out: Path) -> Path:
    return Path(str(out) + ".json")


def finetune(ds: Dataset, out, opts: FinetuneOptions, resume: bool = False, progress: bool = True,
             log=print) -> FinetuneResult:
    """Train, checkpoint each epoch, and write the weights file and its report; see the module docstring."""
    opts.check()
    out = Path(out)
    t0 = time.perf_counter()
    device = resolve_device(opts.device)
    amp = bool(opts.amp and device.type == "cuda")
    split = make_split(ds, opts)
    data = PairData(ds, split, opts)
    base_spec = EncoderSpec(weights=opts.base, layer=opts.layer, seed=opts.weights_seed, image_size=opts.image_size)
    base_id = base_spec.identity
    visual, trunk, params = build_trainable(opts)
    visual.to(device)
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    history: list[dict] = []
    start = 1
    rp = resume_path(out)
    if resume and rp.is_file():
        try:
            state = torch.load(rp, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"{rp}: unreadable resume checkpoint ({str(e).splitlines()[0][:120]})") from None
        saved = FinetuneOptions.from_dict(json.loads(state["options"]))
        diffs = [f.name for f in fields(FinetuneOptions)
                 if f.name not in ("epochs", "device", "amp") and getattr(saved, f.name) != getattr(opts, f.name)]
        if diffs:
            raise ConfigError(f"{rp}: was made with other options ({', '.join(diffs)}); run without --resume "
                              "or with the same options")
        if state["base_identity"] != base_id:
            raise ConfigError(f"{rp}: was trained from {state['base_identity']}, not {base_id}")
        named = dict(visual.named_parameters())
        with torch.no_grad():
            for k, v in state["trained"].items():
                named[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        start = int(state["epoch"]) + 1
        log(f"resuming after epoch {start - 1} from {rp}")
    elif resume:
        log(f"nothing to resume ({rp} not found): starting from epoch 1")
    if not history:
        history.append({"epoch": 0, "loss": None, "val_acc@1": validate(trunk, data, device, amp), "seconds": 0.0})
    trained_names = [n for n, p in visual.named_parameters() if p.requires_grad]

    for epoch in range(start, opts.epochs + 1):
        te = time.perf_counter()
        batches = data.batches(epoch)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{opts.epochs}", unit="batch")
        total, count = 0.0, 0
        for batch in batches:
            loss = train_step(trunk, optimizer, data.tensors(batch, epoch), len(batch), opts, device, amp)
            total += loss * len(batch)
            count += len(batch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
        if bar is not None:
            bar.close()
        history.append({"epoch": epoch, "loss": total / max(count, 1),
                        "val_acc@1": validate(trunk, data, device, amp),
                        "seconds": round(time.perf_counter() - te, 2)})
        named = dict(visual.named_parameters())
        state = {"epoch": epoch, "options": json.dumps(opts.to_dict()), "base_identity": base_id,
                 "trained": {n: named[n].detach().cpu().clone() for n in trained_names},
                 "optimizer": optimizer.state_dict(), "history": json.dumps(history)}
        rp.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(rp) as tmp:
            torch.save(state, tmp)
        h = history[-1]
        va = "-" if h["val_acc@1"] is None else f"{h['val_acc@1']:.3f}"
        log(f"epoch {epoch}/{opts.epochs}: loss {h['loss']:.5g}, validation acc@1 {va} ({h['seconds']:.1f} s)")

    _save_weights(visual, out)
    report = {
        "version": FINETUNE_VERSION, "weights": str(out), "weights_identity": "sha256:" + content_sha256(out),
        "base": {"weights": opts.base, "identity": base_id}, "layer": opts.layer,
        "trained_categories": sorted({ds.categories[s] for s in split.train if s in ds.categories}),
        "dataset": str(ds.root), "split": split.to_dict(), "options": opts.to_dict(),
        "temperature": (opts.temperature or "0.1 x batch mean negative distance") if opts.loss == "infonce" else None,
        "margin": (opts.margin or "0.1 x batch mean negative distance") if opts.loss == "triplet" else None,
        "training_items": len(data.items), "validation_items": len(data.val_items),
        "epochs": history, "device": str(device), "amp": amp, "torch": torch.__version__.split("+")[0],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(report_path(out), json.dumps(report, indent=2) + "\n")
    return FinetuneResult(str(out), str(report_path(out)), history, report["seconds"], start - 1)
