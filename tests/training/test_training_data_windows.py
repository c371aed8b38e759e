"""Random windows from real GeoTIFFs: paths, band checks, nodata skipping, sharding across workers and ranks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from rasters import write_raster
from torch.utils.data import DataLoader
from training_data_helpers import textured_scene, write_rgb

from geodino.raster.source import RasterSource
from geodino.training.data import RasterWindows, TrainingDataError, expand_paths, normalization_stats, open_sources


def _refs(loader: DataLoader, n: int) -> list[tuple[int, int, int, int]]:
    out = []
    for batch in loader:
        for ref in batch:
            out.append((ref.index, ref.source, ref.row, ref.col))
        if len(out) >= n:
            return out
    return out


def _ref_only(item):
    return item["ref"]


def test_windows_match_the_raster_and_are_scaled(tmp_path):
    path = write_rgb(tmp_path / "a.tif", size=96)
    ds = RasterWindows(open_sources([path], in_chans=3, window_size=32), 32, seed=3)
    item = next(iter(ds))
    ref = item["ref"]
    raw, _ = RasterSource(path).read(ref.window)
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"].numpy(), raw / 255.0, rtol=1e-6)
    assert 0 <= ref.row <= 96 - 32 and 0 <= ref.col <= 96 - 32


def test_stream_is_seeded_and_two_workers_never_duplicate(tmp_path):
    paths = [write_rgb(tmp_path / f"t{i}.tif", size=80, seed=i) for i in range(2)]
    sources = open_sources(paths, in_chans=3, window_size=16)
    ds = RasterWindows(sources, 16, seed=7, transform=_ref_only)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)
    refs = _refs(loader, 40)
    indices = [r[0] for r in refs]
    assert len(set(indices)) == len(indices)
    assert len({r[1:] for r in refs}) == len(refs)  # no window read twice
    # Each global index is the window the single-process stream puts there: the stream does not depend on workers.
    single = RasterWindows(sources, 16, seed=7)
    for index, src, row, col in refs:
        ref = single.ref(index)
        assert (ref.source, ref.row, ref.col) == (src, row, col)
    assert {r[1] for r in refs} == {0, 1}
    # Another seed gives other windows.
    other = RasterWindows(sources, 16, seed=8)
    assert [other.ref(i) for i in range(10)] != [single.ref(i) for i in range(10)]


def test_ranks_and_workers_partition_the_indices(tmp_path):
    sources = open_sources([write_rgb(tmp_path / "a.tif", size=64)], window_size=16)
    taken = []
    for rank in range(2):
        ds = RasterWindows(sources, 16, rank=rank, world_size=2)
        for worker in range(2):
            it = ds.shard_indices(worker, 2)
            taken.extend(next(it) for _ in range(25))
    assert sorted(taken) == list(range(100))


def test_mostly_nodata_windows_are_skipped(tmp_path):
    data = textured_scene(3, 128, seed=1)
    data[:, :, :64] = 0  # left half nodata
    path = write_raster(tmp_path / "half.tif", data, nodata=0)
    ds = RasterWindows(open_sources([path], window_size=32), 32, max_nodata_fraction=0.25)
    items = [item for item, _ in zip(ds, range(30), strict=False)]
    for item in items:
        assert (~item["valid"]).float().mean() <= 0.25
        assert item["ref"].col >= 64 - 8  # at most a quarter of the window in the nodata half
        assert float(item["image"][:, ~item["valid"]].abs().sum()) == 0.0
    skipped = items[-1]["ref"].index + 1 - len(items)
    assert skipped > 0  # some windows were consumed and dropped
    all_nodata = write_raster(tmp_path / "empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    with pytest.raises(TrainingDataError, match="nodata"):
        RasterWindows(open_sources([all_nodata], window_size=32), 32).check()


def test_paths_globs_folders_lists_and_mosaics(tmp_path):
    (tmp_path / "tiles").mkdir()
    data = textured_scene(3, 64, seed=2)
    left = write_raster(tmp_path / "tiles" / "l.tif", np.ascontiguousarray(data[:, :, :32]))
    from affine import Affine

    right = write_raster(
        tmp_path / "tiles" / "r.tif",
        np.ascontiguousarray(data[:, :, 32:]),
        transform=Affine(10, 0, 500000 + 320, 0, -10, 4100000),
    )
    (tmp_path / "list.txt").write_text("# tiles\ntiles/l.tif\n\ntiles/r.tif\n")
    assert expand_paths([tmp_path / "tiles"]) == [str(left), str(right)]
    assert expand_paths([str(tmp_path / "tiles" / "*.tif")]) == [str(left), str(right)]
    assert expand_paths([tmp_path / "list.txt"]) == [str(left), str(right)]
    mosaic = open_sources([tmp_path / "list.txt"], mosaic=True, window_size=48)
    assert len(mosaic) == 1 and mosaic[0].shape == (64, 64)
    item = RasterWindows(mosaic, 48).read(RasterWindows(mosaic, 48).ref(0))
    ref = item["ref"]
    want = data[:, ref.row : ref.row + 48, ref.col : ref.col + 48] / 255.0
    np.testing.assert_allclose(item["image"].numpy(), want, rtol=1e-6)
    with pytest.raises(TrainingDataError, match="no such file"):
        expand_paths([tmp_path / "missing.tif"])
    with pytest.raises(TrainingDataError, match="matches no file"):
        expand_paths([str(tmp_path / "*.jp2")])


def test_bad_inputs_are_refused(tmp_path):
    rgb = write_rgb(tmp_path / "rgb.tif", size=64)
    with pytest.raises(TrainingDataError, match=r"gives 3 band.*takes 4.*fewer"):
        open_sources([rgb], in_chans=4)
    with pytest.raises(TrainingDataError, match="larger than every raster"):
        open_sources([rgb], window_size=65)
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(TrainingDataError, match=r"notes\.tif"):
        open_sources([tmp_path / "notes.tif"])
    small = write_rgb(tmp_path / "small.tif", size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = open_sources([rgb, small], window_size=48)
    assert [s.paths[0] for s in kept] == [str(rgb)]
    assert any("smaller than" in str(w.message) for w in caught)


def test_normalization_from_stats_or_meta(tmp_path):
    from geodino.models.meta import SAT_MEAN, SAT_STD, BackboneMeta

    a = write_rgb(tmp_path / "a.tif", size=64, seed=0)
    b = write_rgb(tmp_path / "b.tif", size=64, seed=5)
    sources = open_sources([a, b])
    mean, std, where = normalization_stats(sources)
    assert where == "stats"
    both = np.concatenate([textured_scene(3, 64, 0), textured_scene(3, 64, 5)], axis=2) / 255.0
    np.testing.assert_allclose(mean, both.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, both.std(axis=(1, 2)), rtol=1e-4)
    sat = BackboneMeta(weights="sat493m", mean=SAT_MEAN, std=SAT_STD)
    assert normalization_stats(sources, sat) == (SAT_MEAN, SAT_STD, "meta")
    assert normalization_stats(sources, BackboneMeta())[2] == "stats"  # random weights: statistics of the data
    with pytest.raises(TrainingDataError, match="13 bands"):
        normalization_stats(open_sources([write_rgb(tmp_path / "m.tif", size=32, bands=13)]), sat, mode="meta")
