"""A generated landscape with KNOWN truth: land-cover classes and tree heights, rendered into a georeferenced image.

`geodino demo` trains heads on it and scores the mapped result against the truth, so every number it prints can
be checked. Everything is deterministic per seed and pure numpy (:func:`landscape`); :func:`write_landscape`
writes it as GeoTIFFs in UTM 33N (EPSG:32633) at 1 m per pixel.

How the truth is made:

- Two smooth random fields (white noise low-passed with a Gaussian in the Fourier domain), "elevation" ``e`` and
  "moisture" ``m``, both rescaled to [0, 1]. Classes by thresholds on their quantiles: ``water`` where ``e`` is in
  its lowest 12 %; else ``forest`` where ``m`` is in its top 40 %; else ``bare soil`` where ``m`` is in its lowest
  20 %; else ``grassland``. Regions are tens of metres across, so a model at 16 m patch resolution can map them.
- Trees: crowns are discs placed at random (dense in forest, sparse in grassland, none on water or bare soil).
  A tree's height ``h`` follows its crown radius ``r`` (allometry ``h = 2.2 r + 2`` m with ``r`` in pixels = m,
  plus noise), and the canopy height surface is the upper envelope of the domes ``h * sqrt(1 - (d / r)^2)``. Every
  other pixel has canopy height 0 m, a valid height (not "no data").
- The image: each class has a base colour with texture noise; crowns are painted green with a brightness that
  grows with the dome's height (sunlit tops, darker edges), so heights can be learnt from the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "CRS",
    "GSD",
    "Landscape",
    "landscape",
    "write_landscape",
]

CLASS_NAMES: tuple[str, ...] = ("water", "grassland", "forest", "bare soil")
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = ((40, 90, 160), (170, 200, 90), (20, 100, 40), (190, 160, 120))
#: Base (r, g, b) of each class in the rendered image (forest: the floor between crowns).
_GROUND = np.array([[35, 60, 95], [150, 170, 95], [60, 75, 40], [185, 165, 130]], np.float32)
_WATER, _GRASS, _FOREST, _BARE = range(4)
CRS = "EPSG:32633"
GSD = 1.0
_ORIGIN = (500000.0, 4650000.0)  # west, north (m, UTM 33N)
HEIGHT_NODATA = -9999.0
CLASS_NODATA = 255


@dataclass(frozen=True)
class Landscape:
    """A generated scene and its truth, all on one grid.

    Attributes:
        image: (3, H, W) uint8 red, green, blue.
        classes: (H, W) uint8 class index into `CLASS_NAMES`.
        heights: (H, W) float32 canopy height in metres (0 m where there is no tree).
        seed: The seed it was made with.
    """

    image: np.ndarray
    classes: np.ndarray
    heights: np.ndarray
    seed: int


def smooth_field(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 in [0, 1]: white noise low-passed by a Gaussian of std ``scale`` pixels (FFT convolution)."""
    h, w = shape
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    # Fourier transform of a Gaussian of std s (pixels): exp(-2 pi^2 s^2 f^2).
    kernel = np.exp(-2.0 * np.pi**2 * scale**2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(h, w))
    field -= field.min()
    return (field / (np.ptp(field) + 1e-12)).astype(np.float32)


def _classes(size: int, rng: np.random.Generator) -> np.ndarray:
    elevation = smooth_field((size, size), size / 14, rng)
    moisture = smooth_field((size, size), size / 16, rng)
    classes = np.full((size, size), _GRASS, np.uint8)
    classes[moisture >= np.quantile(moisture, 0.60)] = _FOREST
    classes[moisture <= np.quantile(moisture, 0.20)] = _BARE
    classes[elevation <= np.quantile(elevation, 0.12)] = _WATER
    return classes


