"""Saved models with the real heads of geodino.heads: linear, DPT, CHMv2-style binned heights with uncertainty."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geodino.bundle import ModelFileError, load_model, save_model
from geodino.cli import app
from geodino.heads import DenseModel, DPTHead, LinearHead, build_chmv2
from geodino.models.config import ARCHS
from geodino.models.vit import DinoVisionTransformer
from geodino.workflows.mapping import open_output
from geodino.workflows.predictor import load_predictor

warnings.filterwarnings("ignore", message=".*consolidated.*")

NEON = Path(__file__).resolve().parents[3] / "shared" / "data" / "neon" / "SJER_052_rgb.tif"


def _backbone(width: int = 64, seed: int = 0) -> DinoVisionTransformer:
    """The test ViT with 4 blocks (for 4-layer heads), LayerScale raised so that layers differ."""
    torch.manual_seed(seed)
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"].replace(depth=4, embed_dim=width))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.5)
    return model.eval()


def _x(side: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32))


def _linear_model() -> DenseModel:
    head = LinearHead(64, [2, 3], kind="classification", out_channels=3, class_names=["a", "b", "c"])
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    return DenseModel(_backbone(), head.eval()).eval()


def test_linear_head_round_trip(tmp_path: Path) -> None:
    model = _linear_model()
    loaded = load_model(save_model(tmp_path / "lin.gdm", model, tile=64))
    assert isinstance(loaded, DenseModel) and isinstance(loaded.head, LinearHead)
    with torch.inference_mode():
        assert torch.equal(model(_x()), loaded(_x()))
    info = loaded.geodino_info
    assert info.kind == "classification" and info.class_names == ("a", "b", "c") and info.output_activation == "softmax"
    assert info.factor == 1 and info.multiple == 16 and info.tile == 64


def _small_binned_dpt() -> DenseModel:
    """A DPT head with CHMv2's mixed log/linear bins and uncertainty, narrow enough to map a raster quickly."""
    bins = {"n_bins": 16, "min_depth": 0.001, "max_depth": 96.0}
    bins |= {"bins_strategy": "chmv2_mixlog", "norm_strategy": "chmv2_mixlog"}
    head = DPTHead(64, [0, 1, 2, 3], post_process_channels=[8, 8, 16, 16], channels=16, n_hidden_channels=8,
                   kind="regression", out_channels=16, units="m", bins=bins, uncertainty=True)  # fmt: skip
    return DenseModel(_backbone(), head.eval()).eval()


@pytest.mark.slow
def test_chmv2_model_round_trip_with_uncertainty(tmp_path: Path) -> None:
    model = build_chmv2(_backbone(), uncertainty=True)
    path = save_model(tmp_path / "chm.gdm", model, tile=64)
    loaded = load_model(path)
    with torch.inference_mode():
        assert torch.equal(model(_x()), loaded(_x()))
    info = loaded.geodino_info
    assert info.kind == "regression" and info.units == "m" and info.valid_range == (0.0, 96.0)
    assert info.out_channels == 2 and info.channel_names == ("height", "height_std")


def test_head_for_another_width_is_refused(tmp_path: Path) -> None:
    path = save_model(tmp_path / "lin.gdm", _linear_model())
    wide = save_model(tmp_path / "wide.gdm", _backbone(width=128))
    payload = torch.load(path, weights_only=True)
    payload["backbone"] = torch.load(wide, weights_only=True)["backbone"]
    torch.save(payload, tmp_path / "mismatch.gdm")
    with pytest.raises(ModelFileError, match=r"features 64 wide, the backbone .* 128 wide"):
        load_model(tmp_path / "mismatch.gdm")


def test_padded_output_has_no_stride_and_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no fixed output stride"):
        save_model(tmp_path / "p.gdm", build_chmv2(_backbone(), output_size="padded"))


@pytest.mark.shared_data
@pytest.mark.skipif(not NEON.exists(), reason=f"{NEON} is absent")
def test_map_a_saved_binned_dpt_model_writes_metres_and_uncertainty(tmp_path: Path) -> None:
    import rasterio

    path = save_model(tmp_path / "chm.gdm", _small_binned_dpt(), tile=64)
    out = tmp_path / "chm.zarr"
    result = CliRunner().invoke(app, ["map", str(NEON), "--model", str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = open_output(out)
    var = ds.prediction
    assert var.shape == (2, 400, 400) and var.attrs["units"] == "m"
    assert var.attrs["channel_names"] == ["height", "height_std"] and var.attrs["valid_range"] == [0.0, 96.0]
    with rasterio.open(NEON) as src:
        assert ds.rio.crs == src.crs and tuple(ds.rio.transform())[:6] == pytest.approx(tuple(src.transform)[:6])
    heights = var.values[0][np.isfinite(var.values[0])]
    assert heights.size > 0.9 * 400 * 400 and heights.min() >= 0.0 and heights.max() <= 96.0
    # The same through the Predictor with TTA: identical across chunkings.
    from geodino.workflows.mapping import map_raster

    predictor = load_predictor(path).with_options(tta="flips")
    a = map_raster(NEON, predictor, tmp_path / "a.zarr", chunk=96, progress=False).prediction.values
    b = map_raster(NEON, predictor, tmp_path / "b.zarr", chunk=(144, 240), progress=False).prediction.values
    assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("decoder", ["upernet"])
def test_smp_decoder_round_trip(decoder: str, tmp_path: Path) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from geodino.heads import SmpHead

    head = SmpHead(64, [0, 1, 2, 3], decoder=decoder, kind="classification", out_channels=4)
    model = DenseModel(_backbone(), head.eval()).eval()
    loaded = load_model(save_model(tmp_path / f"{decoder}.gdm", model))
    assert isinstance(loaded.head, SmpHead)
    with torch.inference_mode():
        assert torch.equal(model(_x()), loaded(_x()))
    assert loaded.geodino_info.out_channels == 4
