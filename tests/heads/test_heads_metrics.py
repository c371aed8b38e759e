"""Metrics against direct numpy computations and hand examples; accumulators over uneven chunks == one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geodino.heads.metrics import (
    BlockR2Accumulator,
    ConfusionAccumulator,
    RegressionAccumulator,
    block_r2,
    classification_metrics,
    confusion_matrix,
    regression_metrics,
)


def _heights(seed: int, shape=(40, 30)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth with many exact zeros (open ground), a noisy prediction and a random validity mask."""
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(shape) < 0.4, 0.0, rng.gamma(2.0, 6.0, shape)).astype(np.float32)
    pred = (truth + rng.normal(0.5, 2.0, shape)).astype(np.float32)
    valid = rng.random(shape) < 0.8
    return pred, truth, valid


def _numpy_regression(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    p, t = p.astype(np.float64), t.astype(np.float64)
    e = p - t
    return {
        "mae": np.mean(np.abs(e)),
        "rmse": np.sqrt(np.mean(e**2)),
        "r2": 1 - np.sum(e**2) / np.sum((t - t.mean()) ** 2),
        "bias": np.mean(p) - np.mean(t),
    }


# ---------------------------------------------------------------------------------------------------------------
# Regression.


def test_regression_metrics_match_numpy_with_a_mask() -> None:
    pred, truth, valid = _heights(0)
    got = regression_metrics(pred, truth, valid)
    want = _numpy_regression(pred[valid], truth[valid])
    assert set(got) == {"mae", "rmse", "r2", "bias", "n_pixels"}
    assert got["n_pixels"] == int(valid.sum())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert all(type(got[k]) is float for k in want) and type(got["n_pixels"]) is int


def test_zero_heights_are_counted() -> None:
    pred, truth, _ = _heights(1)
    zeros = truth == 0
    assert zeros.sum() > 100
    got = regression_metrics(pred, truth)
    assert got["n_pixels"] == truth.size  # every pixel is finite: the 0 m ones count
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred.astype(np.float64) - truth)), rel=1e-12)
    without_zeros = regression_metrics(pred, truth, ~zeros)
    assert without_zeros["n_pixels"] == truth.size - zeros.sum()
    assert without_zeros["mae"] != pytest.approx(got["mae"], rel=1e-3)


def test_nan_predictions_are_excluded_by_default_and_refused_inside_an_explicit_mask() -> None:
    pred, truth, _ = _heights(2)
    pred[:5] = np.nan  # e.g. outside the imagery footprint
    truth[-3:, :4] = np.nan  # label nodata
    got = regression_metrics(pred, truth)
    finite = np.isfinite(pred) & np.isfinite(truth)
    assert got["n_pixels"] == int(finite.sum()) == truth.size - 5 * 30 - 12
    assert got["mae"] == pytest.approx(_numpy_regression(pred[finite], truth[finite])["mae"], rel=1e-12)
    with pytest.raises(ValueError, match="150 pixels marked valid hold a NaN or infinite prediction"):
        regression_metrics(pred, truth, np.isfinite(truth))
    with pytest.raises(ValueError, match="infinite truth"):
        regression_metrics(np.zeros_like(truth), truth, np.ones(truth.shape, bool))


