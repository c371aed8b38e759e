"""Head-training epoch time with the feature cache divided by without, frozen ViT-S/16 on CPU (issue 9 target:
>= 3x faster per epoch from the second epoch), and the cache's memory.

Both runs train the same head (linear by default, or DPT) with `geodino.heads.train.fit_head` on the same chips:
a ViT-S/16 (``geodino.hub.build("dinov3_vits16")`` with RANDOM weights, explicitly: the speed does not depend on
the weights), N synthetic chips of T x T pixels (two land-cover classes from the brightness of 16-pixel blocks).
Without the cache every epoch runs the backbone; with it the first epoch fills the cache and later epochs read
it. The ratio is (mean epoch time from epoch 2 without cache) / (mean epoch time from epoch 2 with cache), all
measured in this run. Augmentation is off by default: with D4 (``--augment d4``) an entry is reused only when a
chip draws a transform it drew before, so epoch 2 hits about 1/8 of the time and the gain builds up over ~8+
epochs (the run prints the hit rate per epoch).

Usage: ``python benchmarks/heads.py --chips 64 --tile 224 --head linear --epochs 3 --threads 2``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from geodino.heads.data.chips import ChipSet, GridRef
from geodino.heads.tasks import build_head_model
from geodino.heads.train import HeadTrainConfig, fit_head
from geodino.hub import build
from geodino.raster.normalize import Normalization


def synthetic_chips(n: int, tile: int, seed: int = 0) -> ChipSet:
    """`n` chips of T x T: random brightness per 16-pixel block, class 1 where bright (normalised RGB)."""
    rng = np.random.default_rng(seed)
    blocks = -(-tile // 16)
    b = np.kron(rng.uniform(size=(n, blocks, blocks)), np.ones((16, 16)))[:, :tile, :tile].astype(np.float32)
    images = np.repeat(((b - 0.5) / 0.25)[:, None], 3, axis=1)
    images += rng.normal(0.0, 0.1, size=images.shape).astype(np.float32)
    return ChipSet(
        images=images.astype(np.float32),
        targets=(b > 0.5).astype(np.int64),
        origins=np.stack([np.arange(n) * tile, np.zeros(n)], axis=1).astype(np.int64),
        source=np.zeros(n, np.int64),
        grids=(GridRef("synthetic", None, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), (n * tile, tile)),),
        task="land-cover",
        normalization=Normalization(1.0, (0.5,) * 3, (0.25,) * 3),
        class_names=("dark", "bright"),
    )


def run(chips: ChipSet, args: argparse.Namespace, cache: str | None) -> tuple[list[dict], dict | None]:
    """Train a fresh head on a fresh (same-seed) random ViT-S/16; the per-epoch history and cache stats."""
    torch.manual_seed(0)
    backbone = build("dinov3_vits16", weights=None)  # random weights, on purpose (see the module doc)
    model = build_head_model(backbone, task="land-cover", head=args.head, class_names=chips.class_names)
    config = HeadTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=1e-3,
        augment=args.augment,
        cache=cache,
        cache_dtype=args.cache_dtype,
        patience=None,
        progress=False,
        num_threads=args.threads,
    )
    result = fit_head(model, chips, None, config, log=lambda line: print(f"  [{cache or 'no cache'}] {line}"))
    return result.history, result.cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=64)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--head", default="linear", choices=["linear", "dpt"])
    parser.add_argument("--epochs", type=int, default=3, help=">= 2: epochs from the second are compared")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--augment", default=None, choices=[None, "d4", "flips"])
    parser.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2")
    chips = synthetic_chips(args.chips, args.tile)
    print(
        f"ViT-S/16 (random weights, frozen) + {args.head} head, {args.chips} chips of {args.tile}^2, batch "
        f"{args.batch}, {args.epochs} epochs, augment {args.augment}, {args.threads} threads, torch "
        f"{torch.__version__}"
    )
    t0 = time.perf_counter()
    plain, _ = run(chips, args, None)
    cached, stats = run(chips, args, "memory")
    assert stats is not None
    t_plain = statistics.mean(row["seconds"] for row in plain[1:])
    t_cached = statistics.mean(row["seconds"] for row in cached[1:])
    print(f"epoch 1:  no cache {plain[0]['seconds']:.2f} s, with cache {cached[0]['seconds']:.2f} s (filling)")
    print(f"epoch 2+: no cache {t_plain:.2f} s, with cache {t_cached:.2f} s (mean of epochs 2..{args.epochs})")
    for row in cached[1:]:
        total = row["cache_hits"] + row["cache_misses"]
        print(f"  epoch {row['epoch']}: cache hit rate {row['cache_hits'] / max(total, 1):.0%}")
    print(f"speed-up from epoch 2 (no cache / cache): {t_plain / t_cached:.2f}x (target >= 3x)")
    per_chip = stats["bytes"] / max(stats["entries"], 1)
    print(
        f"cache memory: {stats['bytes'] / 2**20:.1f} MiB for {stats['entries']} entries "
        f"({per_chip / 2**10:.0f} KiB each, {args.cache_dtype}); uncached {stats['uncached']}"
    )
    print(f"total benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
