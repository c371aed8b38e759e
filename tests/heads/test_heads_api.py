"""geodino.heads.api.train_head + geodino.workflows.evaluation.evaluate on the generated landscape (known truth).

The saved model maps with map_raster and no other option; the evaluation report is recomputed here with numpy
from the mapped store and the truth the landscape generator returned (not from any geodino reader).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geodino.workflows.landscape import CLASS_COLOURS, CLASS_NAMES, landscape, write_landscape

SIZE, SPLIT, TILE = 192, 128, 64
CLASSES = [f"{i}={n}" for i, n in enumerate(CLASS_NAMES)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    s = landscape(SIZE, seed=5)
    return s, write_landscape(s, root, split_col=SPLIT)


def test_normalisation_is_the_mapping_workflows_rule() -> None:
    from geodino import hub
    from geodino.heads.api import normalization_of
    from geodino.workflows.predictor import from_backbone

    backbone = hub.dinov3_vit_test()
    for dtype in (np.uint8, np.uint16, np.float32):
        assert normalization_of(backbone, dtype) == from_backbone(backbone).normalization_for(dtype)


def test_land_cover_head_trains_saves_maps_and_evaluates(scene, tmp_path) -> None:
    import xarray as xr

    from geodino.bundle import read_model_info
    from geodino.heads.api import train_head
    from geodino.workflows.evaluation import evaluate
    from geodino.workflows.mapping import map_raster

    s, paths = scene
    result = train_head(
        [paths["train"]], [paths["classes"]], task="land-cover", backbone="test", out=tmp_path / "lc.gdm",
        classes=CLASSES, class_colours=CLASS_COLOURS, tile=TILE, epochs=2, block_size=TILE, seed=0,
    )  # fmt: skip
    assert result.model_path.exists() and result.summary_path.exists() and result.history_path.exists()
    summary = json.loads(result.summary_path.read_text())
    assert summary["classes"] == {"names": list(CLASS_NAMES), "values": [0, 1, 2, 3]}
    assert summary["backbone"]["random_weights"] is True and summary["tile"] == TILE
    assert sum(summary["split"]["chips"].values()) == (SIZE // TILE) * (SPLIT // TILE)
    info = read_model_info(result.model_path)
    assert info.kind == "classification" and info.class_names == CLASS_NAMES and info.tile == TILE
    assert info.class_colours == CLASS_COLOURS and info.in_bands == 3

    mapped = map_raster(paths["holdout"], result.model_path, tmp_path / "plain.zarr", progress=False)
    assert mapped["classes"].shape == (SIZE, SIZE - SPLIT)

    ev = evaluate(result.model_path, paths["holdout"], paths["classes"], tmp_path / "report", figures=False)
    report = json.loads(ev.report_path.read_text())
    pred = xr.open_zarr(ev.prediction)["classes"].values.astype(np.int64)
    truth = s.classes[:, SPLIT:].astype(np.int64)  # the generator's truth of the held-out columns
    cm = np.zeros((4, 4), np.int64)
    np.add.at(cm, (truth.ravel(), pred.ravel()), 1)
    assert report["confusion_matrix"] == cm.tolist() and report["n_pixels"] == truth.size
    assert report["overall_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["n_labelled_unpredicted"] == 0


def test_canopy_height_head_report_matches_numpy(scene, tmp_path) -> None:
    import xarray as xr

    from geodino.heads.api import train_head
    from geodino.workflows.evaluation import evaluate

    s, paths = scene
    result = train_head(
        [paths["train"]], [paths["heights"]], task="canopy-height", backbone="test", out=tmp_path / "ch.gdm",
        tile=TILE, epochs=2, split="none",
    )  # fmt: skip
    assert result.summary["val_metric"] is None
    ev = evaluate(result.model_path, paths["holdout"], paths["heights"], tmp_path / "report", figures=False)
    pred = xr.open_zarr(ev.prediction)["prediction"].isel(band=0).values.astype(np.float64)
    truth = s.heights[:, SPLIT:].astype(np.float64)
    e = pred - truth
    assert ev.report["n_pixels"] == truth.size  # 0 m pixels are counted: most of the scene
    assert ev.report["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-5)
    assert ev.report["rmse"] == pytest.approx(np.sqrt((e**2).mean()), rel=1e-5)
    assert ev.report["r2"] == pytest.approx(1 - (e**2).sum() / ((truth - truth.mean()) ** 2).sum(), rel=1e-5)


def test_a_binned_dpt_head_on_a_four_block_backbone_saves_and_maps(scene, tmp_path) -> None:
    from heads_helpers import make_tiny_backbone

    from geodino.bundle import read_model_info
    from geodino.heads.api import train_head
    from geodino.workflows.mapping import map_raster

    _, paths = scene
    result = train_head(
        [paths["train"]], [paths["heights"]], task="canopy-height", backbone=make_tiny_backbone(), head="dpt",
        out=tmp_path / "dpt.gdm", tile=TILE, epochs=1, split="none",
    )  # fmt: skip
    assert result.summary["split"]["chips"] == {"train": (SIZE // TILE) * (SPLIT // TILE)}
    info = read_model_info(result.model_path)
    assert info.kind == "regression" and info.units == "m" and info.valid_range[0] == 0.0  # CHMv2 bins: 0..top
    ds = map_raster(paths["holdout"], result.model_path, tmp_path / "dpt.zarr", progress=False)
    heights = ds["prediction"].values
    assert heights.shape == (1, SIZE, SIZE - SPLIT) and np.nanmin(heights) >= 0.0


def test_evaluate_without_matplotlib_writes_the_report_and_says_why_no_figures(scene, tmp_path, monkeypatch) -> None:
    import sys

    from geodino.heads.api import train_head
    from geodino.workflows.evaluation import evaluate

    _, paths = scene
    model = train_head(
        [paths["train"]], [paths["heights"]], task="canopy-height", backbone="test", out=tmp_path / "m.gdm",
        tile=TILE, epochs=1, split="none",
    ).model_path  # fmt: skip
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on a machine without the plots extra
    with pytest.warns(UserWarning, match="matplotlib"):
        ev = evaluate(model, paths["holdout"], paths["heights"], tmp_path / "r")
    assert ev.report_path.exists() and ev.figures == () and not list((tmp_path / "r").glob("*.png"))


def test_same_seed_same_model_whatever_the_global_rng_holds(scene, tmp_path) -> None:
    """The head's initial weights come from `seed`: two runs give the same weights though torch's RNG differs."""
    import torch

    from geodino.bundle import load_model
    from geodino.heads.api import train_head

    _, paths = scene
    states = []
    for run, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # as if other code had drawn from the global generator first
        result = train_head(
            [paths["train"]], [paths["classes"]], task="land-cover", backbone="test", out=tmp_path / f"m{run}.gdm",
            classes=CLASSES, tile=TILE, epochs=1, block_size=TILE, seed=3, progress=False,
        )  # fmt: skip
        states.append(load_model(result.model_path).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