def _trees(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 canopy heights in metres: the upper envelope of the tree domes, 0 m elsewhere."""
    size = classes.shape[0]
    heights = np.zeros(classes.shape, np.float32)
    # Candidate crown centres: a density per pixel by class (forest dense, grassland a scattered savanna).
    density = np.array([0.0, 0.0015, 0.02, 0.0], np.float32)[classes]
    centres = np.flatnonzero(rng.random(classes.size) < density.ravel())
    radii = rng.uniform(2.5, 9.0, len(centres))
    tops = np.clip(2.2 * radii + 2.0 + rng.normal(0.0, 1.0, len(centres)), 1.0, None)
    for flat, r, top in zip(centres, radii, tops, strict=True):
        cy, cx = divmod(int(flat), size)
        r0, r1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        c0, c1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        dome = np.where(d2 < 1.0, top * np.sqrt(np.clip(1.0 - d2, 0.0, None)), 0.0).astype(np.float32)
        np.maximum(heights[r0:r1, c0:c1], dome, out=heights[r0:r1, c0:c1])
    return heights


def _render(classes: np.ndarray, heights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = classes.shape[0]
    texture = smooth_field((size, size), 1.5, rng) - 0.5  # fine grain, +-0.5
    img = _GROUND[classes] * (1.0 + 0.35 * texture[..., None])
    crown = heights > 0.0
    # Crowns: green, brighter with height (tall trees stand out from the forest floor).
    tone = np.clip(heights / 30.0, 0.0, 1.0)[..., None]
    tree = np.array([25, 70, 20], np.float32) + tone * np.array([70, 120, 50], np.float32)
    img[crown] = tree[crown] * (1.0 + 0.15 * texture[crown][:, None])
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def landscape(size: int = 512, seed: int = 0) -> Landscape:
    """Generate a square landscape with known classes and tree heights.

    Args:
        size: Side in pixels (1 m each), >= 64.
        seed: Random seed; the same seed gives the same landscape, bit for bit.

    Returns:
        The scene and its truth (see :class:`Landscape`).
    """
    if size < 64:
        raise ValueError(f"the landscape needs a side of at least 64 pixels, got {size}")
    rng = np.random.default_rng(seed)
    classes = _classes(size, rng)
    heights = _trees(classes, rng)
    image = _render(classes, heights, rng)
    return Landscape(image=image, classes=classes, heights=heights, seed=seed)


def _profile(height: int, width: int, count: int, dtype: str, transform: object, nodata: float | None) -> dict:
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "crs": CRS,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
    }
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    return profile


def write_landscape(scene: Landscape, out_dir: str | Path, *, split_col: int | None = None) -> dict[str, Path]:
    """Write a landscape as GeoTIFFs (UTM 33N, 1 m): the image, the truth, and optionally a train / held-out split.

    Args:
        scene: From :func:`landscape`.
        out_dir: Folder to write into (created).
        split_col: If given, also write the image's columns ``[0, split_col)`` as ``train.tif`` and
            ``[split_col, W)`` as ``holdout.tif`` (each with its own geotransform; the truth rasters stay whole,
            so labels are found through coordinates, never by array index).

    Returns:
        Paths by name: ``scene``, ``classes``, ``heights`` (and ``train``, ``holdout``).
    """
    import rasterio
    from affine import Affine
    from rasterio.transform import from_origin

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, h, w = scene.image.shape
    transform = from_origin(*_ORIGIN, GSD, GSD)
    paths = {"scene": out / "scene.tif", "classes": out / "truth_classes.tif", "heights": out / "truth_heights.tif"}
    with rasterio.open(paths["scene"], "w", **_profile(h, w, 3, "uint8", transform, None)) as dst:
        dst.write(scene.image)
        dst.descriptions = ("red", "green", "blue")
    with rasterio.open(paths["classes"], "w", **_profile(h, w, 1, "uint8", transform, CLASS_NODATA)) as dst:
        dst.write(scene.classes[None])
        dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(CLASS_NAMES)})
    with rasterio.open(paths["heights"], "w", **_profile(h, w, 1, "float32", transform, HEIGHT_NODATA)) as dst:
        dst.write(scene.heights[None])
        dst.update_tags(1, units="m")
    if split_col is not None:
        if not 0 < split_col < w:
            raise ValueError(f"split_col must be in (0, {w}), got {split_col}")
        for name, c0, c1 in (("train", 0, split_col), ("holdout", split_col, w)):
            part = transform @ Affine.translation(c0, 0)
            paths[name] = out / f"{name}.tif"
            with rasterio.open(paths[name], "w", **_profile(h, c1 - c0, 3, "uint8", part, None)) as dst:
                dst.write(scene.image[:, :, c0:c1])
                dst.descriptions = ("red", "green", "blue")
    return paths
