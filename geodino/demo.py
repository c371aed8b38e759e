"""A self-contained end-to-end run: make a georeferenced scene, embed it, write Zarr and a picture of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_scene(size: int, seed: int = 0) -> np.ndarray:
    """A (3, size, size) uint8 scene: smooth terrain, rectangular fields and a road grid, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    terrain = sum(
        np.sin(2 * np.pi * (f * xx * np.cos(a) + f * yy * np.sin(a)) + p)
        for f, a, p in rng.uniform([1, 0, 0], [4, np.pi, 2 * np.pi], size=(6, 3))
    )
    terrain = (terrain - terrain.min()) / (np.ptp(terrain) + 1e-6)
    field_id = (np.floor(xx * 12) * 31 + np.floor(yy * 9) * 17).astype(np.int64) % 5
    palette = np.array([[70, 110, 50], [150, 140, 80], [60, 90, 40], [120, 100, 70], [90, 130, 60]], np.float32)
    img = palette[field_id] * (0.6 + 0.4 * terrain[..., None])
    roads = (np.abs((xx * 6) % 1 - 0.5) < 0.01) | (np.abs((yy * 5) % 1 - 0.5) < 0.01)
    img[roads] = 200.0
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def write_scene(path: Path, size: int) -> Path:
    """Write the synthetic scene as a tiled GeoTIFF in UTM 33N at 10 m."""
    import rasterio
    from rasterio.transform import from_origin

    data = synthetic_scene(size)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 4650000.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("red", "green", "blue")
    return path


def pca_preview(embedding: np.ndarray) -> np.ndarray:
    """(D, h, w) features -> (h, w, 3) uint8: the first three principal components, stretched per channel."""
    d, h, w = embedding.shape
    flat = embedding.reshape(d, -1).T
    valid = np.isfinite(flat).all(axis=1)
    centred = flat[valid] - flat[valid].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = np.zeros((flat.shape[0], 3), np.float32)
    comps[valid] = centred @ vt[:3].T
    lo, hi = np.percentile(comps[valid], [2, 98], axis=0)
    rgb = np.clip((comps - lo) / (hi - lo + 1e-9), 0, 1)
    return (rgb.reshape(h, w, 3) * 255).astype(np.uint8)


def run_demo(out: Path, size: int = 1024) -> None:
    """Scene -> `geodino embed` with the tiny built-in backbone -> Zarr + PNG, and a summary on the console."""
    from PIL import Image
    from rich.console import Console

    from geodino.workflows.mapping import embed_raster

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    scene = write_scene(out / "scene.tif", size)
    console.print(f"wrote {scene} ({size}x{size}, 3 bands, EPSG:32633, 10 m)")
    ds = embed_raster(scene, "test", out / "embedding.zarr", overwrite=True, progress=False)
    emb = ds["embedding"]
    preview = out / "embedding_pca.png"
    Image.fromarray(pca_preview(emb.values)).resize((size // 2, size // 2), Image.NEAREST).save(preview)
    console.print(
        f"wrote {out / 'embedding.zarr'}: embedding {tuple(emb.shape)} (feature, y, x), CRS {ds.rio.crs}, "
        f"pixel {abs(ds.rio.resolution()[0]):g} m; preview {preview}"
    )