def test_regression_refuses_bad_inputs_and_marks_undefined_r2() -> None:
    truth = np.full((4, 4), 3.0)
    got = regression_metrics(truth + 1, truth)
    assert math.isnan(got["r2"]) and got["mae"] == 1.0 and got["bias"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        regression_metrics(np.zeros((4, 5)), truth)
    with pytest.raises(ValueError, match="boolean"):
        regression_metrics(truth, truth, np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="no valid pixel"):
        regression_metrics(truth, truth, np.zeros((4, 4), bool))


def test_regression_accumulator_over_uneven_chunks_equals_one_shot() -> None:
    pred, truth, valid = _heights(3, (60, 50))
    pred[7, :9] = np.nan
    valid &= np.isfinite(pred)
    one = regression_metrics(pred, truth, valid)
    acc = RegressionAccumulator()
    for rows in (slice(0, 7), slice(7, 48), slice(48, 60)):
        acc.update(pred[rows], truth[rows], valid[rows])
    acc.update(np.zeros((0, 50)), np.zeros((0, 50)))  # an empty chunk changes nothing
    chunked = acc.result()
    assert chunked["n_pixels"] == one["n_pixels"]
    for key in ("mae", "rmse", "r2", "bias"):
        assert chunked[key] == pytest.approx(one[key], rel=1e-12), key


def test_regression_accumulator_keeps_r2_accurate_far_from_zero() -> None:
    """Heights above a 1e8 offset: Σt² - (Σt)²/n would lose every digit of R²'s denominator, merged moments don't."""
    rng = np.random.default_rng(4)
    truth = 1e8 + rng.normal(0, 1, 30000)
    pred = truth + rng.normal(0, 0.5, 30000)
    want = _numpy_regression(pred - 1e8, truth - 1e8)["r2"]  # exact reference: shift first, then square
    acc = RegressionAccumulator()
    for part in np.split(np.arange(30000), [1000, 21000]):
        acc.update(pred[part], truth[part])
    assert acc.result()["r2"] == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(0.75, abs=0.02)  # 1 - var(e) / var(t) = 1 - 0.25


# ---------------------------------------------------------------------------------------------------------------
# Block-R².


def _block_example() -> tuple[np.ndarray, np.ndarray]:
    """A 109 x 159 map: 3 px border, 2 x 3 whole 50 px blocks, 3 leftover rows and columns at the bottom/right.

    Truth is constant per block: [[0, 2, 4], [6, 8, 10]]; prediction block means [[1, 2, 3], [6, 9, 10]], with a
    +-5 checkerboard inside every block (it cancels in the block means, not in a per-pixel R²). Border and leftover
    pixels hold 1000 m in the truth: if any of them counted, the result would be far off.
    """
    truth = np.full((109, 159), 1000.0)
    pred = np.zeros((109, 159))
    t_blocks = [[0, 2, 4], [6, 8, 10]]
    p_blocks = [[1, 2, 3], [6, 9, 10]]
    checker = np.where((np.add.outer(np.arange(50), np.arange(50)) % 2) == 0, 5.0, -5.0)
    for i in range(2):
        for j in range(3):
            ys, xs = slice(3 + 50 * i, 53 + 50 * i), slice(3 + 50 * j, 53 + 50 * j)
            truth[ys, xs] = t_blocks[i][j]
            pred[ys, xs] = p_blocks[i][j] + checker
    return pred, truth


def test_block_r2_hand_example() -> None:
    pred, truth = _block_example()
    # Block truth means 0, 2, 4, 6, 8, 10 (mean 5): SS_tot = 25 + 9 + 1 + 1 + 9 + 25 = 70.
    # Block residuals 1, 0, -1, 0, 1, 0: SS_res = 3.  R² = 1 - 3/70.
    assert block_r2(pred, truth) == pytest.approx(1 - 3 / 70, abs=1e-12)
    assert block_r2(pred, truth, block=50, crop=3) == pytest.approx(67 / 70, abs=1e-12)


def test_block_r2_masked_blocks() -> None:
    pred, truth = _block_example()
    valid = np.ones(truth.shape, bool)
    valid[3:33, 3:53] = False  # block (0, 0): 40 % valid left, below the 50 % needed, so it drops out
    valid[53:103, 103:128] = False  # block (1, 2): half valid, still counted (its mean is unchanged)
    # Blocks left: truth 2, 4, 6, 8, 10 (mean 6): SS_tot = 16 + 4 + 0 + 4 + 16 = 40; residuals 0, -1, 0, 1, 0.
    assert block_r2(pred, truth, valid) == pytest.approx(1 - 2 / 40, abs=1e-12)
    # Fewer than two blocks: undefined.
    assert math.isnan(block_r2(pred[:60, :60], truth[:60, :60]))
    with pytest.raises(ValueError, match=r"\(h, w\) maps"):
        block_r2(pred[None], truth[None])


def test_block_r2_small_blocks_against_numpy_block_means() -> None:
    """Random map, block 4, crop 1, partial masks: the block means recomputed with a reshape."""
    rng = np.random.default_rng(5)
    truth = rng.gamma(2, 5, (23, 30))
    pred = truth + rng.normal(0, 3, truth.shape)
    valid = rng.random(truth.shape) < 0.7
    inner = (slice(1, 1 + 20), slice(1, 1 + 28))  # 5 x 7 whole blocks of 4 px
    shape = (5, 4, 7, 4)
    v = valid[inner].reshape(shape).astype(float)
    n = v.sum(axis=(1, 3))
    pm = (pred[inner].reshape(shape) * v).sum(axis=(1, 3)) / np.maximum(n, 1)
    tm = (truth[inner].reshape(shape) * v).sum(axis=(1, 3)) / np.maximum(n, 1)
    used = n >= 8
    want = 1 - np.sum((pm[used] - tm[used]) ** 2) / np.sum((tm[used] - tm[used].mean()) ** 2)
    assert 5 < used.sum() < used.size
    assert block_r2(pred, truth, valid, block=4, crop=1) == pytest.approx(want, rel=1e-12)


def test_block_r2_accumulator_over_uneven_chunks_equals_one_shot() -> None:
    pred, truth = _block_example()
    rng = np.random.default_rng(6)
    pred = pred + rng.normal(0, 1, pred.shape)
    valid = rng.random(pred.shape) < 0.9
    one = block_r2(pred, truth, valid)
    acc = BlockR2Accumulator(truth.shape)
    for r0, r1, c0, c1 in ((0, 37, 0, 159), (37, 109, 0, 71), (37, 109, 71, 159)):  # straddle block edges
        acc.update(pred[r0:r1, c0:c1], truth[r0:r1, c0:c1], valid[r0:r1, c0:c1], row=r0, col=c0)
    assert acc.result() == pytest.approx(one, rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        acc.update(pred[:10, :10], truth[:10, :10], row=100)


# ---------------------------------------------------------------------------------------------------------------
# Classification.


def test_confusion_matrix_matches_counting() -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 4, (30, 20)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape)).astype(np.uint8)
    valid = rng.random(truth.shape) < 0.75
    truth[~valid & (rng.random(truth.shape) < 0.5)] = 255  # label nodata, masked out
    got = confusion_matrix(pred, truth, 4, valid)
    want = np.array([[np.sum((truth == i) & (pred == j) & valid) for j in range(4)] for i in range(4)])
    assert got.dtype == np.int64 and got.shape == (4, 4)
    np.testing.assert_array_equal(got, want)


