"""Forward-pass speed of geodino's DINOv3 backbone against timm's, on the same weights, in one process.

CPU (always): for each model, build geodino's backbone with random weights, copy them into timm's
``vit_*_patch16_dinov3_qkvb`` through timm's own ``checkpoint_filter_fn`` (strict load), check that the two agree,
then time ``forward_features`` under ``torch.inference_mode()`` in fp32: one warm-up call each, then alternating
geodino / timm calls, and report the median of the repeats and the ratio geodino / timm (target <= 1.0).

GPU (when CUDA is available): ViT-L/16 images/s under bf16 autocast, and the fraction of the card's measured bf16
matmul peak that this throughput represents. Model FLOPs are counted as 2 x multiply-adds of the matrix products
only (norms, softmax, RoPE and GELU are elementwise and left out), for N tokens of width D and FFN width H:

    per block:   2 * N * (4 * D**2 + k * D * H)     qkv (3 D^2) + output projection (D^2); FFN k = 2 (MLP) or
                                                    3 (SwiGLU: w1, w2, w3)
               + 2 * 2 * N**2 * D                   q k^T and attention x v, each N^2 D multiply-adds
    patch embed: 2 * P * (C * p**2) * D              P patches of C x p x p pixels
    final norm:  not counted

Usage: ``python benchmarks/backbone.py --models s,l --repeats 5 --threads 2`` (``--profile`` prints where the
time goes per operator, for both implementations).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from geodino.hub import build
from geodino.models.config import ARCHS, VitConfig
from geodino.models.vit import DinoVisionTransformer

MODELS = {
    "s": ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb"),
    "l": ("dinov3_vitl16", "vit_large_patch16_dinov3_qkvb"),
}


def model_flops(cfg: VitConfig, height: int, width: int) -> float:
    """Matrix-product FLOPs (2 x multiply-adds) of one image's forward pass; see the module docstring."""
    patches = (height // cfg.patch_size) * (width // cfg.patch_size)
    n = patches + 1 + cfg.n_storage_tokens
    D, H = cfg.embed_dim, cfg.ffn_hidden
    k = 2 if cfg.ffn_layer == "mlp" else 3
    per_block = 2 * n * (4 * D**2 + k * D * H) + 2 * 2 * n**2 * D
    embed = 2 * patches * cfg.in_chans * cfg.patch_size**2 * D
    return float(cfg.depth * per_block + embed)


def randomise(model: DinoVisionTransformer, seed: int = 0) -> None:
    """Random LayerScale and norm parameters, so that every block visibly shapes the output being compared."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def make_pair(key: str, size: int) -> tuple[DinoVisionTransformer, torch.nn.Module]:
    """geodino model with random weights and timm's model holding the same weights (strict load)."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    name, timm_name = MODELS[key]
    torch.manual_seed(0)
    ours = build(name).eval()
    randomise(ours)
    theirs = timm.create_model(timm_name, pretrained=False, img_size=size, num_classes=0).eval()
    theirs.load_state_dict(checkpoint_filter_fn(ours.state_dict(), theirs), strict=True)
    return ours, theirs


def geodino_tokens(model: DinoVisionTransformer, x: Tensor) -> Tensor:
    """(B, 1 + S + N, D) final-norm tokens, the layout of timm's forward_features."""
    out = model.forward_features(x)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_storage_tokens"], out["x_norm_patchtokens"]], dim=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each callable: `warmup` untimed rounds, then `repeats` rounds alternating them."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    sync(device)
    for i in range(repeats):
        # alternate which one goes first, so neither always runs on a cache the other warmed
        order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]
        for key, fn in order:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return times


