"""Which way of running the RN101 trunk on this CPU gets closest to the bf16 bound (issue 14's search).

    python scripts/encode_variants.py [--quick] [--variants eager,jit,compile,aoti] [--batches 8,16,32,64]
    python scripts/encode_variants.py --device cuda --precision fp16 --batches 256 \
        --variants eager,cudnn-benchmark,compile,cuda-graphs      # a GPU machine (issue 14, item 4)

Every rate is a forward pass of the folded trunk on a fixed batch (steady state after warm-up,
best of N), reported against bounds measured in the same run: the plain square bf16 matrix
product and the GEMMs that layer3's convolutions become (im2col shapes at the same batch),
FLOPs counted with torch's FlopCounterMode on the real trunk. The machine's load is printed
before and after; a result taken at load above 1.0 is marked as contended, not a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_lib import best_of  # noqa: E402
from retrieval.encoder import EncoderSpec, LayerEncoder  # noqa: E402


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def flops_per_view(trunk, size: int = 224) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        trunk.float()(x)
    return float(fc.get_total_flops())


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(m: int, k: int, n: int, repeat: int, dtype=torch.bfloat16, device: str = "cpu") -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)

    def run():
        torch.mm(a, b)
        sync(device)
    return 2 * m * k * n / best_of(run, repeat) / 1e9


def layer3_gemm_bound(batch: int, repeat: int, dtype=torch.bfloat16, device: str = "cpu") -> float:
    """GFLOP/s of layer3's bottleneck as im2col GEMMs at this batch (FLOP-weighted harmonic mean)."""
    m = batch * 14 * 14
    shapes = [(m, 1024, 256), (m, 9 * 256, 256), (m, 256, 1024)]
    flops = [2 * a * b * c for a, b, c in shapes]
    secs = [f / (gemm_rate(*s, repeat, dtype, device) * 1e9) for f, s in zip(flops, shapes)]
    return sum(flops) / sum(secs) / 1e9


def variant_module(name: str, enc: LayerEncoder, example: torch.Tensor):
    trunk = enc.trunk
    if name == "eager":
        return trunk
    if name == "jit":  # TorchScript freeze: oneDNN weight prepacking and conv+relu fusion
        with torch.inference_mode():
            traced = torch.jit.trace(trunk, example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    if name == "compile":  # inductor with frozen (prepacked) weights
        import torch._inductor.config as cfg

        cfg.freezing = True
        return torch.compile(trunk)
    if name == "aoti":  # what `cvret index --compile` runs: the AOTInductor package cached by retrieval/compiled.py
        if not enc.compile_for(0, "always"):
            raise RuntimeError("the trunk could not be compiled (see the log)")
        return lambda x: enc._forward(x)
    if name == "cudnn-benchmark":  # cuDNN autotuning picks the fastest algorithm per convolution shape
        torch.backends.cudnn.benchmark = True
        return trunk
    if name == "cuda-graphs":  # inductor plus CUDA graphs: no per-kernel launch overhead
        torch.backends.cudnn.benchmark = True
        return torch.compile(trunk, mode="reduce-overhead")
    raise ValueError(name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default="eager,jit")
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    repeat = 2 if args.quick else 4
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        batches = batches[:1]
    load0 = loadavg()
    res = {"load_before": load0, "threads": torch.get_num_threads(), "cpu": os.cpu_count(), "runs": []}
    dev = args.device
    enc = LayerEncoder(EncoderSpec("untrained", seed=0), device=dev, precision=args.precision)
    gemm_dtype = enc.dtype if enc.dtype != torch.float32 else torch.bfloat16
    fpv = flops_per_view(LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision="fp32").trunk)
    res["GFLOP_per_view"] = fpv / 1e9
    n = 1024 if args.quick else (2048 if dev == "cpu" else 8192)
    res["square_gemm_GFLOPs"] = gemm_rate(n, n, n, repeat, gemm_dtype, dev)
    if dev.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    print(f"load {load0:.2f}; {res['GFLOP_per_view']:.2f} GFLOP/view; {gemm_dtype} {n}² GEMM "
          f"{res['square_gemm_GFLOPs']:.0f} GFLOP/s → bound {res['square_gemm_GFLOPs'] / res['GFLOP_per_view']:.1f} views/s")
    dtype = enc.dtype
    for b in batches:
        l3 = layer3_gemm_bound(b, repeat, gemm_dtype, dev)
        x = torch.randn(b, 3, 224, 224, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
        for name in args.variants.split(","):
            try:
                t0 = time.perf_counter()
                mod = variant_module(name, enc, x)
                with torch.inference_mode():
                    mod(x)  # first call: tracing / compiling / primitive creation
                    sync(dev)
                    setup = time.perf_counter() - t0

                    def run():
                        mod(x)
                        sync(dev)
                    sec = best_of(run, repeat, warmup=2)
            except Exception as e:  # a variant that does not build here is a finding, not a crash
                print(f"batch {b:3d} {name:8s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                res["runs"].append({"batch": b, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            vps = b / sec
            gflops = vps * fpv / 1e9
            # the machine's speed drifts over minutes (shared hosts): the square GEMM again, right after this run
            square_now = gemm_rate(n, n, n, repeat, gemm_dtype, dev)
            row = {"batch": b, "variant": name, "views_per_s": vps, "GFLOP_per_s": gflops, "setup_s": setup,
                   "layer3_gemm_GFLOPs": l3, "of_square_gemm": gflops / res["square_gemm_GFLOPs"],
                   "square_gemm_GFLOPs_after": square_now, "of_square_gemm_after": gflops / square_now,
                   "of_layer3_gemm": gflops / l3, "load": loadavg()}
            res["runs"].append(row)
            print(f"batch {b:3d} {name:15s} {vps:7.1f} views/s  {gflops:5.0f} GFLOP/s  "
                  f"{row['of_square_gemm']:.0%} of {n}² GEMM ({row['of_square_gemm_after']:.0%} of the one right "
                  f"after: {square_now:.0f}), {row['of_layer3_gemm']:.0%} of layer3 GEMMs "
                  f"({l3:.0f} GFLOP/s); setup {setup:.1f} s; load {row['load']:.2f}")
    res["load_after"] = loadavg()
    if max(res["load_before"], res["load_after"]) > 1.0:
        print(f"CONTENDED: load {res['load_before']:.2f} → {res['load_after']:.2f}; these ratios are not figures")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