def test_confusion_matrix_refuses_values_outside_the_classes() -> None:
    truth = np.array([[0, 1], [255, 2]], np.uint8)
    pred = np.array([[0, 1], [1, 2]], np.uint8)
    with pytest.raises(ValueError, match=r"truth holds values \[255\] outside the 3 classes"):
        confusion_matrix(pred, truth, 3)
    assert confusion_matrix(pred, truth, 3, truth != 255).sum() == 3
    with pytest.raises(ValueError, match="non-integer"):
        confusion_matrix(pred + 0.5, truth.astype(float), 3, truth != 255)
    floats = truth.astype(float)
    floats[1, 0] = np.nan  # float labels with NaN nodata: excluded by the default mask
    np.testing.assert_array_equal(confusion_matrix(pred, floats, 3), np.eye(3, dtype=np.int64))


def test_classification_metrics_hand_example() -> None:
    # Rows truth, columns prediction; class "water" never occurs.
    c = np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 4]])
    got = classification_metrics(c, ["forest", "grass", "water", "urban"])
    # forest: TP 5, FP 2 + 1, FN 1; grass: TP 3, FP 1, FN 2; urban: TP 4, FP 0, FN 1.
    assert got["per_class_iou"] == pytest.approx({"forest": 5 / 9, "grass": 3 / 6, "water": None, "urban": 4 / 5})
    assert got["miou"] == pytest.approx((5 / 9 + 1 / 2 + 4 / 5) / 3)
    f1 = {"forest": 10 / 14, "grass": 6 / 9, "water": None, "urban": 8 / 9}
    assert got["f1"]["per_class"] == pytest.approx(f1)
    assert got["f1"]["macro"] == pytest.approx((10 / 14 + 6 / 9 + 8 / 9) / 3)
    assert got["overall_accuracy"] == pytest.approx(12 / 16)
    assert got["confusion_matrix"] == c.tolist() and got["class_names"] == ["forest", "grass", "water", "urban"]
    assert got["n_pixels"] == 16


def test_class_only_predicted_counts_with_zero_iou() -> None:
    c = np.array([[3, 1], [0, 0]])  # class b is predicted once, never true
    got = classification_metrics(c, ["a", "b"])
    assert got["per_class_iou"] == {"a": 0.75, "b": 0.0}
    assert got["miou"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="unique class names"):
        classification_metrics(c, ["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.zeros((2, 2), int), ["a", "b"])


def test_confusion_accumulator_over_uneven_chunks_equals_one_shot() -> None:
    rng = np.random.default_rng(8)
    truth = rng.integers(0, 5, (50, 33))
    pred = rng.integers(0, 5, (50, 33))
    valid = rng.random(truth.shape) < 0.6
    acc = ConfusionAccumulator(5)
    for rows in (slice(0, 3), slice(3, 31), slice(31, 50)):
        acc.update(pred[rows], truth[rows], valid[rows])
    names = list("abcde")
    np.testing.assert_array_equal(acc.matrix, confusion_matrix(pred, truth, 5, valid))
    assert acc.result(names) == classification_metrics(confusion_matrix(pred, truth, 5, valid), names)


def test_metrics_and_reports_import_no_torch_and_no_matplotlib() -> None:
    """Pure pieces: a fresh interpreter imports them without torch or matplotlib (a process boundary is the point)."""
    import subprocess
    import sys

    code = (
        "import sys, geodino.heads.metrics, geodino.heads.report, geodino.heads.plots; "
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'xarray') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unmasked_nodata_sentinels_are_refused() -> None:
    truth = np.ones((60, 60), np.float32)
    truth[0, 0] = -3.4e38  # a float CHM's nodata value, finite, so valid=None alone would count it
    with pytest.raises(ValueError, match=r"1 counted truth values are nodata sentinels \(e.g. -3.4e\+38"):
        regression_metrics(np.ones((60, 60)), truth)
    with pytest.raises(ValueError, match="prediction values are nodata sentinels"):
        block_r2(truth[::-1], np.ones((60, 60)), block=10, crop=0)
    assert regression_metrics(np.ones((60, 60)), truth, truth > -1e38)["n_pixels"] == 3599
