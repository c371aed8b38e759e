"""Multi-crop augmentation, blockwise iBOT masks and the collated batch format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from training_data_helpers import single_thread, write_rgb  # noqa: F401 (single_thread is a fixture)

from geodino.training.data import (
    BlockMaskGenerator,
    MultiCrop,
    MultiCropCollate,
    RasterWindows,
    open_sources,
    sample_masks,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _item(c: int = 3, s: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((c, s, s), generator=g)
    return {"image": image, "valid": torch.ones((s, s), dtype=torch.bool), "seed": seed}


def _component_sizes(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected True regions of a 2-D mask."""
    seen = np.zeros_like(mask)
    sizes = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            r, c = stack.pop()
            size += 1
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        sizes.append(size)
    return sizes


def test_mask_ratios_and_blocks():
    gen = BlockMaskGenerator((14, 14))
    rng = np.random.default_rng(0)
    masks = sample_masks(64, gen, rng, probability=0.5, ratio_range=(0.1, 0.5))
    assert masks.shape == (64, 196) and masks.dtype == bool
    counts = masks.sum(axis=1)
    assert (counts == 0).sum() == 32  # half the crops masked
    ratios = np.sort(counts[counts > 0] / 196)
    assert ratios.min() >= 0.1 - 1 / 196 and ratios.max() <= 0.5 + 1 / 196
    # Stratified: the i-th smallest ratio lies in the i-th of 32 equal sub-intervals of [0.1, 0.5].
    edges = np.linspace(0.1, 0.5, 33)
    assert np.all(ratios >= edges[:-1] - 1 / 196) and np.all(ratios <= edges[1:] + 1 / 196)
    for m in masks[counts > 0]:
        assert (
            min(_component_sizes(m.reshape(14, 14))) >= 4
        )  # every masked region holds at least one block of >= 4 patches


def test_block_aspect_ratio_and_exact_count():
    gen = BlockMaskGenerator((16, 16))
    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(200):
        mask = np.zeros((16, 16), dtype=bool)
        gen._block(mask, 40, rng)
        rows, cols = np.nonzero(mask)
        if rows.size:
            ratios.append((np.ptp(rows) + 1) / (np.ptp(cols) + 1))
            assert rows.size >= 4
    assert min(ratios) >= 0.3 and max(ratios) <= 1 / 0.3
    assert min(ratios) < 0.6 and max(ratios) > 1.6  # both orientations occur
    for n in (1, 4, 13, 100, 256):
        assert gen(n, rng).sum() == max(n, 4)


def test_multicrop_shapes_normalisation_and_validity():
    aug = MultiCrop(mean=[0.5] * 3, std=[0.25] * 3, global_size=32, local_size=16, n_local=4, gram_size=64)
    out = aug(_item())
    assert [tuple(t.shape) for t in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [tuple(t.shape) for t in out["local_crops"]] == [(3, 16, 16)] * 4
    assert [tuple(t.shape) for t in out["gram_crops"]] == [(3, 64, 64)] * 2
    for t in out["global_crops"] + out["local_crops"] + out["gram_crops"]:
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # Normalised uniform [0, 1] data: values within [-2, 2] up to jitter; gram crops undistorted.
    for t in out["gram_crops"]:
        assert t.min() >= -2.0 - 1e-4 and t.max() <= 2.0 + 1e-4
    # Same seed, same crops; another seed, other crops.
    again = aug(_item())
    assert all(torch.equal(a, b) for a, b in zip(out["global_crops"], again["global_crops"], strict=True))
    other = aug({**_item(), "seed": 1})
    assert not torch.equal(out["global_crops"][0], other["global_crops"][0])


def test_gram_crop_is_the_global_crop_at_another_size_without_colour():
    aug = MultiCrop(
        mean=[0.0] * 3, std=[1.0] * 3, global_size=32, local_size=16, n_local=0, gram_size=64,
        jitter=(0.0, 0.4, 0.4, 0.2), grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0,
    )  # fmt: skip
    out = aug(_item(seed=3))
    for crop, gram in zip(out["global_crops"], out["gram_crops"], strict=True):
        down = torch.nn.functional.interpolate(gram[None], size=(32, 32), mode="area")[0]
        assert (down - crop).abs().mean() < 0.05  # the same box, rotation and flip


def test_rotations_flips_and_photometric_ops_keep_imagery_valid():
    x = torch.arange(16.0).reshape(1, 4, 4).repeat(3, 1, 1)
    from geodino.training.data.multicrop import Box

    rot = MultiCrop.apply_box(x, Box(0, 0, 4, 4, rot90=1, flip=False), 4)
    assert torch.equal(rot, torch.rot90(x, 1, dims=(1, 2)))
    flipped = MultiCrop.apply_box(x, Box(0, 0, 4, 4, rot90=0, flip=True), 4)
    assert torch.equal(flipped, torch.flip(x, dims=(2,)))
    img = torch.rand(3, 32, 32)
    blurred = MultiCrop.blur(img, 1.5)
    assert blurred.shape == img.shape and blurred.std() < img.std()
    assert torch.allclose(blurred.mean(), img.mean(), atol=0.02)
    sol = MultiCrop.solarize(img)
    assert torch.equal(sol[img < 0.5], img[img < 0.5]) and torch.allclose(sol[img >= 0.5], 1 - img[img >= 0.5])


def test_multispectral_jitter_is_per_band_group():
    aug = MultiCrop(mean=[0.5] * 13, std=[0.2] * 13, jitter=(1.0, 0.4, 0.0, 0.0), grayscale_p=0.0)
    assert aug.band_groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12]]
    x = torch.full((13, 8, 8), 0.5)
    y = aug.colour(x, torch.Generator().manual_seed(0))
    factors = (y[:, 0, 0] / 0.5).tolist()
    for group in aug.band_groups:
        assert len({round(factors[i], 6) for i in group}) == 1  # one brightness factor per group
    assert len({round(f, 6) for f in factors}) == len(aug.band_groups)  # groups jitter independently
    with pytest.raises(ValueError, match="cover bands"):
        MultiCrop(mean=[0.0] * 4, std=[1.0] * 4, band_groups=[[0, 1], [1, 2, 3]])


