"""Shared fixtures of the training tests: tiny configs and random batches in the agreed batch format."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one intra-op thread: the tiny models are faster so, and far faster on a shared, busy CPU."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(cfg, batch_size: int = 4, seed: int = 0, gram: bool | None = None) -> dict:
    """A random batch in the format `SSLMetaArch` takes, shaped by `cfg` (a PretrainConfig).

    Masks: the first half of the global crops get a random mask of about 30% of their patches (at least one).
    """
    gen = torch.Generator().manual_seed(seed)
    c, p = cfg.crops, cfg.student.patch_size
    C = cfg.student.in_chans
    n_g, n_l = c.n_global, c.n_local
    g = torch.randn(n_g * batch_size, C, c.global_size, c.global_size, generator=gen)
    local = torch.randn(n_l * batch_size, C, c.local_size, c.local_size, generator=gen) if n_l else None
    n_patches = (c.global_size // p) ** 2
    masks = torch.zeros(n_g * batch_size, n_patches, dtype=torch.bool)
    for i in range(0, n_g * batch_size, 2):
        masks[i] = torch.rand(n_patches, generator=gen) < 0.3
        masks[i, int(torch.randint(n_patches, (1,), generator=gen))] = True
    use_gram = cfg.gram.enabled and cfg.gram.high_res if gram is None else gram
    gram_crops = None
    if use_gram:
        s = cfg.gram_teacher_size
        gram_crops = torch.nn.functional.interpolate(g, size=(s, s), mode="bilinear", align_corners=False)
    return {
        "global_crops": g,
        "local_crops": local,
        "masks": masks,
        "gram_crops": gram_crops,
        "n_global": n_g,
        "n_local": n_l,
    }


@pytest.fixture
def batch_factory():
    """`make_batch` as a fixture (test modules should not import conftest by name)."""
    return make_batch


@pytest.fixture
def tiny_cfg():
    """The tiny recipe, smaller still: 2 local crops, batch 4, the official test ViT's patch 16 kept at 8."""
    from geodino.training.config import load_config

    def make(*overrides: str):
        return load_config("tiny", ["crops.n_local=2", "train.batch_size=4", *overrides])

    return make