def profile(label: str, fn: Callable[[], object], rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {label} (self CPU time per operator) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def bench_cpu_model(key: str, args: argparse.Namespace) -> None:
    """Time one model pair on the CPU and print its line."""
    ours, theirs = make_pair(key, args.size)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    runs = {"geodino": lambda: ours.forward_features(x), "timm": lambda: theirs.forward_features(x)}
    with torch.inference_mode():
        diff = (geodino_tokens(ours, x) - theirs.forward_features(x)).abs().max().item()
        times = time_interleaved(runs, args.repeats, args.warmup, torch.device("cpu"))
        if args.profile:
            profile(f"geodino {MODELS[key][0]}", runs["geodino"])
            profile(f"timm {MODELS[key][1]}", runs["timm"])
    print(summary(MODELS[key][0], times, diff), flush=True)


def summary(name: str, times: dict[str, list[float]], diff: float) -> str:
    """One line: medians, ratio of medians, median of per-round ratios, best times, and the agreement check.

    The per-round ratio compares two calls made back to back, so it is the figure least moved by other load on a
    shared machine; the ratio of best times is the other robust reading.
    """
    g, t = times["geodino"], times["timm"]
    paired = statistics.median(a / b for a, b in zip(g, t, strict=True))
    return (
        f"{name:>15}: median geodino {statistics.median(g):7.3f} s  timm {statistics.median(t):7.3f} s  "
        f"ratio geodino/timm: of medians {statistics.median(g) / statistics.median(t):.3f}, "
        f"median per round {paired:.3f}, of best {min(g) / min(t):.3f} (target <= 1.0)  max|diff| {diff:.2e}\n"
        f"{'':>17}geodino runs {', '.join(f'{v:.3f}' for v in g)}\n{'':>17}timm runs    {', '.join(f'{v:.3f}' for v in t)}"
    )


def bench_cpu(args: argparse.Namespace) -> None:
    print(
        f"CPU fp32, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.warmup} warm-up + {args.repeats} interleaved repeats (median)",
        flush=True,
    )
    for key in args.models:
        bench_cpu_model(key, args)


def measured_bf16_peak(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of an n x n x n bf16 matmul on `device` (2 n^3 FLOPs per product), best of `repeats`."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def bench_gpu(args: argparse.Namespace, device: torch.device | None = None) -> None:
    """ViT-L/16 bf16 images/s of geodino and timm, and the fraction of the measured bf16 peak (CUDA by default)."""
    device = device or torch.device("cuda")
    peak = measured_bf16_peak(device, args.peak_size)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"\n{card}: measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s ({args.peak_size}^3 matmul)")
    ours, theirs = make_pair("l", args.size)
    ours, theirs = ours.to(device), theirs.to(device)
    x = torch.randn(args.gpu_batch, 3, args.size, args.size, device=device)
    flops = model_flops(ARCHS["dinov3_vitl16"], args.size, args.size) * args.gpu_batch
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        diff = (geodino_tokens(ours, x[:2]).float() - theirs.forward_features(x[:2]).float()).abs().max().item()
        times = time_interleaved(
            {"geodino": lambda: ours.forward_features(x), "timm": lambda: theirs.forward_features(x)},
            args.repeats,
            max(args.warmup, 2),
            device,
        )
    print(
        f"ViT-L/16 bf16 autocast, batch {args.gpu_batch}, {args.size} px, {flops / args.gpu_batch / 1e9:.0f} GFLOP/image"
    )
    for key in ("geodino", "timm"):
        sec = statistics.median(times[key])
        print(
            f"{key:>8}: {args.gpu_batch / sec:8.1f} images/s  {flops / sec / 1e12:6.1f} TFLOP/s  "
            f"= {flops / sec / peak:.1%} of measured peak"
        )
    print(f"bf16 max|diff| geodino vs timm (2 images): {diff:.2e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="s,l", help="comma-separated subset of: s, l")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per implementation first")
    parser.add_argument("--batch", type=int, default=4, help="CPU batch size")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gpu-batch", type=int, default=32, help="batch size of the CUDA ViT-L run")
    parser.add_argument("--peak-size", type=int, default=8192, help="side of the square bf16 matmul timed as peak")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA run even when a GPU is present")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per model (CPU)")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if args.size % 16:
        parser.error(f"--size {args.size} is not a multiple of the patch size 16")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_cpu(args)
    if torch.cuda.is_available() and not args.no_gpu:
        bench_gpu(args)
    elif not args.no_gpu:
        print("\nno CUDA device: GPU bf16 throughput skipped")


if __name__ == "__main__":
    main()
