"""Patch-similarity diagnostic, Gram distance and the dense linear probe, on hand-made tokens and real rasters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasters import write_raster
from training_data_helpers import S2_13BAND, single_thread, textured_scene, write_rgb  # noqa: F401 (fixture)

from geodino.hub import dinov3_vit_test
from geodino.raster.source import RasterSource
from geodino.training.data import RasterWindows, open_sources
from geodino.training.diagnostics import (
    dense_linear_probe,
    gram_distance,
    patch_similarity,
    probe_images,
    run_diagnostics,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_patch_similarity_on_known_tokens():
    same = torch.ones(2, 5, 8)
    stats = patch_similarity(same)
    assert stats["patch_sim_mean"] == pytest.approx(1.0) and stats["patch_sim_std"] == pytest.approx(0.0, abs=1e-6)
    ortho = torch.eye(4)[None]  # four orthogonal tokens
    assert patch_similarity(ortho)["patch_sim_mean"] == pytest.approx(0.0)
    # Two tokens at 60 degrees and one opposite to the first: pairs cos = 0.5, -1, -0.5 (each counted twice).
    t = torch.tensor([[[1.0, 0.0], [0.5, 3**0.5 / 2], [-1.0, 0.0]]])
    stats = patch_similarity(t)
    assert stats["patch_sim_mean"] == pytest.approx((0.5 - 1.0 - 0.5) / 3)
    assert stats["patch_sim_q50"] == pytest.approx(-0.5)
    assert stats["patch_sim_q05"] == pytest.approx(-1.0) and stats["patch_sim_q95"] == pytest.approx(0.5, abs=0.01)


def test_gram_distance_on_known_matrices():
    x = torch.eye(3)[None]  # Gram = I
    g = torch.ones(1, 3, 2)  # Gram = all ones
    assert gram_distance(x, x) == 0.0
    assert gram_distance(x, g) == pytest.approx(6 / 9)  # six off-diagonal entries differ by 1


def test_probe_set_and_diagnostic_row(tmp_path):
    path = write_rgb(tmp_path / "a.tif", size=96)
    windows = RasterWindows(open_sources([path], window_size=64), 64)
    probe = probe_images(windows, 4, 32, [0.5] * 3, [0.2] * 3)
    assert probe.shape == (4, 3, 32, 32)
    again = probe_images(windows, 4, 32, [0.5] * 3, [0.2] * 3)
    assert torch.equal(probe, again)  # fixed probe set
    model = dinov3_vit_test()
    row = run_diagnostics(model, probe, gram_teacher=model)
    assert -1.0 <= row["patch_sim_q05"] <= row["patch_sim_q50"] <= row["patch_sim_q95"] <= 1.0
    assert row["gram_distance"] == pytest.approx(0.0, abs=1e-10)
    other = dinov3_vit_test()
    assert run_diagnostics(model, probe, gram_teacher=other)["gram_distance"] > 0


def test_linear_probe_separates_classes_written_into_the_bands(tmp_path):
    # Two classes, left/right stripes alternating every 16 rows; class 2 pixels are much brighter.
    image = textured_scene(3, 96, seed=4).astype(np.float32) * 0.3
    labels = np.ones((1, 96, 96), np.uint8)
    for r in range(0, 96, 32):
        labels[0, r : r + 16] = 2
    image[:, labels[0] == 2] += 150
    img = write_raster(tmp_path / "img.tif", image.astype(np.uint8))
    lab = write_raster(tmp_path / "lab.tif", labels)
    result = dense_linear_probe(
        dinov3_vit_test(), RasterSource(img), RasterSource(lab), mean=[0.4] * 3, std=[0.3] * 3, scale=1 / 255,
        tile=32, steps=60, max_train_pixels=2000,
    )  # fmt: skip
    assert set(result.iou) == {1, 2}
    assert result.miou > 0.6  # brightness separates the classes even through a random backbone
    assert result.test_pixels == 96 * 32 and result.train_pixels == 2000
    wrong = write_raster(tmp_path / "wrong.tif", labels[:, :64, :64])
    with pytest.raises(ValueError, match="not on the grid"):
        dense_linear_probe(dinov3_vit_test(), RasterSource(img), RasterSource(wrong), mean=[0.4] * 3,
                           std=[0.3] * 3, scale=1 / 255, tile=32)  # fmt: skip


@pytest.mark.shared_data
@pytest.mark.skipif(not S2_13BAND.is_file(), reason=f"shared raster not found: {S2_13BAND}")
def test_linear_probe_on_sentinel2_land_cover():
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"].replace(in_chans=13))
    result = dense_linear_probe(
        model, RasterSource(S2_13BAND), RasterSource(S2_13BAND.parent / "eolearn_lulc.tif"),
        mean=[0.1] * 13, std=[0.05] * 13, scale=1.0, tile=32, steps=30,
    )  # fmt: skip
    assert 0.0 <= result.miou <= 1.0 and len(result.iou) >= 2
