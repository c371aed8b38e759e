"""Throughput of a pretraining run: images/s, a FLOP count per image for the ViT and its heads, and MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the devices' peak FLOP/s. The model FLOPs of one image
are those of the step's matrix products (2 FLOPs per multiply-add; norms, activations, softmax and the optimiser
left out, as usual for MFU): the student's forward and backward (3 x forward) on every crop, the EMA teacher's
forward on the global crops, the Gram teacher's forward (at its crop size) when Gram anchoring is on, and the heads
on the tokens they see. Activation checkpointing's recomputation is not counted (it is not model work).

The peak is ``parallel.peak_tflops`` when given, else the dense bf16 tensor-core peak of a known GPU from the
vendors' datasheets (:data:`PEAK_BF16_TFLOPS`); unknown devices and CPUs get no MFU (None).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geodino.training.config import HeadConfig, PretrainConfig

__all__ = ["PEAK_BF16_TFLOPS", "Throughput", "head_flops", "peak_tflops", "step_flops_per_image", "vit_flops"]

#: Dense bf16 peak TFLOP/s (no sparsity) by a substring of ``torch.cuda.get_device_name()``; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


def vit_flops(arch: Any, side: int) -> float:
    """Forward FLOPs of a ViT (`geodino.models.config.VitConfig`) on one square image of ``side`` pixels.

    Tokens T = patches N + 1 cls + storage tokens; per block: q/k/v and output projections ``2 T (4 D^2)``,
    attention scores and weighted values ``2 (2 T^2 D)``, the FFN ``2 T D H`` per matrix (2 matrices for an MLP,
    3 for SwiGLU); plus the patch embedding ``2 N (p^2 C) D``.
    """
    p, D = arch.patch_size, arch.embed_dim
    n = (side // p) ** 2
    t = n + 1 + arch.n_storage_tokens
    ffn_matrices = 2 if arch.ffn_layer == "mlp" else 3
    block = 2 * t * 4 * D * D + 2 * 2 * t * t * D + 2 * t * D * arch.ffn_hidden * ffn_matrices
    return float(2 * n * p * p * arch.in_chans * D + arch.depth * block)


def head_flops(head: HeadConfig, in_dim: int) -> float:
    """Forward FLOPs of a DINO/iBOT head on one token: MLP to the bottleneck, then the prototype layer."""
    dims = [in_dim] + [head.hidden_dim] * (head.nlayers - 1) + [head.bottleneck_dim]
    mlp = sum(a * b for a, b in itertools.pairwise(dims))
    return float(2 * (mlp + head.bottleneck_dim * head.prototypes))


def step_flops_per_image(cfg: PretrainConfig) -> float:
    """Model FLOPs of one training step per image (its global and local crops), as the module docstring counts."""
    from geodino.models.config import ARCHS
    from geodino.training.config import backbone_name

    s, c, m = cfg.student, cfg.crops, cfg.masking
    arch = ARCHS[backbone_name(s.arch)].replace(patch_size=s.patch_size, in_chans=s.in_chans)
    D = arch.embed_dim
    n_global_patches = (c.global_size // s.patch_size) ** 2
    # expected masked patches per image: a fraction `probability` of its global crops, at the mean mask ratio
    masked = c.n_global * m.probability * sum(m.ratio_min_max) / 2 * n_global_patches
    dino, ibot = head_flops(cfg.dino_head, D), head_flops(cfg.ibot_head, D)
    student = (
        c.n_global * vit_flops(arch, c.global_size)
        + c.n_local * vit_flops(arch, c.local_size)
        + (c.n_global + c.n_local) * dino
        + masked * ibot
    )
    teacher = c.n_global * (vit_flops(arch, c.global_size) + dino) + masked * ibot
    gram = 0.0
    if cfg.gram.enabled:
        side = cfg.gram_teacher_size if cfg.gram.high_res else c.global_size
        gram = c.n_global * vit_flops(arch, side)
    return 3 * student + teacher + gram  # backward ~ 2 x forward


def peak_tflops(device: torch.device, given: float | None = None) -> float | None:
    """The device's peak TFLOP/s: ``given`` if set, else :data:`PEAK_BF16_TFLOPS` for a known GPU, else None."""
    if given is not None:
        return float(given)
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


@dataclass(frozen=True)
class Throughput:
    """Images/s and MFU of a run: ``images_per_step`` over all ranks, ``devices`` of ``peak`` TFLOP/s each."""

    images_per_step: int
    flops_per_image: float
    devices: int = 1
    peak: float | None = None  # TFLOP/s of one device; None: no MFU

    @classmethod
    def for_run(cls, cfg: PretrainConfig, device: torch.device, world: int) -> Throughput:
        """The accounting of a run of ``cfg`` on ``world`` ranks, each on a ``device`` like this one."""
        return cls(
            images_per_step=cfg.train.batch_size * world,
            flops_per_image=step_flops_per_image(cfg),
            devices=world,
            peak=peak_tflops(device, cfg.parallel.peak_tflops),
        )

    def images_per_s(self, steps: int, seconds: float) -> float:
        """Images per second over all ranks for ``steps`` steps taking ``seconds``."""
        return self.images_per_step * steps / max(seconds, 1e-9)

    def mfu(self, images_per_s: float) -> float | None:
        """Achieved model FLOP/s over the devices' total peak, in [0, 1] for a sane count; None without a peak."""
        if self.peak is None:
            return None
        return self.flops_per_image * images_per_s / (self.peak * 1e12 * self.devices)
