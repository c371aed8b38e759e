"""FLOP counts of the ViT and heads against torch's own FlopCounterMode; MFU and peaks."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from geodino.models.config import ARCHS
from geodino.models.vit import DinoVisionTransformer
from geodino.training.config import HeadConfig, load_config
from geodino.training.dino_head import DINOHead
from geodino.training.throughput import Throughput, head_flops, peak_tflops, step_flops_per_image, vit_flops


def _counted(fn) -> int:
    # the math attention backend runs attention as matrix products, which FlopCounterMode counts (fused CPU
    # attention kernels it does not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("arch", "side"), [("dinov3_vit_test", 64), ("dinov3_vit_test", 32), ("dinov3_vits16plus", 64)]
)
def test_vit_flops_match_torchs_count(arch: str, side: int) -> None:
    cfg = ARCHS[arch].replace(patch_size=8) if arch == "dinov3_vit_test" else ARCHS[arch]
    model = DinoVisionTransformer(cfg).eval()
    x = torch.randn(2, cfg.in_chans, side, side)
    with torch.no_grad():
        counted = _counted(lambda: model.forward_features(x))
    assert vit_flops(cfg, side) * 2 == pytest.approx(counted, rel=1e-9)  # 2 images


def test_head_flops_match_torchs_count() -> None:
    cfg = HeadConfig(prototypes=300, hidden_dim=48, bottleneck_dim=16, nlayers=3)
    head = DINOHead(64, cfg.prototypes, cfg.hidden_dim, cfg.bottleneck_dim, cfg.nlayers)
    with torch.no_grad():
        counted = _counted(lambda: head(torch.randn(5, 64)))
    # the L2 normalisation is not a matrix product: FlopCounterMode leaves it out too
    assert head_flops(cfg, 64) * 5 == pytest.approx(counted, rel=1e-9)


def test_step_flops_count_student_three_times_and_the_gram_teacher() -> None:
    base = load_config("tiny", ["masking.probability=0"])  # no masked patches: no iBOT head work
    arch = ARCHS["dinov3_vit_test"].replace(patch_size=8)
    c = base.crops
    dino = head_flops(base.dino_head, 64)
    student = c.n_global * (vit_flops(arch, 64) + dino) + c.n_local * (vit_flops(arch, 32) + dino)
    teacher = c.n_global * (vit_flops(arch, 64) + dino)
    assert step_flops_per_image(base) == pytest.approx(3 * student + teacher)
    gram = load_config("tiny", ["masking.probability=0", "gram.enabled=true", "gram.high_res=true"])
    assert step_flops_per_image(gram) - step_flops_per_image(base) == pytest.approx(c.n_global * vit_flops(arch, 128))


def test_mfu_and_peaks() -> None:
    cfg = load_config("tiny", ["train.batch_size=4"])
    cpu = Throughput.for_run(cfg, torch.device("cpu"), world=2)
    assert cpu.images_per_step == 8 and cpu.peak is None and cpu.mfu(100.0) is None
    assert cpu.images_per_s(steps=5, seconds=2.0) == 20.0
    given = Throughput.for_run(load_config("tiny", ["parallel.peak_tflops=2.0"]), torch.device("cpu"), world=2)
    # achieved FLOP/s over the two devices' peak
    assert given.mfu(1000.0) == pytest.approx(given.flops_per_image * 1000.0 / (2 * 2e12))
    assert peak_tflops(torch.device("cpu")) is None and peak_tflops(torch.device("cpu"), 5) == 5.0