def test_nodata_pixels_are_zero_after_normalisation():
    item = _item(s=64)
    item["valid"][:, :32] = False
    item["image"][:, ~item["valid"]] = 0.0
    aug = MultiCrop(mean=[0.5] * 3, std=[0.25] * 3, global_size=32, local_size=16, n_local=2, rotate90=False,
                    flip=False, global_scale=(1.0, 1.0), jitter=(0.0, 0, 0, 0), blur_p=(0, 0, 0), solarize_p=0.0)  # fmt: skip
    crop = aug(item)["global_crops"][0]
    assert crop[:, :, :15].abs().max() == 0.0  # left half (nodata) is zero
    assert (crop[:, :, 17:] != 0).float().mean() > 0.99  # valid half keeps its (downsampled) values


def test_collate_batch_format(tmp_path):
    path = write_rgb(tmp_path / "a.tif", size=96)
    sources = open_sources([path], in_chans=3, window_size=64)
    aug = MultiCrop(mean=[0.5] * 3, std=[0.2] * 3, global_size=32, local_size=16, n_local=3, gram_size=48)
    ds = RasterWindows(sources, 64, seed=1, transform=aug)
    collate = MultiCropCollate(patch_size=16, global_size=32)
    loader = DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate)
    batch = next(iter(loader))
    assert set(batch) == {"global_crops", "local_crops", "masks", "gram_crops", "n_global", "n_local"}
    assert batch["global_crops"].shape == (8, 3, 32, 32) and batch["global_crops"].dtype == torch.float32
    assert batch["local_crops"].shape == (12, 3, 16, 16)
    assert batch["gram_crops"].shape == (8, 3, 48, 48)
    assert batch["masks"].shape == (8, 4) and batch["masks"].dtype == torch.bool
    assert batch["masks"].any(dim=1).sum() == 4
    assert (batch["n_global"], batch["n_local"]) == (2, 3)
    # Crops first: rows 0..3 are crop 0 of images 0..3, rows 4..7 their crop 1.
    items = [aug(ds.read(ds.ref(i))) for i in range(4)]
    assert torch.equal(batch["global_crops"][1], items[1]["global_crops"][0])
    assert torch.equal(batch["global_crops"][5], items[1]["global_crops"][1])
    assert torch.equal(batch["local_crops"][4 * 2 + 3], items[3]["local_crops"][2])
    no_local = MultiCrop(mean=[0.5] * 3, std=[0.2] * 3, global_size=32, n_local=0)
    b2 = collate([no_local(ds.read(ds.ref(i))) for i in range(2)])
    assert b2["local_crops"] is None and b2["gram_crops"] is None and b2["n_local"] == 0


def test_blur_probabilities_are_the_intended_ones_not_the_inverted_release(monkeypatch):
    calls: list[int] = []

    class Counting(MultiCrop):
        def _photometric(self, x, blur_p, solarize_p, g):
            calls.append(blur_p)
            return super()._photometric(x, blur_p, solarize_p, g)

    aug = Counting(mean=[0.5] * 3, std=[0.2] * 3, global_size=16, local_size=16, n_local=2)
    for seed in range(3):
        aug(_item(s=32, seed=seed))
    assert calls[:4] == [1.0, 0.1, 0.5, 0.5]  # first global always blurred, second rarely, local crops half the time
    blurred: list[int] = []
    original = MultiCrop.blur

    def counting_blur(x, sigma):
        blurred.append(x.shape[-1])
        return original(x, sigma)

    monkeypatch.setattr(MultiCrop, "blur", staticmethod(counting_blur))
    plain = MultiCrop(mean=[0.5] * 3, std=[0.2] * 3, global_size=16, local_size=8, n_local=2, jitter=(0, 0, 0, 0))
    counts = {"second": 0, "local": 0}
    for seed in range(100):
        blurred.clear()
        plain(_item(s=32, seed=seed))
        assert blurred[0] == 16  # the first global crop, every time
        counts["second"] += blurred.count(16) - 1
        counts["local"] += blurred.count(8)
    assert 2 <= counts["second"] <= 25  # p = 0.1 of 100 (the release's inverted rule would give about 100)
    assert 70 <= counts["local"] <= 130  # p = 0.5 of 200
