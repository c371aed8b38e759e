"""iBOT loss on masked patch tokens: the student predicts, at masked positions, the teacher's patch targets.

Follows the DINOv3 release's names and semantics (dinov3-reference.md, section 2); computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.training.distributed import all_reduce, get_world_size
from geodino.training.losses.dino_clstoken import sinkhorn_knopp

__all__ = ["iBOTPatchLoss"]


class iBOTPatchLoss(nn.Module):  # noqa: N801 (the reference's name)
    """Cross-entropy per masked patch, averaged per image over its masked patches, then over images.

    Args:
        patch_out_dim: number of patch prototypes K (the iBOT head's output width).
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher centre (only for `softmax_center_teacher`).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: Tensor, teacher_temp: float, update_centers: bool = True):
        """``softmax((t - center) / temp)`` over (..., K) teacher patch logits; optionally update the centre."""
        t = teacher_patch_tokens.float()
        probs = F.softmax((t - self.center.reshape(-1)) / teacher_temp, dim=-1)
        if update_centers:
            self.update_center(t)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: Tensor) -> None:
        """EMA of the mean teacher patch logit over every rank's patches."""
        flat = teacher_patch_tokens.float().reshape(-1, self.patch_out_dim)
        batch_center = all_reduce(flat.sum(dim=0)) / (flat.shape[0] * get_world_size())
        self.center.mul_(self.center_momentum).add_(batch_center.reshape(1, 1, -1), alpha=1 - self.center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: Tensor, teacher_temp: float, n_masked_patches_tensor: Tensor, n_iterations: int = 3
    ) -> Tensor:
        """Sinkhorn-Knopp targets over the masked patches of the global batch.

        Args:
            teacher_output: (M, K) teacher logits of this rank's masked patches.
            teacher_temp: teacher temperature.
            n_masked_patches_tensor: this rank's masked-patch count M (a one-element tensor); summed over ranks
                here to give the total number of samples (every rank may mask a different number).
            n_iterations: alternations of prototype and sample normalisation.

        Returns:
            (M, K) float32 targets, each row summing to 1.
        """
        total = all_reduce(n_masked_patches_tensor.detach().clone().float().reshape(1))
        return sinkhorn_knopp(teacher_output, teacher_temp, total, n_iterations)

    def forward(self, student_patch_tokens: Tensor, teacher_patch_tokens: Tensor, student_masks_flat: Tensor) -> Tensor:
        """Loss over full patch grids: only masked positions count.

        Args:
            student_patch_tokens: (B, N, K) student patch logits.
            teacher_patch_tokens: (B, N, K) teacher patch targets (probabilities).
            student_masks_flat: (B, N) bool, True where the student's patch was masked.

        Returns:
            ``-mean_b [sum_{n masked} sum_k t log_softmax(s / temp) / max(n_masked_b, 1)]`` (scalar float32).
        """
        log_p = F.log_softmax(student_patch_tokens.float() / self.student_temp, dim=-1)
        ce = -(teacher_patch_tokens.float() * log_p).sum(dim=-1)  # (B, N)
        masks = student_masks_flat.to(ce.dtype)
        per_image = (ce * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: Tensor,
        teacher_patch_tokens_masked: Tensor,
        student_masks_flat: Tensor,
        n_masked_patches: int | None = None,
        masks_weight: Tensor | None = None,
    ) -> Tensor:
        """Loss over the gathered masked patches only (the form the training step uses).

        Args:
            student_patch_tokens_masked: (M, K) student logits at masked positions, in ``masks.nonzero()`` order
                (image-major).
            teacher_patch_tokens_masked: (M, K) teacher targets at the same positions.
            student_masks_flat: (B, N) bool masks of the B global crops (B counts every crop, masked or not).
            n_masked_patches: use only the first n rows (when M was padded); None uses all.
            masks_weight: (M,) weight of each masked patch; None gives ``1 / n_masked`` of its image, so every
                masked image weighs the same whatever its mask ratio.

        Returns:
            ``-sum_m w_m sum_k t_m log_softmax(s_m / temp) / B`` (scalar float32): the mean over all B images
            of each image's mean cross-entropy (images without a mask contribute 0).
        """
        log_p = F.log_softmax(student_patch_tokens_masked.float() / self.student_temp, dim=-1)
        ce = -(teacher_patch_tokens_masked.float() * log_p).sum(dim=-1)  # (M,)
        if masks_weight is None:
            masks_weight = masks_weight_from(student_masks_flat)
        if n_masked_patches is not None:
            ce = ce[:n_masked_patches]
            masks_weight = masks_weight[:n_masked_patches]
        if ce.shape != masks_weight.shape:
            raise ValueError(f"{ce.shape[0]} masked patch logits but {masks_weight.shape[0]} mask weights")
        return (ce * masks_weight.float()).sum() / student_masks_flat.shape[0]


def masks_weight_from(masks: Tensor) -> Tensor:
    """(B, N) bool masks -> (M,) weights ``1 / n_masked`` of each masked patch's image, in ``nonzero`` order."""
    per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).float()  # (B,)
    return per_image.unsqueeze(-1).expand_as(masks)[masks]
