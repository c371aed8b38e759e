"""Blending overlapping patch predictions into a chunk (pure numpy, float32).

Each patch prediction is multiplied by a separable window ``w`` and accumulated with ``w`` into two float32
canvases; the chunk's result is ``sum(w * pred) / sum(w)``. Patches are added one at a time in the order given
(the global row-major patch order of :func:`geodino.raster.plan.plan_chunks`), with elementwise float32
operations only, so a pixel's value depends only on the patches covering it — not on how the raster was chunked.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from geodino.raster.windows import Window

__all__ = ["accumulate_patch", "argmax_channels", "blend_patches", "finalize", "valid_to_output", "window_weights"]

WindowKind = Literal["hann", "center", "uniform"]

#: Smallest weight of the "hann" window, relative to its peak of 1.
HANN_FLOOR = 1e-3
#: Weight of the "center" window outside its central stride x stride square.
CENTER_EPSILON = 1e-6


def _hann_1d(patch: int) -> np.ndarray:
    # Raised cosine sampled at pixel centres, sin^2(pi (i + 1/2) / P), lifted so it is >= HANN_FLOOR everywhere.
    t = (np.arange(patch, dtype=np.float64) + 0.5) / patch
    return HANN_FLOOR + (1.0 - HANN_FLOOR) * np.sin(np.pi * t) ** 2


def _center_1d(patch: int, stride: int) -> np.ndarray:
    # 1 on [(P - S) // 2, (P - S) // 2 + S): with origins every S these squares tile the plane exactly once.
    w = np.full(patch, CENTER_EPSILON, dtype=np.float64)
    start = (patch - stride) // 2
    w[start : start + stride] = 1.0
    return w


def window_weights(patch: int, kind: WindowKind = "hann", stride: int | None = None) -> np.ndarray:
    """A separable blending window, strictly positive everywhere.

    Args:
        patch: Patch size p (in the pixels of the predictions it weights, i.e. OUTPUT pixels).
        kind: "hann": raised cosine with a floor of ``HANN_FLOOR``; "center": 1 in the central
            ``stride x stride`` square and ``CENTER_EPSILON`` elsewhere (centre-crop stitching);
            "uniform": all ones.
        stride: Patch step in the same pixels; required for "center".

    Returns:
        (patch, patch) float32 weights.
    """
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    if kind == "hann":
        w1 = _hann_1d(patch)
    elif kind == "center":
        if stride is None or not 1 <= stride <= patch:
            raise ValueError(f"the 'center' window needs 1 <= stride <= patch ({patch}), got stride={stride}")
        w1 = _center_1d(patch, stride)
    elif kind == "uniform":
        w1 = np.ones(patch, dtype=np.float64)
    else:
        raise ValueError(f"unknown window kind {kind!r}; expected 'hann', 'center' or 'uniform'")
    return np.outer(w1, w1).astype(np.float32)


def blend_patches(
    preds: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    canvas: Window,
    weights: np.ndarray,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Accumulate weighted patch predictions into a canvas window.

    Args:
        preds: (K, C, p, p) predictions in OUTPUT pixels (cast to float32).
        rows: (K,) global output-pixel row origins of the patches.
        cols: (K,) global output-pixel column origins.
        canvas: Output-pixel window to accumulate into (typically ``task.core``); patch parts outside it are
            dropped.
        weights: (p, p) window from :func:`window_weights`.
        valid: (K, p, p) bool, or None for all valid; invalid (nodata) pixels get zero weight, and whatever the
            prediction holds there (even NaN) is ignored.

    Returns:
        ``acc`` (C, h, w) float32 = sum(w * pred) and ``wsum`` (h, w) float32 = sum(w), over ``canvas``.
    """
    preds = np.asarray(preds)
    if preds.ndim != 4 or preds.shape[-1] != preds.shape[-2]:
        raise ValueError(f"preds must be (K, C, p, p), got shape {preds.shape}")
    k_count, channels, p, _ = preds.shape
    if len(rows) != k_count or len(cols) != k_count:
        raise ValueError(f"{k_count} predictions but {len(rows)} row and {len(cols)} column origins")
    if weights.shape != (p, p):
        raise ValueError(f"weights of shape {weights.shape} do not match patches of {p}x{p}")
    if valid is not None and valid.shape != (k_count, p, p):
        raise ValueError(f"valid must be (K, p, p) = {(k_count, p, p)}, got {valid.shape}")
    w = weights.astype(np.float32, copy=False)
    acc = np.zeros((channels, canvas.height, canvas.width), dtype=np.float32)
    wsum = np.zeros((canvas.height, canvas.width), dtype=np.float32)
    for k in range(k_count):
        accumulate_patch(
            acc, wsum, preds[k], int(rows[k]), int(cols[k]), canvas, w, None if valid is None else valid[k]
        )
    return acc, wsum


