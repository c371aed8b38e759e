"""Plotting helpers: each returns an Axes with the expected artists; plot_output reads real mapping stores."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from rasters import smooth_scene, write_raster

from geodino.heads.plots import (
    default_class_colours,
    plot_classes,
    plot_confusion,
    plot_embedding,
    plot_heights,
    plot_output,
)

matplotlib.use("Agg")  # before any pyplot import (plots.py imports pyplot only inside its functions)

NAMES = ["water", "forest", "field", "urban"]
COLOURS = [(0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0)]


def _ax():
    return Figure().subplots()


def _legend(ax) -> tuple[list[str], list[tuple[float, ...]]]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()], [tuple(h.get_facecolor()) for h in legend.legend_handles]


def test_default_class_colours_are_distinct_and_stable() -> None:
    colours = default_class_colours(40)
    assert len(set(colours)) == 40 and colours == default_class_colours(40)
    assert all(0 <= v <= 255 and isinstance(v, int) for c in colours for v in c)
    assert default_class_colours(3) == colours[:3]


def test_plot_classes_colours_legend_and_transparent_nodata() -> None:
    classes = np.array([[0, 1, 2], [3, -1, 0]])
    ax = plot_classes(classes, NAMES, COLOURS, _ax())
    texts, faces = _legend(ax)
    assert texts == NAMES
    assert [tuple(round(v * 255) for v in f[:3]) for f in faces] == COLOURS
    rgba = np.asarray(ax.images[0].get_array())
    assert rgba.shape == (2, 3, 4)
    assert np.allclose(rgba[0, 2], [1, 1, 0, 1]) and np.allclose(rgba[1, 2], [0, 0, 1, 1])
    assert rgba[1, 1, 3] == 0  # nodata: transparent


def test_plot_classes_defaults_and_refusals() -> None:
    ax = plot_classes(np.array([[0, 255], [1, 2]], np.uint8), NAMES[:3], ax=_ax(), nodata=255)
    texts, faces = _legend(ax)
    assert texts == NAMES[:3]
    assert [tuple(round(v * 255) for v in f[:3]) for f in faces] == list(default_class_colours(3))
    with pytest.raises(ValueError, match=r"values \[7\] that are neither 0..3 nor -1"):
        plot_classes(np.array([[0, 7]]), NAMES, COLOURS, _ax())
    with pytest.raises(ValueError, match="need 4"):
        plot_classes(np.zeros((2, 2), int), NAMES, COLOURS[:2], _ax())


def test_plot_heights_has_a_colour_bar_and_masks_nan() -> None:
    heights = np.array([[0.0, 5.0], [np.nan, 20.0]])
    ax = plot_heights(heights, _ax(), units="m")
    image = ax.images[0]
    assert image.colorbar is not None
    assert image.colorbar.ax.get_ylabel() == "height (m)"
    assert image.get_clim() == (0.0, 20.0)
    assert np.ma.getmaskarray(image.get_array()).tolist() == [[False, False], [True, False]]
    assert plot_heights(heights, _ax(), vmax=40.0).images[0].get_clim() == (0.0, 40.0)
    with pytest.raises(ValueError, match="no finite value"):
        plot_heights(np.full((2, 2), np.nan), _ax())


def test_plot_confusion_normalises_rows_and_writes_counts() -> None:
    c = np.array([[6, 2], [0, 0]])
    ax = plot_confusion(c, ["a", "b"], _ax())
    values = ax.images[0].get_array()
    assert values[0].tolist() == [0.75, 0.25]
    assert np.ma.getmaskarray(values)[1].all()  # a row without truth pixels stays blank
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "2", "6"]
    assert ax.images[0].colorbar is not None


def test_plot_embedding_shows_the_dominant_component() -> None:
    rng = np.random.default_rng(0)
    xx = np.tile(np.linspace(-1, 1, 40), (30, 1))
    feats = rng.normal(0, 0.05, (8, 30, 40)).astype(np.float32)
    feats[0] += 3 * xx  # the main direction of variance runs left to right
    feats[1] -= 3 * xx
    ax = plot_embedding(feats, _ax())
    rgb = np.asarray(ax.images[0].get_array())
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    r = np.corrcoef(rgb[..., 0].ravel().astype(float), xx.ravel())[0, 1]
    assert abs(r) > 0.95
    with pytest.raises(ValueError, match="D >= 3"):
        plot_embedding(feats[:2], _ax())


def test_pyplot_figure_when_no_axes_given() -> None:
    import matplotlib.pyplot as plt

    ax = plot_heights(np.ones((3, 3)))
    try:
        assert ax.figure in [plt.figure(n) for n in plt.get_fignums()]
    finally:
        plt.close("all")


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install geodino\[plots\]"):
        plot_heights(np.ones((3, 3)))


# ---------------------------------------------------------------------------------------------------------------
# plot_output on stores written by the mapping workflow.


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 x 80 px, 3 bands; the top 8 rows are nodata (so outputs have nodata there: NaN, class 255)."""
    data = smooth_scene(3, 64, 80, seed=3, dtype=np.uint8)
    data[:, :8] = 0
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", data, nodata=0)


def _map(scene: Path, model: str, out: Path) -> Path:
    from geodino.workflows.mapping import map_raster

    map_raster(scene, f"model_factories:{model}", out, tile=64, overlap=0, scheduler="sync", progress=False)
    return out


def test_plot_output_classification_store(scene: Path, tmp_path: Path) -> None:
    import xarray as xr

    store = _map(scene, "classifier", tmp_path / "classes.zarr")
    ax = plot_output(store, _ax())
    texts, faces = _legend(ax)
    assert texts == NAMES  # the model's class names and colours, from the store's attributes
    assert [tuple(round(v * 255) for v in f[:3]) for f in faces] == COLOURS
    rgba = np.asarray(ax.images[0].get_array())
    classes = xr.open_zarr(store, mask_and_scale=False)["classes"].values
    nodata = classes == 255
    assert rgba.shape == (64, 80, 4) and nodata.sum() == 8 * 80
    assert (rgba[..., 3] == np.where(nodata, 0, 1)).all()  # the store's nodata (255) is transparent
    lut = np.array(COLOURS) / 255
    np.testing.assert_allclose(rgba[~nodata, :3], lut[classes[~nodata]])  # every pixel in its class colour
    probs = plot_output(xr.open_zarr(store)["probabilities"], _ax())  # argmax of the probabilities: same picture
    np.testing.assert_allclose(np.asarray(probs.images[0].get_array()), rgba)


def test_plot_output_regression_and_embedding_stores(scene: Path, tmp_path: Path) -> None:
    import xarray as xr

    store = _map(scene, "pointwise", tmp_path / "pred.zarr")
    ax = plot_output(str(store), _ax())
    assert ax.images[0].colorbar is not None
    want = xr.open_zarr(store)["prediction"].values[0]
    assert np.isnan(want[:8]).all() and np.isfinite(want[8:]).all()
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan), want, rtol=1e-6)
    assert "band 0" in ax.get_title()

    store = _map(scene, "coarse", tmp_path / "emb.zarr")
    ax = plot_output(xr.open_zarr(store), _ax())
    assert np.asarray(ax.images[0].get_array()).shape == (16, 20, 3)


def test_plot_output_refuses_other_stores(tmp_path: Path) -> None:
    import xarray as xr

    xr.Dataset({"a": (("y", "x"), np.zeros((2, 2)))}).to_zarr(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="not a geodino mapping output"):
        plot_output(tmp_path / "other.zarr", _ax())
    with pytest.raises(FileNotFoundError, match="not found"):
        plot_output(tmp_path / "nowhere.zarr", _ax())
