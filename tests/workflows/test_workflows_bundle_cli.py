"""`geodino map --model saved.gdm` and `geodino info saved.gdm` in-process, on a real NEON raster."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from bundle_test_heads import tiny_model
from typer.testing import CliRunner

from geodino.bundle import save_model
from geodino.cli import app
from geodino.workflows.mapping import map_raster, open_output
from geodino.workflows.predictor import load_predictor

warnings.filterwarnings("ignore", message=".*consolidated.*")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
NEON = SHARED / "neon" / "SJER_052_rgb.tif"
CLASSES = ["soil", "grass", "oak"]

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not NEON.exists(), reason=f"{NEON} is absent"),
]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    colours = [(140, 100, 60), (180, 200, 90), (20, 90, 20)]
    return save_model(folder / "landcover.gdm", tiny_model(class_names=CLASSES), tile=64, class_colours=colours)


def _source_georef() -> tuple[object, tuple[float, ...]]:
    with rasterio.open(NEON) as src:
        return src.crs, tuple(src.transform)[:6]


def test_map_with_saved_classifier_needs_no_other_flag(classifier: Path, tmp_path: Path) -> None:
    out = tmp_path / "lc.zarr"
    result = CliRunner().invoke(app, ["map", str(NEON), "--model", str(classifier), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = open_output(out)
    assert ds.probabilities.shape == (3, 400, 400) and ds.classes.shape == (400, 400)
    assert ds.classes.attrs["class_names"] == CLASSES and ds.classes.attrs["class_colours"][2] == [20, 90, 20]
    crs, transform = _source_georef()
    assert ds.rio.crs == crs
    assert tuple(ds.rio.transform())[:6] == pytest.approx(transform)
    probs = ds.probabilities.values
    valid = np.isfinite(probs[0])
    assert valid.mean() > 0.9
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-5)
    assert set(np.unique(ds.classes.values[valid])) <= {0, 1, 2}
    assert ds.attrs["tile"] == 64  # from the file


def test_map_with_saved_regression_writes_metres(tmp_path: Path) -> None:
    model = tiny_model(
        out_channels=2, kind="regression", units="m", valid_range=[0.0, 96.0], channel_names=["height", "uncertainty"]
    )
    path = save_model(tmp_path / "chm.gdm", model, tile=64)
    out = tmp_path / "chm.zarr"
    result = CliRunner().invoke(app, ["map", str(NEON), "--model", str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = open_output(out)
    assert ds.prediction.shape == (2, 400, 400)
    assert ds.prediction.attrs["units"] == "m" and ds.prediction.attrs["channel_names"] == ["height", "uncertainty"]
    assert ds.prediction.attrs["valid_range"] == [0.0, 96.0]
    crs, transform = _source_georef()
    assert ds.rio.crs == crs and tuple(ds.rio.transform())[:6] == pytest.approx(transform)


def test_map_with_a_broken_model_fails_in_two_lines(classifier: Path, tmp_path: Path) -> None:
    data = classifier.read_bytes()
    (tmp_path / "cut.gdm").write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(
        app, ["map", str(NEON), "--model", str(tmp_path / "cut.gdm"), "--out", str(tmp_path / "o.zarr")]
    )
    assert result.exit_code == 2
    assert "cut.gdm: not a geodino model, or a truncated one" in result.output and "Traceback" not in result.output


def test_info_describes_a_saved_model(classifier: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(classifier)])
    assert result.exit_code == 0, result.output
    for expected in (
        "classification",
        "soil",
        "#145a14",
        "red, green, blue",
        "TinyHead",
        "embedded",
        "format version 1",
    ):
        assert expected in result.output, result.output


def test_tta_d4_is_identical_across_chunkings(classifier: Path, tmp_path: Path) -> None:
    predictor = load_predictor(classifier).with_options(tta="d4")
    runs = []
    for i, chunk in enumerate((96, (144, 240))):
        ds = map_raster(NEON, predictor, tmp_path / f"{i}.zarr", chunk=chunk, progress=False)
        runs.append(ds.probabilities.values)
    assert np.array_equal(runs[0], runs[1], equal_nan=True)
    plain = map_raster(NEON, load_predictor(classifier), tmp_path / "plain.zarr", chunk=96, progress=False)
    assert not np.allclose(plain.probabilities.values, runs[0], equal_nan=True)  # TTA changed something
