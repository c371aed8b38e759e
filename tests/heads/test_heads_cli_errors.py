"""Bad inputs to ``geodino train-head`` / ``geodino evaluate`` fail clearly: exit 2, one line on stderr, no traceback.

Run in subprocesses, as a user runs the command (the process boundary is what "no traceback" is about).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasters import smooth_scene, write_raster

GEODINO = [sys.executable, "-m", "geodino.cli"]


def fails(*args: str | Path) -> str:
    """Run geodino; assert an anticipated failure; return its one stderr line."""
    res = subprocess.run([*GEODINO, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) <= 2, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    """A 3-band 64x64 image at 10 m, its classes (1, 2) and heights, and a far-away label raster."""
    root = tmp_path_factory.mktemp("bad")
    img = smooth_scene(3, 64, 64, seed=1, dtype=np.uint8)
    classes = (img[:1] > 127).astype(np.uint8) + 1
    paths = {
        "image": write_raster(root / "image.tif", img),
        "image5": write_raster(root / "image5.tif", smooth_scene(5, 64, 64, seed=2, dtype=np.uint8)),
        "classes": write_raster(root / "classes.tif", classes, nodata=0),
        "far": write_raster(root / "far.tif", classes, transform=from_origin(900000, 100000, 10, 10), nodata=0),
    }
    import geopandas as gpd
    from shapely.geometry import box

    gdf = gpd.GeoDataFrame(
        {"kind": ["a", "b"]},
        geometry=[box(500000, 4099700, 500300, 4100000), box(500300, 4099700, 500640, 4100000)],
        crs="EPSG:32633",
    )
    paths["vector"] = root / "labels.gpkg"
    gdf.to_file(paths["vector"])
    return paths


def train(scene: dict[str, Path], tmp_path: Path, *extra: str | Path, images: str = "image", labels: str = "classes"):
    return fails(
        "train-head", "--task", "land-cover", "--images", scene[images], "--labels", scene[labels],
        "--backbone", "test", "--out", tmp_path / "m.gdm", "--tile", "32", "--epochs", "1", "--no-progress", *extra,
    )  # fmt: skip


def test_labels_that_do_not_overlap_the_imagery(scene, tmp_path) -> None:
    line = train(scene, tmp_path, labels="far")
    assert "far.tif" in line and "overlap" in line


def test_label_values_outside_the_declared_classes(scene, tmp_path) -> None:
    line = train(scene, tmp_path, "--classes", "1=dark")
    assert "classes.tif" in line and "2" in line


def test_a_label_column_that_does_not_exist(scene, tmp_path) -> None:
    line = train(scene, tmp_path, "--label-column", "nope", labels="vector")
    assert "nope" in line and "kind" in line  # names the missing column and lists those that exist


def test_mismatched_band_counts_between_images(scene, tmp_path) -> None:
    line = fails(
        "train-head", "--task", "land-cover", "--images", scene["image"], "--images", scene["image5"],
        "--labels", scene["classes"], "--backbone", "test", "--out", tmp_path / "m.gdm", "--tile", "32",
    )  # fmt: skip
    assert "image5.tif" in line and "5 bands" in line and "3" in line


def test_an_empty_training_split(scene, tmp_path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    layer = tmp_path / "split.gpkg"  # one polygon over the whole image, all of it validation
    gpd.GeoDataFrame({"split": ["val"]}, geometry=[box(499000, 4099000, 501000, 4101000)], crs="EPSG:32633").to_file(
        layer
    )
    line = train(scene, tmp_path, "--split", layer)
    assert "train" in line and "empty" in line


def test_a_bad_task_head_or_output_name(scene, tmp_path) -> None:
    assert "task" in fails("train-head", "--task", "height", "--images", scene["image"], "--labels", scene["classes"],
                           "--backbone", "test", "--out", tmp_path / "m.gdm")  # fmt: skip
    assert ".gdm" in train(scene, tmp_path, "--out", tmp_path / "m.pt")
    assert "--head linear" in train(scene, tmp_path, "--head", "dpt")  # the 2-block test ViT has no 4 layers


def test_evaluate_with_labels_off_the_map(scene, tmp_path) -> None:
    model_path = tmp_path / "m.gdm"
    _train_quick(scene, model_path)
    line = fails("evaluate", model_path, "--images", scene["image"], "--labels", scene["far"], "--out", tmp_path / "r")
    assert "far.tif" in line


def _train_quick(scene: dict[str, Path], out: Path) -> None:
    res = subprocess.run(
        [*GEODINO, "train-head", "--task", "land-cover", "--images", str(scene["image"]), "--labels",
         str(scene["classes"]), "--backbone", "test", "--out", str(out), "--tile", "32", "--epochs", "1",
         "--split", "none", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
