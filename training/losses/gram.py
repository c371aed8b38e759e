"""Gram anchoring loss: keep the student's patch-similarity matrix close to a frozen Gram teacher's.

Computed in float32. See dinov3-reference.md, section 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GramLoss"]


class GramLoss(nn.Module):
    """Mean squared error between the Gram matrices of student and teacher patch features.

    Args:
        apply_norm: L2-normalise each patch feature first (cosine similarities).
        img_level: one N x N Gram matrix per image (True), or one (B*N) x (B*N) matrix over the flattened batch
            (False). The default of `forward`'s `img_level`.
        remove_neg: clip negative similarities to 0 in both matrices.
        remove_only_teacher_neg: clip the teacher's negative similarities to 0, and the student's negative
            similarities where the teacher's was negative. NOTE: the DINOv3 release zeroes the teacher's
            negatives before building the student's mask, so its version never clips the student (an upstream
            bug); this implements the intended rule, with the mask taken from the teacher before clipping.
    """

    def __init__(
        self,
        apply_norm: bool = True,
        img_level: bool = True,
        remove_neg: bool = True,
        remove_only_teacher_neg: bool = False,
    ) -> None:
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError("remove_neg and remove_only_teacher_neg are exclusive: pick one")
        self.apply_norm = apply_norm
        self.img_level = img_level
        self.remove_neg = remove_neg
        self.remove_only_teacher_neg = remove_only_teacher_neg

    def _gram(self, feats: Tensor, img_level: bool) -> Tensor:
        x = feats.float()
        if self.apply_norm:
            x = F.normalize(x, dim=-1)
        if not img_level:
            x = x.flatten(0, 1)  # (B*N, D)
        return x @ x.transpose(-1, -2)

    def forward(
        self,
        output_feats: Tensor,
        target_feats: Tensor,
        img_level: bool | None = True,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """Gram MSE.

        Args:
            output_feats: (B, N, D) student patch features.
            target_feats: (B, N, D) Gram-teacher patch features (no gradient is taken through them).
            img_level: per-image Gram matrices (True) or over the flattened batch (False); None uses the
                constructor's `img_level`. The reference's forward defaults to True whatever the constructor said;
                so does this one, for recipes that carry over.
            token_mask: (B, N) bool, the patch tokens to compare (geodino's extension for Gram on masked or
                unmasked tokens only); None: all. Per image, only entries (i, j) with both tokens selected count;
                over the flattened batch, the Gram matrix of the selected tokens.

        Returns:
            scalar float32: mean over all (selected) entries of the (B, N, N) or (B*N, B*N) squared differences;
            0 when no token is selected.
        """
        if output_feats.ndim != 3 or output_feats.shape != target_feats.shape:
            raise ValueError(
                f"Gram loss expects student and teacher features of the same (B, N, D) shape, got "
                f"{tuple(output_feats.shape)} and {tuple(target_feats.shape)}"
            )
        level = self.img_level if img_level is None else img_level
        pair_mask = None
        if token_mask is not None:
            if token_mask.shape != output_feats.shape[:2]:
                raise ValueError(
                    f"token_mask {tuple(token_mask.shape)} does not match features {tuple(output_feats.shape)}"
                )
            if not level:
                # Over the batch: keep the selected tokens only, as one (1, M, D) "image".
                output_feats = output_feats[token_mask].unsqueeze(0)
                target_feats = target_feats[token_mask].unsqueeze(0)
                level = True
            else:
                pair_mask = token_mask.unsqueeze(-1) & token_mask.unsqueeze(-2)  # (B, N, N)
            if not bool(token_mask.any()):
                return output_feats.sum() * 0.0
        student = self._gram(output_feats, level)
        with torch.no_grad():
            teacher = self._gram(target_feats.detach(), level)
        if self.remove_neg:
            student = student.clamp(min=0.0)
            teacher = teacher.clamp(min=0.0)
        elif self.remove_only_teacher_neg:
            teacher_neg = teacher < 0  # taken before clipping (the upstream bug takes it after)
            teacher = teacher.clamp(min=0.0)
            student = torch.where(teacher_neg & (student < 0), torch.zeros_like(student), student)
        if pair_mask is not None:
            return ((student - teacher) ** 2)[pair_mask].mean()
        return F.mse_loss(student, teacher)
