"""Overhead of a pretraining step over its unavoidable model work, and data loading against the step's demand.

For each configuration (the ``tiny`` recipe, and a ViT-S/16 run at the release's crop sizes with a small batch),
on CPU, in one process:

1. **Full step**: the loop's own ``geodino.training.loop.train_step`` (schedules, teacher and student forward,
   Gram teacher, losses, backward, gradient clip, AdamW step, EMA update) on a batch already in memory.
2. **Unavoidable model work** on the same batch: the student backbone + heads forward on all crops (masked global
   crops, local crops) and its backward, the EMA teacher backbone + heads forward on the global crops, and the Gram
   teacher forward (when on). No losses, no optimiser, no EMA.

The two are timed alternately (one warm-up each, then ``--repeats`` rounds) and the ratio of medians is printed;
target <= 1.2. Then the data pipeline (raster windows -> multi-crop -> masks -> collate) is timed with
``--workers`` loader processes on a raster written for the purpose, and its images/s is set against the images/s
one full step consumes (>= 1 means the loader keeps up).

**Ranks** (``ranks`` in ``--configs``): the tiny configuration's full step (``train_step``, DDP or FSDP2 across
two real gloo processes, one thread each) with B images on each of 2 processes (a global batch of 2B), against one
process on B images, both measured in this run (each in its own process, a barrier before and after every step,
medians of ``--repeats``). Ratio 1.0 is perfect weak scaling; it needs a free core per process.

**GPU** (``vitl16_gpu`` in ``--configs``; CUDA only, else it says so and is skipped): ViT-L/16 continued-pretraining
step (224/96 px crops, 2 + 8 crops, Gram on, bf16 autocast, fused AdamW) through the real loader, timed step by step:
images/s, MFU against the card's bf16 peak MEASURED in this run (a large bf16 matmul, best of several) and against
the datasheet peak when the card is known, and the share of step time spent waiting for the loader's next batch.

Usage: ``python benchmarks/pretrain.py --repeats 5 --threads 1 --workers 2``
(``--configs ranks --strategies ddp,fsdp2 --batch 8`` for the ranks case alone)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geodino.training.config import load_config
from geodino.training.loop import build_data, train_step
from geodino.training.meta_arch import SSLMetaArch
from geodino.training.parallel import wrap_model
from geodino.training.schedules import build_schedules

CONFIGS = {
    "tiny": ("tiny", ["train.batch_size=8", "gram.enabled=true", "gram.high_res=true"]),
    "vits16": (
        None,
        [
            "student.arch=vits16",
            "crops.global_size=224",
            "crops.local_size=96",
            "crops.n_local=4",
            "train.batch_size=4",
            "gram.enabled=true",
            "optim.layerwise_decay=0.98",
        ],
    ),
}


def write_scene(path: Path, size: int = 1024) -> Path:
    """A seeded uint8 RGB GeoTIFF (UTM 33N, 10 m) with smooth structure and fine texture."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    bands = [np.sin(2 * np.pi * (rng.uniform(1, 8) * yy + rng.uniform(1, 8) * xx)) for _ in range(3)]
    data = np.stack(bands) * 0.4 + 0.5 + rng.normal(0, 0.05, (3, size, size))
    data = (np.clip(data, 0, 1) * 255).astype(np.uint8)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633"}
    profile.update(transform=from_origin(500000, 4100000, 10, 10), tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def model_work(model: SSLMetaArch, batch: dict) -> None:
    """Student forward + backward on all crops, teacher forward, Gram-teacher forward: nothing else."""
    s, t = model.student, model.teacher
    with torch.no_grad():
        out = t["backbone"].forward_features(batch["global_crops"])
        t["dino_head"](out["x_norm_clstoken"])
        t["ibot_head"](out["x_norm_patchtokens"][batch["masks"]])
        if model.gram_teacher is not None:
            crops = batch["gram_crops"] if batch["gram_crops"] is not None else batch["global_crops"]
            model.gram_teacher.forward_features(crops)
    glob = s["backbone"].forward_features(batch["global_crops"], batch["masks"])
    cls = [glob["x_norm_clstoken"]]
    if batch["local_crops"] is not None:
        cls.append(s["backbone"].forward_features(batch["local_crops"], local_crops=True)["x_norm_clstoken"])
    logits = s["dino_head"](torch.cat(cls))
    patch = s["ibot_head"](glob["x_norm_patchtokens"][batch["masks"]])
    (logits.float().mean() + patch.float().mean() + glob["x_norm_patchtokens"].float().mean()).backward()
    model.zero_grad(set_to_none=True)


def bench_config(name: str, scene: Path, repeats: int, workers: int, batch: int | None) -> None:
    recipe, overrides = CONFIGS[name]
    extra = [f"data.paths=['{scene}']", f"train.num_workers={workers}"]
    cfg = load_config(recipe, [*overrides, *extra, *([f"train.batch_size={batch}"] if batch else [])])
    torch.manual_seed(0)
    model = SSLMetaArch(cfg).train()
    optimizer = model.make_optimizer()
    schedules = build_schedules(cfg)
    data = build_data(cfg, model.teacher["backbone"])
    it = iter(data.loader)
    batch = next(it)
    full, work = [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        train_step(model, optimizer, schedules, batch, 10 + r)
        t1 = time.perf_counter()
        model_work(model, batch)
        t2 = time.perf_counter()
        if r:  # round 0 warms up
            full.append(t1 - t0)
            work.append(t2 - t1)
    step_s, work_s = statistics.median(full), statistics.median(work)
    # Data: images/s the loader delivers (after its first batch), against what one step consumes.
    n_batches = max(3, repeats)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    load_s = (time.perf_counter() - t0) / n_batches
    B = cfg.train.batch_size
    crops = f"{cfg.crops.n_global}x{cfg.crops.global_size}px + {cfg.crops.n_local}x{cfg.crops.local_size}px"
    gram = f"Gram teacher {'high-res ' + str(cfg.gram_teacher_size) + 'px' if cfg.gram.high_res else 'same crops'}"
    print(f"{name}: batch {B}, {crops}, {gram}, {sum(p.numel() for p in model.student.parameters()) / 1e6:.1f}M")
    print(
        f"  full step {step_s * 1e3:8.1f} ms   model work {work_s * 1e3:8.1f} ms   ratio {step_s / work_s:.2f} "
        f"(target <= 1.2; medians of {repeats})"
    )
    print(
        f"  data loader ({workers} workers) {B / load_s:8.1f} images/s   step demand {B / step_s:8.1f} images/s   "
        f"supply / demand {step_s / load_s:.2f} (>= 1: the loader keeps up)"
    )


def _ranks_worker(
    rank: int, world: int, store: str, scene: str, strategy: str, batch: int, repeats: int, out: str
) -> None:
    """One process of the ranks case: ``repeats`` timed tiny steps (after one warm-up); rank 0 writes the median."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        recipe, overrides = CONFIGS["tiny"]
        extra = [f"data.paths=['{scene}']", "train.num_workers=0", f"train.batch_size={batch}"]
        cfg = load_config(recipe, [*overrides, *extra, f"parallel.strategy={strategy}"])
        torch.manual_seed(0)
        model = SSLMetaArch(cfg)
        wrap_model(model, cfg.parallel, torch.device("cpu"))
        model.train()
        optimizer, schedules = model.make_optimizer(), build_schedules(cfg)
        data = build_data(cfg, model.teacher["backbone"], rank=rank, world_size=world)
        step = next(iter(data.loader))
        times = []
        for r in range(repeats + 1):
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            train_step(model, optimizer, schedules, step, 10 + r)
            if world > 1:
                dist.barrier()  # a step ends when the slowest rank ends it
            if r:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            Path(out).write_text(str(statistics.median(times)))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _ranks_step(world: int, scene: Path, strategy: str, batch: int, repeats: int) -> float:
    """Median step seconds of ``world`` processes (fork; gloo), ``batch`` images each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "median.txt"
        args = (world, str(Path(tmp) / "store"), str(scene), strategy, batch, repeats, str(out))
        mp.start_processes(_ranks_worker, args=args, nprocs=world, join=True, start_method="fork")
        return float(out.read_text())


def bench_ranks(scene: Path, repeats: int, batch: int | None, strategies: list[str]) -> None:
    """The ranks case: 2 processes on B images each (global 2B) / 1 process on B, per strategy."""
    B = batch or 8
    single = _ranks_step(1, scene, "none", B, repeats)
    print(f"ranks (tiny, gloo, 1 thread per process): 1 process x B={B}  step {single * 1e3:8.1f} ms")
    for strategy in strategies:
        two = _ranks_step(2, scene, strategy, B, repeats)
        print(
            f"  2 processes x B={B} (global {2 * B}) {strategy:>5}  step {two * 1e3:8.1f} ms   "
            f"ratio {two / single:.2f} (2 procs on 2B / 1 proc on B; 1.0 = perfect weak scaling; medians of {repeats})"
        )


GPU_OVERRIDES = [
    "student.arch=vitl16",
    "crops.global_size=224",
    "crops.local_size=96",
    "crops.n_local=8",
    "gram.enabled=true",
    "train.device=cuda",
    "train.bf16=true",
]


def measured_bf16_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """The card's achievable bf16 matmul rate: best of ``repeats`` (n x n) @ (n x n) products, in TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeats + 1):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def bench_gpu(scene: Path, repeats: int, workers: int, batch: int | None) -> None:
    """ViT-L/16 bf16 on one GPU: images/s, MFU (measured and datasheet peak), share of the step waiting for data."""
    from geodino.training.throughput import Throughput, peak_tflops

    if not torch.cuda.is_available():
        print("vitl16_gpu: skipped (needs a CUDA GPU)")
        return
    device = torch.device("cuda")
    extra = [f"data.paths=['{scene}']", f"train.num_workers={workers}", f"train.batch_size={batch or 32}"]
    cfg = load_config(None, [*GPU_OVERRIDES, *extra])
    torch.manual_seed(0)
    model = SSLMetaArch(cfg).to(device).train()
    optimizer = model.make_optimizer()
    schedules = build_schedules(cfg)
    data = build_data(cfg, model.teacher["backbone"])
    it = iter(data.loader)
    steps, waits = [], []
    for r in range(repeats + 2):  # two warm-up steps (cuDNN / allocator)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        raw = next(it)
        raw.pop("last_index", None)
        batch_ = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in raw.items()}
        t1 = time.perf_counter()
        train_step(model, optimizer, schedules, batch_, 10 + r)
        torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if r >= 2:
            steps.append(t2 - t0)
            waits.append(t1 - t0)
    step_s = statistics.median(steps)
    speed = Throughput.for_run(cfg, device, 1)
    rate = speed.images_per_s(1, step_s)
    measured = measured_bf16_tflops(device)
    sheet = peak_tflops(device)
    achieved = speed.flops_per_image * rate / 1e12
    print(f"vitl16_gpu: {torch.cuda.get_device_name(device)}, batch {cfg.train.batch_size}, bf16 autocast")
    print(
        f"  step {step_s * 1e3:8.1f} ms   {rate:8.1f} images/s   model {achieved:7.1f} TFLOP/s   "
        f"MFU {achieved / measured:.3f} of the measured bf16 peak {measured:.0f} TFLOP/s"
        + (f", {achieved / sheet:.3f} of the datasheet {sheet:.0f}" if sheet else "")
    )
    print(
        f"  waiting for data: {statistics.median(waits) / step_s:.1%} of the step (median of {repeats}; "
        f"{workers} loader workers)   peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs", default="tiny,vits16,ranks", help="comma-separated: tiny, vits16, ranks, vitl16_gpu (CUDA)"
    )
    parser.add_argument("--strategies", default="ddp,fsdp2", help="ranks case: comma-separated ddp, fsdp2, none")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: per configuration)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    with tempfile.TemporaryDirectory() as tmp:
        scene = write_scene(Path(tmp) / "scene.tif")
        for name in args.configs.split(","):
            if name.strip() == "vitl16_gpu":
                bench_gpu(scene, args.repeats, args.workers, args.batch)
            elif name.strip() == "ranks":
                bench_ranks(scene, args.repeats, args.batch, [s.strip() for s in args.strategies.split(",")])
            else:
                bench_config(name.strip(), scene, args.repeats, args.workers, args.batch)


if __name__ == "__main__":
    main()
