"""accumulate_patch gives, bit for bit, the whole-patch float32 formula sum(where(valid, w * pred, 0)) — it is
computed channel by channel through a reused buffer for speed, and that must not change a single output bit."""

from __future__ import annotations

import numpy as np

from geodino.raster.blend import accumulate_patch, window_weights
from geodino.raster.windows import Window


def _reference(acc, wsum, pred, row, col, canvas, weights, valid) -> None:
    """The whole-patch formula: one (C, h, w) product, masked, added once."""
    p = pred.shape[-1]
    inter = Window(row, col, p, p).intersection(canvas)
    assert inter is not None
    in_patch, in_canvas = inter.slices_in(Window(row, col, p, p)), inter.slices_in(canvas)
    wk = weights[in_patch]
    contrib = wk * pred[(slice(None), *in_patch)]
    if valid is not None:
        vk = valid[in_patch]
        wk = np.where(vk, wk, np.float32(0))
        contrib = np.where(vk, contrib, np.float32(0))
    acc[(slice(None), *in_canvas)] += contrib
    wsum[in_canvas] += wk


def test_channelwise_accumulation_is_bit_identical_to_the_whole_patch_formula() -> None:
    rng = np.random.default_rng(7)
    k, p = 5, 16
    preds = rng.normal(scale=1e3, size=(6, k, p, p)).astype(np.float32)
    preds[2, :, 3:7, 3:9] = np.nan  # nodata under invalid pixels must not leak
    preds[3, 1, 0, 0] = -np.inf
    valid = rng.random((6, p, p)) > 0.15
    valid[2, 3:7, 3:9] = False
    valid[3, 0, 0] = False
    valid[4] = True  # a patch without nodata (the unmasked path)
    rows, cols = [0, 0, 9, 9, -5, 20], [0, 11, 0, 11, 3, 20]
    canvas, weights = Window(1, 2, 26, 27), window_weights(p, "hann")
    acc, wsum = np.zeros((k, 26, 27), np.float32), np.zeros((26, 27), np.float32)
    ref_acc, ref_wsum = acc.copy(), wsum.copy()
    for i in range(6):
        mask = None if i == 5 else valid[i]
        accumulate_patch(acc, wsum, preds[i], rows[i], cols[i], canvas, weights, mask)
        _reference(ref_acc, ref_wsum, preds[i], rows[i], cols[i], canvas, weights, mask)
    assert acc.tobytes() == ref_acc.tobytes()
    assert wsum.tobytes() == ref_wsum.tobytes()
    assert np.isfinite(acc).all()
