"""FeatureCache: exact features, hits without backbone calls, the size bound, float16, and the disk store."""

from __future__ import annotations

import pytest
import torch
from heads_helpers import make_tiny_backbone

from geodino.heads.feature_cache import ENTRY_SUFFIX, FeatureCache, remove_cache_directory
from geodino.heads.features import take_features

LAYERS = [0, 1]


def batch_sizes(backbone) -> list[int]:
    """Batch size of every backbone forward pass from now on (a hook on the patch embedding)."""
    sizes: list[int] = []
    backbone.patch_embed.register_forward_hook(lambda _m, inputs, _o: sizes.append(int(inputs[0].shape[0])))
    return sizes


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (pa, ca), (pb, cb) in zip(a, b, strict=True):
        assert torch.equal(pa, pb) and torch.equal(ca, cb)


def test_features_are_exact_and_hits_skip_the_backbone() -> None:
    backbone = make_tiny_backbone(depth=2)
    cache = FeatureCache(backbone, LAYERS)
    x = images()
    keys = [("train", i, 0) for i in range(4)]
    with torch.no_grad():
        expect = take_features(backbone, x, LAYERS)
    sizes = batch_sizes(backbone)
    assert_same(cache.features(x, keys), expect)
    assert_same(cache.features(x, keys), expect)  # read back
    assert sizes == [4]
    # a batch of two held and two new entries computes just the two new ones, in one call
    mixed = torch.cat([x[:2], images(2, seed=1)])
    out = cache.features(mixed, [*keys[:2], ("train", 9, 0), ("train", 9, 1)])
    assert sizes == [4, 2]
    with torch.no_grad():
        assert_same([(p[2:], c[2:]) for p, c in out], take_features(backbone, mixed[2:], LAYERS))
    s = cache.stats()
    assert (s["hits"], s["misses"], s["forwards"], s["entries"]) == (6, 6, 2, 6)
    per_entry = sum(p[0].numel() * 4 + c[0].numel() * 4 for p, c in expect)
    assert s["bytes"] == 6 * per_entry
    assert ("train", 9, 1) in cache and ("val", 0, 0) not in cache


def test_size_bound_computes_the_rest_on_the_fly() -> None:
    backbone = make_tiny_backbone(depth=2)
    x = images()
    with torch.no_grad():
        expect = take_features(backbone, x, LAYERS)
    per_entry = sum(p[0].numel() * 4 + c[0].numel() * 4 for p, c in expect)
    cache = FeatureCache(backbone, LAYERS, max_bytes=2 * per_entry + 10)
    sizes = batch_sizes(backbone)
    keys = [("train", i, 0) for i in range(4)]
    for _ in range(3):
        assert_same(cache.features(x, keys), expect)  # never wrong, whether stored or not
    s = cache.stats()
    assert s["entries"] == 2 and s["bytes"] == 2 * per_entry <= s["max_bytes"]
    assert s["uncached"] == 6 and s["hits"] == 4 and s["misses"] == 8
    assert sizes == [4, 2, 2]


def test_float16_rounds_hits_and_misses_alike() -> None:
    backbone = make_tiny_backbone(depth=2)
    x = images()
    keys = [("train", i, 0) for i in range(4)]
    cache = FeatureCache(backbone, LAYERS, dtype=torch.float16)
    first, second = cache.features(x, keys), cache.features(x, keys)
    assert_same(first, second)
    with torch.no_grad():
        exact = take_features(backbone, x, LAYERS)
    for (p, _), (q, _) in zip(first, exact, strict=True):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q.half().float(), rtol=0, atol=0)
    full = FeatureCache(backbone, LAYERS)
    full.features(x, keys)
    assert cache.stats()["bytes"] * 2 == full.stats()["bytes"]


def test_disk_cache_is_reused_by_fingerprint(tmp_path) -> None:
    backbone = make_tiny_backbone(depth=2)
    x = images()
    keys = [("train", i, 3) for i in range(4)]
    first = FeatureCache(backbone, LAYERS, directory=tmp_path / "c", key="chips-a")
    out = first.features(x, keys)
    assert sorted(p.name for p in (tmp_path / "c").glob(f"*{ENTRY_SUFFIX}")) == [
        f"train-{i}-3{ENTRY_SUFFIX}" for i in range(4)
    ]
    assert first.stats()["bytes"] == sum(p.stat().st_size for p in (tmp_path / "c").glob(f"*{ENTRY_SUFFIX}"))
    # a new cache on the same directory, backbone and key reads the files: no backbone call
    again = FeatureCache(backbone, LAYERS, directory=tmp_path / "c", key="chips-a")
    sizes = batch_sizes(backbone)
    assert_same(again.features(x, keys), out)
    assert sizes == [] and again.stats()["hits"] == 4
    # other chips (key) or other weights: the old files are never used
    other_data = FeatureCache(backbone, LAYERS, directory=tmp_path / "c", key="chips-b")
    assert len(other_data) == 0
    other_data.features(x, keys)
    other = make_tiny_backbone(seed=1, depth=2)
    fresh = FeatureCache(other, LAYERS, directory=tmp_path / "c", key="chips-b")
    assert len(fresh) == 0
    with torch.no_grad():
        assert_same(fresh.features(x, keys), take_features(other, x, LAYERS))


def test_refusals(tmp_path) -> None:
    backbone = make_tiny_backbone(depth=2)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"not empty and has no manifest\.json"):
        FeatureCache(backbone, LAYERS, directory=foreign)
    with pytest.raises(ValueError, match="not a geodino feature cache, not deleted"):
        remove_cache_directory(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    cache = FeatureCache(backbone, LAYERS, directory=tmp_path / "c")
    with pytest.raises(ValueError, match="keys are ints or short alphanumeric"):
        cache.features(images(1), [("a/b", 0)])
    with pytest.raises(ValueError, match="duplicate keys"):
        cache.features(images(2), [("t", 0), ("t", 0)])
    with pytest.raises(ValueError, match="2 keys for a batch of 1"):
        cache.features(images(1), [("t", 0), ("t", 1)])
    remove_cache_directory(tmp_path / "c")
    assert not (tmp_path / "c").exists()
