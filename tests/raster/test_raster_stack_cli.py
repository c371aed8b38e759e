"""Band stacks and raster refusals through the ``geodino map`` / ``geodino embed`` commands (typer, in-process)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner

from geodino.workflows.cli import register

warnings.filterwarnings("ignore", message=".*consolidated.*")


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def landsat_like(tmp_path: Path) -> tuple[list[Path], Path]:
    """Landsat-style per-band files B3, B2, B1 and the same bands in one stacked GeoTIFF."""
    scene = smooth_scene(3, 120, 150, seed=12, dtype=np.uint8)
    scene[1, 16:80, 32:96] = 0  # nodata in the middle band only, over whole patches
    files = [write_raster(tmp_path / f"LT05_B{k}.TIF", scene[i : i + 1], nodata=0) for i, k in enumerate((3, 2, 1))]
    return files, write_raster(tmp_path / "stacked.tif", scene, nodata=0)


def _embed(app: typer.Typer, inputs: list[Path], out: Path, *extra: str) -> object:
    args = ["embed", *map(str, inputs), "--backbone", "test", "--out", str(out), "--no-progress", *extra]
    return CliRunner().invoke(app, args)


def test_embed_stack_equals_stacked_file(
    app: typer.Typer, landsat_like: tuple[list[Path], Path], tmp_path: Path
) -> None:
    files, stacked = landsat_like
    result = _embed(app, files, tmp_path / "stack.zarr", "--stack")
    assert result.exit_code == 0, result.output
    result = _embed(app, [stacked], tmp_path / "one.zarr")
    assert result.exit_code == 0, result.output
    a = xr.open_zarr(tmp_path / "stack.zarr").embedding.values
    b = xr.open_zarr(tmp_path / "one.zarr").embedding.values
    assert a.shape == (64, 8, 10) and np.isnan(a).any() and not np.isnan(a).all()  # the nodata hole comes through
    assert np.array_equal(a, b, equal_nan=True)


def test_embed_covering_files_without_stack_is_refused(
    app: typer.Typer, landsat_like: tuple[list[Path], Path], tmp_path: Path
) -> None:
    # The command: it used to exit 0 with B3 alone.
    files, _ = landsat_like
    result = _embed(app, files, tmp_path / "o.zarr", "--bands", "1,1,1")
    assert result.exit_code == 2, result.output
    assert "LT05_B3.TIF and" in result.output and "--stack" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.zarr").exists()


def test_empty_bands_refused(app: typer.Typer, landsat_like: tuple[list[Path], Path], tmp_path: Path) -> None:
    _, stacked = landsat_like
    result = _embed(app, [stacked], tmp_path / "o.zarr", "--bands", "")
    assert result.exit_code == 2 and "--bands" in result.output, result.output
    assert not (tmp_path / "o.zarr").exists()


def test_map_complex_input(app: typer.Typer, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    slc = (rng.normal(size=(3, 64, 64)) + 1j * rng.normal(size=(3, 64, 64))).astype(np.complex64)
    path = write_raster(tmp_path / "slc.tif", slc)
    args = ["map", str(path), "--model", "model_factories:pointwise", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a.zarr")])
    assert result.exit_code == 2 and "complex" in result.output and "--complex magnitude" in result.output
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b.zarr"), "--complex", "magnitude"])
    assert result.exit_code == 0, result.output
    out = xr.open_zarr(tmp_path / "b.zarr").prediction.values
    # The pointwise model on |z| (float: scale 1), not on the real part.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from model_factories import pointwise

        from geodino.raster.source import RasterSource

        with RasterSource(path, complex_mode="magnitude") as src:
            data, _ = src.read(src.window())
    expected = pointwise()(torch.from_numpy(data[None])).detach().numpy()[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_map_overlapping_tiles_needs_allow_overlap(app: typer.Typer, tmp_path: Path) -> None:
    from affine import Affine
    from rasters import default_transform

    scene = smooth_scene(3, 64, 80, seed=13, dtype=np.uint8)
    a = write_raster(tmp_path / "a.tif", scene[:, :, :64])
    b = write_raster(tmp_path / "b.tif", scene[:, :, 16:], transform=default_transform() @ Affine.translation(16, 0))
    args = ["map", str(a), str(b), "--model", "model_factories:pointwise", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "overlap on 64 x 48 pixels" in result.output and "--allow-overlap" in result.output
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "y.zarr"), "--allow-overlap"])
    assert result.exit_code == 0, result.output
    assert xr.open_zarr(tmp_path / "y.zarr").prediction.shape == (2, 64, 80)


DATA = Path(__file__).parents[3] / "shared" / "data" / "sentinel2" / "bigearthnet"


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"BigEarthNet patches not found at {DATA}")
def test_embed_bigearthnet_folder_as_one_input(app: typer.Typer, tmp_path: Path) -> None:
    import rasterio

    patch = sorted(DATA.iterdir())[1]
    files = sorted(patch.glob("*_B*.tif"))  # all 12 bands, 10/20/60 m; the model takes three of them
    result = _embed(app, files, tmp_path / "stack.zarr", "--stack", "--bands", "B04,B03,B02")
    assert result.exit_code == 0, result.output
    rgb = []
    for name in ("B04", "B03", "B02"):
        with rasterio.open(next(f for f in files if f.stem.endswith(name))) as ds:
            rgb.append(ds.read(1))
            profile = ds.profile
    profile.update(count=3)
    with rasterio.open(tmp_path / "rgb.tif", "w", **profile) as dst:
        dst.write(np.stack(rgb))
    result = _embed(app, [tmp_path / "rgb.tif"], tmp_path / "one.zarr")
    assert result.exit_code == 0, result.output
    a, b = (
        xr.open_zarr(tmp_path / "stack.zarr", decode_coords="all"),
        xr.open_zarr(tmp_path / "one.zarr", decode_coords="all"),
    )
    assert a.embedding.shape == (64, 8, 8)  # 120 px at patch 16, rounded up
    assert np.array_equal(a.embedding.values, b.embedding.values, equal_nan=True)
    assert a.rio.transform() == b.rio.transform() and a.rio.crs == b.rio.crs
