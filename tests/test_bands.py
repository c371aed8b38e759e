"""N-band adaptation of RGB backbones (geodino.models.bands) and per-band raster statistics (geodino.raster.stats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasters import write_raster

from geodino.hub import dinov3_vit_test
from geodino.models.bands import LANDSAT89_RGB, SENTINEL2_RGB, adapt_bands, resolve_rgb_map
from geodino.models.checkpoint import load_backbone, save_backbone
from geodino.models.meta import SAT_MEAN, SAT_STD
from geodino.raster.source import RasterSourceError
from geodino.raster.stats import band_statistics, decimated_shape

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
S2_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


@pytest.fixture
def rgb_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = dinov3_vit_test().eval()
    # non-trivial LayerScale so that the patch embedding matters downstream
    for block in model.blocks:
        block.ls1.gamma.data.fill_(0.5)
        block.ls2.gamma.data.fill_(0.5)
    return model


def _stats(n: int) -> tuple[list[float], list[float]]:
    return [0.1 + 0.01 * i for i in range(n)], [0.05 + 0.01 * i for i in range(n)]


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        feats = model.forward_features(x)
        layers = model.get_intermediate_layers(x, n=2, return_class_token=True)
    return [feats["x_norm_clstoken"], feats["x_norm_patchtokens"], *(t for pair in layers for t in pair)]


# ------------------------------------------------------------------------------------------------- rgb_map
def test_rgb_map_reproduces_the_rgb_model_exactly(rgb_model: torch.nn.Module) -> None:
    # mapped bands keep the RGB model's relative channel order (red, green, blue): bit-identical outputs
    bands = ("B01", "B04", "nir", "B03", "B08", "B02")
    mean, std = _stats(6)
    before = {k: v.clone() for k, v in rgb_model.state_dict().items()}
    adapted = adapt_bands(
        rgb_model,
        bands,
        mean={b: m for b, m in zip(bands, mean, strict=True) if b[-1] not in "234"},
        std={b: s for b, s in zip(bands, std, strict=True) if b[-1] not in "234"},
    )
    x = torch.randn(2, 6, 48, 64)
    x[:, [0, 2, 4]] *= 100.0  # large values on the unmapped bands must have no effect at all
    for got, want in zip(_outputs(adapted, x), _outputs(rgb_model, x[:, [1, 3, 5]]), strict=True):
        assert torch.equal(got, want)
    # the input model is untouched
    assert rgb_model.in_chans == 3 and rgb_model.config.in_chans == 3
    assert rgb_model.meta.bands == ("red", "green", "blue") and rgb_model.meta.band_adaptation is None
    assert all(torch.equal(before[k], v) for k, v in rgb_model.state_dict().items())
    # metadata of the adapted model
    assert adapted.in_chans == 6 and adapted.config.in_chans == 6
    assert adapted.meta.bands == bands
    rgb = dict(zip(rgb_model.meta.bands, zip(rgb_model.meta.mean, rgb_model.meta.std, strict=True), strict=True))
    assert (adapted.meta.mean[1], adapted.meta.std[1]) == rgb["red"]
    assert (adapted.meta.mean[3], adapted.meta.std[3]) == rgb["green"]
    assert (adapted.meta.mean[5], adapted.meta.std[5]) == rgb["blue"]
    assert adapted.meta.mean[0] == mean[0] and adapted.meta.std[4] == std[4]
    assert "rgb_map" in adapted.meta.band_adaptation and "B04->red" in adapted.meta.band_adaptation


def test_rgb_map_on_sentinel2_order_copies_filters(rgb_model: torch.nn.Module) -> None:
    mean, std = _stats(13)
    adapted = adapt_bands(rgb_model, S2_13, mean=mean, std=std)
    w_rgb, w = rgb_model.patch_embed.proj.weight, adapted.patch_embed.proj.weight
    assert w.shape == (64, 13, 16, 16)
    for band, channel in (("B04", 0), ("B03", 1), ("B02", 2)):
        assert torch.equal(w[:, S2_13.index(band)], w_rgb[:, channel])
    unmapped = [i for i, b in enumerate(S2_13) if b not in SENTINEL2_RGB]
    assert torch.count_nonzero(w[:, unmapped]) == 0
    assert torch.equal(adapted.patch_embed.proj.bias, rgb_model.patch_embed.proj.bias)
    # given statistics win over inherited ones, for mapped bands too
    assert adapted.meta.mean == tuple(mean) and adapted.meta.std == tuple(std)
    # blue comes first here, so the channel sum runs in another order: equal up to float32 rounding
    x = torch.randn(1, 13, 32, 32)
    ref = x[:, [S2_13.index("B04"), S2_13.index("B03"), S2_13.index("B02")]]
    for got, want in zip(_outputs(adapted, x), _outputs(rgb_model, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_rgb_map_bgr_model_and_explicit_map(rgb_model: torch.nn.Module) -> None:
    adapted = adapt_bands(rgb_model, ("rouge", "vert", "bleu"), rgb_map={"Rouge": "red", "vert": "G", "bleu": "Blue"})
    assert torch.equal(adapted.patch_embed.proj.weight, rgb_model.patch_embed.proj.weight)
    assert adapted.meta.mean == rgb_model.meta.mean and adapted.meta.std == rgb_model.meta.std
    bgr = adapt_bands(rgb_model, ("blue", "green", "red"))
    assert torch.equal(bgr.patch_embed.proj.weight, rgb_model.patch_embed.proj.weight.flip(1))
    assert bgr.meta.mean == rgb_model.meta.mean[::-1]


def test_resolve_rgb_map_presets() -> None:
    assert resolve_rgb_map(("B2", "B3", "B4", "B8")) == {"B2": "blue", "B3": "green", "B4": "red"}
    assert resolve_rgb_map(("b04", "B8A")) == {"b04": "red"}
    landsat = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5")
    assert resolve_rgb_map(landsat) == {b: c for b, c in LANDSAT89_RGB.items()}
    assert resolve_rgb_map(("R", "G", "B", "NIR")) == {"R": "red", "G": "green", "B": "blue"}
    assert resolve_rgb_map(("nir", "swir1")) == {}
    # preset keys absent from the bands are ignored, so a preset fits a subset
    assert resolve_rgb_map(("B08", "B04"), SENTINEL2_RGB) == {"B04": "red"}


# ------------------------------------------------------------------------------------------------- mean_rgb
def test_mean_rgb_weights_equal_hand_computed(rgb_model: torch.nn.Module) -> None:
    bands = ("B02", "B03", "B04", "B08", "B11")
    adapted = adapt_bands(
        rgb_model, bands, strategy="mean_rgb", mean=[0.1, None, None, 0.3, 0.2], std=[0.2, None, None, 0.1, 0.1]
    )
    w = rgb_model.patch_embed.proj.weight.detach().double()
    red, green, blue = w[:, 0], w[:, 1], w[:, 2]
    avg = (red + green + blue) / 3.0
    expected = torch.stack([blue, green, red, avg, avg], dim=1) * (3.0 / 5.0)
    torch.testing.assert_close(adapted.patch_embed.proj.weight.detach().double(), expected, rtol=1e-6, atol=1e-9)
    assert "mean_rgb" in adapted.meta.band_adaptation and "3/5" in adapted.meta.band_adaptation
    assert adapted.meta.mean[0] == 0.1 and adapted.meta.mean[1] == rgb_model.meta.mean[1]


def test_mean_rgb_without_mapping_sees_a_grey_image_as_the_rgb_model(rgb_model: torch.nn.Module) -> None:
    # N bands of the same image through N mean filters x 3/N == the RGB model on that image in 3 channels
    adapted = adapt_bands(
        rgb_model, ("nir", "swir1", "swir2", "re1"), strategy="mean_rgb", mean=[0.0] * 4, std=[1.0] * 4
    )
    grey = torch.randn(2, 1, 32, 48)
    for got, want in zip(
        _outputs(adapted, grey.expand(-1, 4, -1, -1)), _outputs(rgb_model, grey.expand(-1, 3, -1, -1)), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------- errors
def test_errors(rgb_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"appears twice"):
        adapt_bands(rgb_model, ("B04", "B03", "b4"))
    with pytest.raises(ValueError, match=r"'purple'.*red"):
        adapt_bands(rgb_model, ("x", "y"), rgb_map={"x": "purple"})
    with pytest.raises(ValueError, match=r"all map to red"):
        adapt_bands(rgb_model, ("B04", "red"))
    with pytest.raises(ValueError, match=r"no band .* for red, green or blue"):
        adapt_bands(rgb_model, ("nir", "swir"), mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError, match=r"unknown strategy"):
        adapt_bands(rgb_model, ("red", "green", "blue"), strategy="tile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"empty"):
        adapt_bands(rgb_model, ())
    with pytest.raises(TypeError, match=r"single string"):
        adapt_bands(rgb_model, "B04")
    adapted = adapt_bands(rgb_model, ("B04", "B03", "B02", "B08"), mean={"B08": 0.3}, std={"B08": 0.1})
    with pytest.raises(ValueError, match=r"starts from an RGB backbone.*4 bands"):
        adapt_bands(adapted, ("B04", "B03", "B02"))
    with pytest.raises(ValueError, match=r"one value per band \(4"):
        adapt_bands(rgb_model, ("B04", "B03", "B02", "B08"), mean=[0.1, 0.2], std=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"not among the bands"):
        adapt_bands(rgb_model, ("B04", "B08"), mean={"B8": 0.1, "B05": 0.2}, std={"B08": 0.1})
    with pytest.raises(ValueError, match=r"mean given twice for band 'B08'"):
        adapt_bands(rgb_model, ("B04", "B08"), mean={"B08": 0.1, "b8": 0.2}, std={"B08": 0.1})
    with pytest.raises(ValueError, match=r"std that is not > 0"):
        adapt_bands(rgb_model, ("B04", "B08"), mean={"B08": 0.1}, std={"B08": 0.0})


def test_missing_statistics_lists_bands_and_points_to_band_statistics(rgb_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"\['B01', 'B08'\].*band_statistics"):
        adapt_bands(rgb_model, ("B01", "B02", "B03", "B04", "B08"), mean={"B01": 0.1})
    with pytest.raises(ValueError, match=r"\['B11'\].*band_statistics"):
        adapt_bands(rgb_model, ("B04", "B11"), strategy="mean_rgb", mean=[None, 0.2], std=[None, None])


# --------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip(rgb_model: torch.nn.Module, tmp_path: Path) -> None:
    bands = ("B02", "B03", "B04", "B08")
    adapted = adapt_bands(rgb_model, bands, strategy="mean_rgb", mean={"B08": 0.25}, std={"B08": 0.08})
    path = save_backbone(adapted, tmp_path / "any name at all.bin")
    loaded = load_backbone(path)
    assert loaded.in_chans == 4 and loaded.config == adapted.config
    for field in ("bands", "mean", "std", "band_adaptation", "name"):
        assert getattr(loaded.meta, field) == getattr(adapted.meta, field)
    x = torch.randn(2, 4, 32, 32)
    for got, want in zip(_outputs(loaded, x), _outputs(adapted, x), strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"takes 4 bands"):
        loaded(torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------- statistics
def _scene(dtype: np.dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        hi = 255 if dtype == np.uint8 else 10000
        return rng.integers(1, hi, size=(3, 300, 500)).astype(dtype)
    return rng.normal(0.2, 0.05, size=(3, 300, 500)).astype(dtype)


def _write_with_nodata(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """A GeoTIFF with some invalid pixels; returns its data, the (H, W) validity and the default scale."""
    rng = np.random.default_rng(1)
    invalid = np.zeros((300, 500), dtype=bool)
    invalid[:40] = True  # a collar
    invalid[rng.random((300, 500)) < 0.1] = True
    if kind == "nodata_value":
        data = _scene(np.dtype(np.uint16))
        data[1][invalid] = 0  # one band flagged is enough for the pixel to be nodata
        write_raster(path, data, nodata=0)
        return data, ~invalid, 1e-4
    if kind == "nan":
        data = _scene(np.dtype(np.float32))
        data[2][invalid] = np.nan
        write_raster(path, data)
        return data, ~invalid, 1.0
    data = _scene(np.dtype(np.uint8))
    data[:, invalid] = 7  # a real value: only the dataset mask says it is invalid
    write_raster(path, data)
    with rasterio.open(path, "r+") as ds:
        ds.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
    return data, ~invalid, 1 / 255


@pytest.mark.parametrize("kind", ["nodata_value", "nan", "dataset_mask"])
def test_band_statistics_against_numpy(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.tif"
    data, valid, scale = _write_with_nodata(path, kind)
    mean, std = band_statistics(path)
    values = data[:, valid].astype(np.float64) * scale
    np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(std, values.std(axis=1), rtol=1e-10)
    # an explicit scale and a band subset, by index
    mean2, std2 = band_statistics(path, [3, 2], scale=2.0)
    np.testing.assert_allclose(mean2, values[[2, 1]].mean(axis=1) / scale * 2.0, rtol=1e-10)
    np.testing.assert_allclose(std2, values[[2, 1]].std(axis=1) / scale * 2.0, rtol=1e-10)
    if kind == "nodata_value":
        # only the selected bands' nodata counts: band 1 alone has none
        (mean1,), _ = band_statistics(path, [1])
        np.testing.assert_allclose(mean1, data[0].astype(np.float64).mean() * scale, rtol=1e-10)


def test_band_statistics_by_name_and_decimated(tmp_path: Path) -> None:
    # 10x10 blocks of constant value: any nearest-neighbour decimation by 10 reads one value per block
    rng = np.random.default_rng(3)
    coarse = rng.integers(1, 10000, size=(2, 30, 50)).astype(np.uint16)
    coarse[:, :3] = 65535
    data = np.kron(coarse, np.ones((1, 10, 10), dtype=np.uint16))
    path = write_raster(tmp_path / "blocks.tif", data, nodata=65535, descriptions=["red", "nir"])
    assert decimated_shape(300, 500, 1500) == (30, 50)
    mean, std = band_statistics(path, ["nir", "red"], max_pixels=1500)
    values = coarse[::-1, 3:].reshape(2, -1).astype(np.float64) / 10000
    np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(std, values.std(axis=1), rtol=1e-10)


def test_decimated_shape_respects_the_budget() -> None:
    assert decimated_shape(300, 500, 2_000_000) == (300, 500)
    for h, w, budget in ((1001, 999, 1000), (7, 100_000, 50), (2049, 3071, 2_000_000)):
        rows, cols = decimated_shape(h, w, budget)
        assert rows * cols <= budget and rows >= 1 and cols >= 1
    with pytest.raises(ValueError, match=r"max_pixels"):
        decimated_shape(10, 10, 0)


def test_band_statistics_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        band_statistics(tmp_path / "missing.tif")
    bad = tmp_path / "not_a_raster.tif"
    bad.write_text("hello")
    with pytest.raises(RasterSourceError, match=r"not_a_raster\.tif.*cannot be read"):
        band_statistics(bad)
    empty = write_raster(tmp_path / "empty.tif", np.zeros((1, 20, 20), dtype=np.uint8), nodata=0)
    with pytest.raises(RasterSourceError, match=r"empty\.tif.*no valid pixel"):
        band_statistics(empty)
    ok = write_raster(tmp_path / "ok.tif", np.ones((2, 20, 20), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"out of range"):
        band_statistics(ok, [3])


# -------------------------------------------------------------------------------------------- shared data
@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
def test_sentinel2_13_bands_end_to_end(rgb_model: torch.nn.Module) -> None:
    path = SHARED / "sentinel2" / "eolearn_s2l1c_13band_2015-07-11.tif"
    mean, std = band_statistics(path, scale=1.0)
    assert len(mean) == 13 and all(0 < m < 1 for m in mean) and all(s > 0 for s in std)
    rgb_model.meta = rgb_model.meta.replace(mean=SAT_MEAN, std=SAT_STD, weights="sat493m")
    adapted = adapt_bands(rgb_model, S2_13, mean=mean, std=std)
    with rasterio.open(path) as ds:
        crop = ds.read(window=((0, 96), (0, 96))).astype(np.float32)
    x = (torch.from_numpy(crop) - torch.tensor(mean).view(13, 1, 1)) / torch.tensor(std).view(13, 1, 1)
    x = x.float().unsqueeze(0)
    with torch.inference_mode():
        feats = adapted.forward_features(x)
    assert feats["x_norm_patchtokens"].shape == (1, 36, 64)
    assert torch.isfinite(feats["x_norm_patchtokens"]).all()
    ref = _outputs(rgb_model, x[:, [S2_13.index("B04"), S2_13.index("B03"), S2_13.index("B02")]])[1]
    torch.testing.assert_close(feats["x_norm_patchtokens"], ref, rtol=0, atol=1e-5)