def accumulate_patch(
    acc: np.ndarray,
    wsum: np.ndarray,
    pred: np.ndarray,
    row: int,
    col: int,
    canvas: Window,
    weights: np.ndarray,
    valid: np.ndarray | None = None,
) -> None:
    """Add one weighted patch prediction to a canvas's running sums, in place.

    ``acc += w * pred`` and ``wsum += w`` over the patch's overlap with the canvas: the same float32 operations,
    in the same order, as :func:`blend_patches` over a list of patches, with memory for one patch only.

    Args:
        acc: (C, h, w) float32 weighted sums over ``canvas`` (updated).
        wsum: (h, w) float32 weight sums over ``canvas`` (updated).
        pred: (C, p, p) prediction in OUTPUT pixels.
        row: Global output-pixel row origin of the patch.
        col: Global output-pixel column origin.
        canvas: The output-pixel window ``acc`` and ``wsum`` cover.
        weights: (p, p) float32 window.
        valid: (p, p) bool, or None for all valid; invalid pixels get zero weight and their values are ignored.
    """
    p = pred.shape[-1]
    footprint = Window(row, col, p, p)
    inter = footprint.intersection(canvas)
    if inter is None:
        return
    in_patch = inter.slices_in(footprint)
    in_canvas = inter.slices_in(canvas)
    wk = weights[in_patch]
    part = pred[(slice(None), *in_patch)].astype(np.float32, copy=False)
    vk = None if valid is None else valid[in_patch]
    if vk is not None and vk.all():  # most patches hold no nodata: skip the masking copies
        vk = None
    if vk is not None:
        wk = np.where(vk, wk, np.float32(0))
    # Channel by channel through one (h, w) buffer that stays in cache (the same float32 multiply, then add, per
    # element as a whole-patch product would do; no (C, h, w) temporary).
    term = np.empty(wk.shape, dtype=np.float32)
    for c in range(part.shape[0]):
        np.multiply(wk, part[c], out=term)
        if vk is not None:
            np.copyto(term, np.float32(0), where=~vk)  # w * NaN would be NaN, not 0
        plane = acc[(c, *in_canvas)]
        np.add(plane, term, out=plane)
    wsum[in_canvas] += wk


def finalize(acc: np.ndarray, wsum: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Divide accumulated predictions by their weights.

    Args:
        acc: (C, h, w) float32 weighted sums.
        wsum: (h, w) float32 weight sums.
        in_place: Write the result into ``acc`` (saves a chunk-sized allocation when the sums are not needed
            afterwards).

    Returns:
        (C, h, w) float32; NaN where ``wsum == 0`` (no valid input under the pixel).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(acc, wsum, out=acc) if in_place else np.divide(acc, wsum, dtype=np.float32)
    empty = wsum <= 0
    if empty.any():
        out[:, empty] = np.nan
    return out


def argmax_channels(values: np.ndarray) -> np.ndarray:
    """Index of the largest channel per pixel, as ``np.argmax(values, axis=0)`` (first index on ties).

    One pass per channel over contiguous planes, which is faster than numpy's strided argmax over axis 0.

    Args:
        values: (C, h, w) float array, 1 <= C <= 256.

    Returns:
        (h, w) uint8. Where a pixel holds NaN the index is unspecified (callers mask those pixels).
    """
    if not 1 <= values.shape[0] <= 256:
        raise ValueError(f"argmax_channels needs 1 to 256 channels, got {values.shape[0]}")
    best = values[0].copy()
    index = np.zeros(values.shape[1:], dtype=np.uint8)
    better = np.empty(values.shape[1:], dtype=bool)
    for k in range(1, values.shape[0]):
        np.greater(values[k], best, out=better)  # strict: the first of equal maxima wins, as in np.argmax
        np.copyto(index, k, where=better)
        np.maximum(best, values[k], out=best)
    return index


def valid_to_output(valid: np.ndarray, factor: int) -> np.ndarray:
    """Reduce an input-pixel validity mask to output pixels.

    Rule: an output pixel covers a ``factor x factor`` block of input pixels (blocks anchored at pixel (0, 0); the
    last block may hang over the raster's edge) and is valid if ANY input pixel of its block is valid. So an
    embedding cell over a partly covered area still gets a prediction, and only cells with no data at all are
    NaN.

    Args:
        valid: (..., H, W) bool mask of input pixels.
        factor: Input pixels per output pixel.

    Returns:
        (..., ceil(H / factor), ceil(W / factor)) bool.
    """
    valid = np.asarray(valid, dtype=bool)
    if factor == 1:
        return valid.copy()
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    *lead, h, w = valid.shape
    oh, ow = -(-h // factor), -(-w // factor)
    padded = np.zeros((*lead, oh * factor, ow * factor), dtype=bool)
    padded[..., :h, :w] = valid
    blocks = padded.reshape(*lead, oh, factor, ow, factor)
    return blocks.any(axis=(-3, -1))
