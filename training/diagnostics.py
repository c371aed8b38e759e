"""Dense-feature diagnostics that make the loss of patch locality visible while a model trains.

- :func:`patch_similarity`: the mean, spread and quantiles of the cosine similarity between the patch tokens of
  one image (off-diagonal pairs), averaged over a fixed probe set. Long self-supervised training makes patch
  tokens of an image grow alike (the mean rises towards 1); Gram anchoring pulls it back.
- :func:`gram_distance`: mean squared difference between the student's and a Gram teacher's patch-similarity
  (Gram) matrices on the same probe images (the Gram loss without clipping).
- :func:`dense_linear_probe`: a linear head trained briefly on frozen patch features of a labelled raster, mIoU on
  a spatially held-out part (right-most columns).
- :func:`probe_images`: the fixed probe set, windows read once at the start of a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from geodino.raster.source import RasterSource
    from geodino.training.data.windows import RasterWindows

__all__ = [
    "QUANTILES",
    "ProbeResult",
    "check_same_grid",
    "dense_linear_probe",
    "gram_distance",
    "patch_similarity",
    "patch_tokens",
    "probe_images",
]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def probe_images(
    windows: RasterWindows, n: int, size: int, mean: Sequence[float], std: Sequence[float], seed: int = 12345
) -> Tensor:
    """A fixed probe set: ``n`` usable windows of the training rasters, resized to ``size`` and normalised.

    The windows come from a stream seeded apart from the training one (same rasters, other positions).

    Returns:
        (n, C, size, size) float32.
    """
    from geodino.training.data.windows import RasterWindows

    stream = RasterWindows(
        windows.sources,
        windows.window_size,
        max_nodata_fraction=windows.max_nodata_fraction,
        seed=seed,
        scales=windows.scales,
    )
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    out = []
    index = 0
    while len(out) < n and index < 50 * n:
        item = stream.read(stream.ref(index))
        index += 1
        if item is None:
            continue
        x = ((item["image"] - m) / s).masked_fill(~item["valid"][None], 0.0)
        if x.shape[-1] != size:
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(x)
    if not out:
        raise ValueError("no usable probe window in the training rasters")
    return torch.stack(out)


@torch.no_grad()
def patch_tokens(backbone: nn.Module, images: Tensor, batch_size: int = 16) -> Tensor:
    """Final-norm patch tokens (B, N, D) of ``images`` (B, C, H, W), in eval mode, float32."""
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        parts = [
            backbone.forward_features(images[i : i + batch_size].to(device))["x_norm_patchtokens"].float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        backbone.train(was_training)
    return torch.cat(parts)


def _cosine_gram(tokens: Tensor) -> Tensor:
    """(B, N, D) -> (B, N, N) cosine similarities."""
    x = F.normalize(tokens.float(), dim=-1)
    return x @ x.transpose(1, 2)


def patch_similarity(tokens: Tensor) -> dict[str, float]:
    """Statistics of the cosine similarity between different patch tokens of the same image.

    Args:
        tokens: (B, N, D) patch tokens of B probe images (N >= 2).

    Returns:
        ``patch_sim_mean``, ``patch_sim_std`` and ``patch_sim_q05`` ... ``patch_sim_q95`` over all off-diagonal
        pairs (i != j) of every image.
    """
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        raise ValueError(f"patch_similarity needs (B, N >= 2, D) tokens, got {tuple(tokens.shape)}")
    sims = _cosine_gram(tokens)
    n = sims.shape[1]
    off = sims[:, ~torch.eye(n, dtype=torch.bool)].flatten().double()
    out = {"patch_sim_mean": float(off.mean()), "patch_sim_std": float(off.std(unbiased=False))}
    qs = torch.quantile(off[:: max(1, off.numel() // 1_000_000)], torch.tensor(QUANTILES, dtype=off.dtype))
    out.update({f"patch_sim_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)})
    return out


def gram_distance(tokens: Tensor, teacher_tokens: Tensor) -> float:
    """Mean over images and entries of ``(X Xᵀ - G Gᵀ)²``, X (B, N, D) and G (B, N, D') L2-normalised tokens."""
    if tokens.shape[:2] != teacher_tokens.shape[:2]:
        raise ValueError(f"token shapes differ: {tuple(tokens.shape)} vs {tuple(teacher_tokens.shape)}")
    return float(((_cosine_gram(tokens) - _cosine_gram(teacher_tokens)) ** 2).mean())


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`dense_linear_probe`: held-out mIoU, per-class IoU, and the pixels of each split."""

    miou: float
    iou: dict[int, float]
    train_pixels: int
    test_pixels: int


def _tiles(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` tiles covering the grid (the last ones reach past its edge)."""
    return [(r, c) for r in range(0, height, size) for c in range(0, width, size)]


def check_same_grid(image: RasterSource, labels: RasterSource) -> None:
    """Refuse labels that are not on the image's grid (never aligned by array index)."""
    if image.shape != labels.shape or image.crs != labels.crs or not image.transform.almost_equals(labels.transform):
        raise ValueError(
            f"probe labels {labels.paths[0]} ({labels.shape}, {labels.crs}) are not on the grid of the probe image "
            f"{image.paths[0]} ({image.shape}, {image.crs}); resample them onto it first"
        )


def dense_linear_probe(
    backbone: nn.Module,
    image: RasterSource,
    labels: RasterSource,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float,
    tile: int,
    ignore_index: int | None = 0,
    test_fraction: float = 0.33,
    steps: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
    max_train_pixels: int = 50_000,
) -> ProbeResult:
    """Train a linear head on frozen patch features of a labelled raster; mIoU on its right-most columns.

    The raster is cut into ``tile`` px tiles; per-pixel labels (class ids, ``ignore_index`` skipped) are compared
    with the head's patch logits upsampled bilinearly to pixels. Pixels with column ``>= (1 - test_fraction) * W``
    are the held-out part (a spatial split: no held-out pixel is trained on; tiles straddling the boundary
    contribute their left pixels to training and their right pixels to the test). Edge tiles reaching past the
    raster are zero-filled there, and those pixels carry no label.

    Args:
        backbone: frozen backbone (patch tokens through ``forward_features``).
        image: the imagery (its band count must match the backbone).
        labels: one band of integer class ids on the same grid.
        mean: per-band normalisation mean (scaled units).
        std: per-band normalisation std.
        scale: raw value -> scaled units.
        tile: tile side in pixels (a multiple of the patch size).
        ignore_index: label value to ignore (e.g. 0 for "no data"); None: none.
        test_fraction: fraction of columns held out.
        steps: full-batch AdamW steps of the head.
        lr: learning rate.
        seed: head initialisation and pixel sampling seed.
        max_train_pixels: most training pixels used (a random sample).

    Returns:
        :class:`ProbeResult` with mIoU over the classes present in the held-out part.
    """
    check_same_grid(image, labels)
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    from geodino.raster.windows import Window

    xs, ys = [], []
    corners = _tiles(image.height, image.width, tile)
    for r, c in corners:
        win = Window(r, c, tile, tile)
        data, valid = image.read(win, fill="constant")  # pixels past the edge are invalid, never labelled
        lab, lab_valid = labels.read(win, fill="constant")
        x = ((torch.from_numpy(data) * scale - m) / s).masked_fill(~torch.from_numpy(valid)[None], 0.0)
        y = torch.from_numpy(lab[0]).round().long()
        y[~torch.from_numpy(lab_valid & valid)] = -1
        if ignore_index is not None:
            y[y == ignore_index] = -1
        xs.append(x)
        ys.append(y)
    feats = patch_tokens(backbone, torch.stack(xs))  # (T, N, D)
    side = tile // backbone.patch_size
    feats = feats.transpose(1, 2).reshape(len(corners), -1, side, side)  # (T, D, h, w)
    y = torch.stack(ys)  # (T, tile, tile)
    cols = torch.tensor([c for _, c in corners])[:, None, None] + torch.arange(tile)[None, None, :]
    test = (cols >= round((1 - test_fraction) * image.width)).expand_as(y)
    train_y = torch.where(test, torch.full_like(y, -1), y)
    test_y = torch.where(test, y, torch.full_like(y, -1))
    classes = sorted(int(v) for v in torch.unique(y[y >= 0]))
    if len(classes) < 2 or (train_y >= 0).sum() == 0 or (test_y >= 0).sum() == 0:
        raise ValueError(f"probe labels {labels.paths[0]} need two or more classes in both the train and test parts")
    lut = torch.full((max(classes) + 2,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    train_t, test_t = lut[train_y.clamp(min=-1)], lut[test_y.clamp(min=-1)]
    # A linear head commutes with bilinear upsampling (its weights sum to one), so the features are upsampled to
    # pixels once and the head is fitted on pixel rows: (P, D) -> classes.
    pixels = F.interpolate(feats, size=(tile, tile), mode="bilinear", align_corners=False)
    pixels = pixels.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    train_t, test_t = train_t.reshape(-1), test_t.reshape(-1)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.nonzero(train_t >= 0).squeeze(1)
    rows = rows[torch.randperm(rows.numel(), generator=gen)[:max_train_pixels]]
    torch.manual_seed(seed)
    head = nn.Linear(feats.shape[1], len(classes))
    optim = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    x_train, y_train = pixels[rows], train_t[rows]
    for _ in range(steps):
        loss = F.cross_entropy(head(x_train), y_train)
        optim.zero_grad()
        loss.backward()
        optim.step()
    keep = test_t >= 0
    with torch.no_grad():
        pred = head(pixels[keep]).argmax(1)
    truth_all = test_t[keep]
    iou: dict[int, float] = {}
    for k, cls in enumerate(classes):
        truth, guess = truth_all == k, pred == k
        if truth.any():
            iou[cls] = float((truth & guess).sum()) / float((truth | guess).sum())
    return ProbeResult(float(np.mean(list(iou.values()))), iou, int(rows.numel()), int(keep.sum()))


def run_diagnostics(
    backbone: nn.Module, probe: Tensor, gram_teacher: nn.Module | None = None, probe_fn: Any = None
) -> dict[str, float]:
    """The diagnostic row of one step: patch similarity, Gram distance (with a Gram teacher), probe mIoU."""
    tokens = patch_tokens(backbone, probe)
    row = patch_similarity(tokens)
    if gram_teacher is not None:
        row["gram_distance"] = gram_distance(tokens, patch_tokens(gram_teacher, probe))
    if probe_fn is not None:
        row["probe_miou"] = probe_fn(backbone).miou
    return row
