"""The self-supervised meta-architecture: student, EMA teacher, optional Gram teacher, and the losses between them.

Named stages, so a loop, a benchmark or a test can time or replace each: `SSLMetaArch.get_teacher_output`,
`get_student_output`, `get_gram_teacher_output`, `compute_losses`, and `forward_backward` chaining them.

THE BATCH (agreed with the data pipeline) is a dict:

- ``global_crops``: (n_global * B, C, Hg, Wg) float32, normalised, crops first (every image's crop 0, then
  every image's crop 1, ...).
- ``local_crops``: (n_local * B, C, Hl, Wl) in the same order, or None when n_local == 0.
- ``masks``: (n_global * B, Ng) bool, True where the student's patch is replaced by the mask token;
  Ng = (Hg / p) * (Wg / p) patches per global crop, row-major.
- ``gram_crops``: (n_global * B, C, Hgt, Wgt), the same global crops at the Gram-teacher size without colour
  distortion (high-resolution Gram path), or None.
- ``n_global``, ``n_local``: ints.

Masked-patch indices, counts and per-patch weights are derived here from ``masks``.

Loss weighting (dinov3-reference.md, section 2): the DINO loss on crop pairs is split into a global term
(student global crop vs the teacher's *other* global crop: n_global * (n_global - 1) pairs) and a local term
(every local crop vs every global crop: n_local * n_global pairs), weighted by their share of all pairs (2/18 and
16/18 with 2 global and 8 local crops), so the DINO total is the mean over all pairs. iBOT is the per-image mean
over masked patches, averaged over the global crops' images and divided by n_global. KoLeo is summed over the
global crops (each crop's batch on its own). Gram is the MSE of Gram matrices of the student's global crops.
Total = dino_weight * dino + ibot_weight * ibot + koleo_weight * koleo + gram_weight(iteration) * gram.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.training.config import ConfigError, PretrainConfig, backbone_name
from geodino.training.dino_head import DINOHead
from geodino.training.ema import ema_update
from geodino.training.losses import DINOLoss, GramLoss, KoLeoLoss, KoLeoLossDistributed, iBOTPatchLoss
from geodino.training.losses.ibot_patch import masks_weight_from
from geodino.training.param_groups import get_param_groups
from geodino.training.schedules import Schedule, gram_weight_schedule

__all__ = ["LOSS_KEYS", "BatchError", "GramTeacherError", "GramTeacherSchedule", "SSLMetaArch", "build_backbone"]

# Loss keys of the dict of `compute_losses` (unweighted values; 0 for a term that is off); the dict also holds
# "gram_weight", the scheduled Gram weight of that iteration.
LOSS_KEYS = ("dino/global", "dino/local", "ibot", "koleo", "gram")


class BatchError(ValueError):
    """A batch that does not follow the documented format."""


class GramTeacherError(ValueError):
    """A Gram-teacher checkpoint that cannot serve this student."""


# ----------------------------------------------------------------------------------------------- building
def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """The student backbone of `cfg.student`: loaded from `weights` (any format load_backbone reads) or random.

    Raises:
        ConfigError: the weights do not match `arch`, `patch_size` or `in_chans`.
    """
    from geodino.models.checkpoint import load_backbone
    from geodino.models.config import ARCHS, arch_name_for
    from geodino.models.vit import DinoVisionTransformer

    s = cfg.student
    name = backbone_name(s.arch)
    options = {"drop_path_rate": s.drop_path, "rope_rescale": s.rope_rescale}
    if s.weights is None:
        arch = ARCHS[name].replace(patch_size=s.patch_size, in_chans=s.in_chans)
        return DinoVisionTransformer(arch, **options).train()
    model = load_backbone(s.weights, pretraining=s.pretraining, **options)
    # The architecture check ignores the patch size (checked next): a patch-8 tiny run's export must load too.
    found = arch_name_for(model.config.replace(patch_size=ARCHS[name].patch_size))
    if found != name:
        raise ConfigError(
            f"{s.weights}: holds {found or 'an unknown architecture'} (width {model.embed_dim}, depth "
            f"{len(model.blocks)}), not student.arch={s.arch}"
        )
    if model.patch_size != s.patch_size:
        raise ConfigError(
            f"{s.weights}: patch size {model.patch_size}, but student.patch_size={s.patch_size}; set it to "
            f"{model.patch_size}"
        )
    if model.in_chans != s.in_chans:
        raise ConfigError(
            f"{s.weights}: takes {model.in_chans} bands, but student.in_chans={s.in_chans}; adapt the weights with "
            f"geodino.models.bands.adapt_bands first, or set student.in_chans={model.in_chans}"
        )
    return model.train()


def network_with_heads(cfg: PretrainConfig, backbone: nn.Module) -> nn.ModuleDict:
    """``backbone`` with the DINO and iBOT heads of ``cfg`` on its width: keys backbone, dino_head, ibot_head."""
    dim, h1, h2 = backbone.embed_dim, cfg.dino_head, cfg.ibot_head
    return nn.ModuleDict(
        {
            "backbone": backbone,
            "dino_head": DINOHead(dim, h1.prototypes, h1.hidden_dim, h1.bottleneck_dim, h1.nlayers),
            "ibot_head": DINOHead(dim, h2.prototypes, h2.hidden_dim, h2.bottleneck_dim, h2.nlayers),
        }
    )


def ssl_losses(cfg: PretrainConfig) -> tuple[DINOLoss, iBOTPatchLoss, nn.Module]:
    """The DINO, iBOT and KoLeo losses of ``cfg`` (KoLeo over all ranks when ``loss.koleo_distributed``)."""
    lc = cfg.loss
    return (
        DINOLoss(cfg.dino_head.prototypes, student_temp=lc.student_temp),
        iBOTPatchLoss(cfg.ibot_head.prototypes, student_temp=lc.student_temp),
        KoLeoLossDistributed() if lc.koleo_distributed else KoLeoLoss(),
    )


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@dataclass(frozen=True)
class GramTeacherSchedule:
    """When the Gram teacher is (re)copied from the EMA teacher.

    A copy happens at `start` (when `copy_at_start`: the "ema" source; a checkpoint teacher is already in place),
    then at ``start + k * update_frequency`` for k = 1 .. `max_updates` (None: no limit; `update_frequency`
    None: never refreshed). A pure function of the iteration, so a resumed run copies at the same iterations.
    """

    start: int
    update_frequency: int | None = None
    max_updates: int | None = None
    copy_at_start: bool = True

    def should_update(self, iteration: int) -> bool:
        """Whether to copy the EMA teacher into the Gram teacher before training step `iteration`."""
        if iteration == self.start:
            return self.copy_at_start
        if self.update_frequency is None or iteration < self.start:
            return False
        k, rest = divmod(iteration - self.start, self.update_frequency)
        return rest == 0 and (self.max_updates is None or k <= self.max_updates)

    def update_iterations(self, until: int) -> list[int]:
        """Every iteration in [0, until) at which a copy happens."""
        return [i for i in range(until) if self.should_update(i)]


# ---------------------------------------------------------------------------------------------- the model
class SSLMetaArch(nn.Module):
    """Student (backbone + DINO head + iBOT head), EMA teacher (a frozen copy of all three), optional Gram teacher.

    Args:
        cfg: the run's configuration.

    Attributes:
        student / teacher: ``nn.ModuleDict`` with ``backbone``, ``dino_head``, ``ibot_head``.
        gram_teacher: frozen backbone, or None when Gram anchoring is off.
        gram_schedule: `GramTeacherSchedule`, or None.
        gram_weight: the Gram weight schedule (a callable of the iteration).
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = build_backbone(cfg)
        self.student = network_with_heads(cfg, backbone)
        self.teacher = _freeze(copy.deepcopy(self.student))
        self.dino_loss, self.ibot_loss, self.koleo_loss = ssl_losses(cfg)
        g = cfg.gram
        self.gram_loss = GramLoss(
            apply_norm=g.apply_norm,
            img_level=g.img_level,
            remove_neg=g.remove_neg,
            remove_only_teacher_neg=g.remove_only_teacher_neg,
        )
        self.gram_teacher: nn.Module | None = None
        self.gram_schedule: GramTeacherSchedule | None = None
        self.gram_weight: Schedule = gram_weight_schedule(g.enabled, g.start_iteration, g.weight, g.weight_ramp_iters)
        if g.enabled:
            from_ema = g.teacher == "ema"
            if from_ema:
                self.gram_teacher_from_ema()  # a placeholder until the copy at start_iteration
            else:
                self.load_gram_teacher(g.teacher)
            self.gram_schedule = GramTeacherSchedule(g.start_iteration, g.update_frequency, g.max_updates, from_ema)

    # ------------------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> SSLMetaArch:
        """Only the student trains; the teachers stay in eval mode (no drop path, no RoPE augmentation)."""
        super().train(mode)
        self.teacher.eval()
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.teacher["backbone"].cls_token.device

    def backbones(self) -> list[nn.Module]:
        """The backbones whose metadata (bands, normalisation) the run sets: student and EMA teacher."""
        return [self.student["backbone"], self.teacher["backbone"]]

    @property
    def exported_backbone(self) -> nn.Module:
        """The backbone the run exports and diagnoses: the EMA teacher's."""
        return self.teacher["backbone"]

    # ---------------------------------------------------------------------------------- Gram teacher
    def load_gram_teacher(self, path: str | Path) -> nn.Module:
        """Load a frozen Gram teacher from any checkpoint format `geodino.load_backbone` reads.

        Raises:
            GramTeacherError: its width, patch size or band count differs from the student's.
        """
        from geodino.models.checkpoint import load_backbone

        with warnings.catch_warnings():
            # Its normalisation metadata is never used (it sees the student's crops): no web/SAT warning.
            warnings.filterwarnings("ignore", message=".*does not say whether it is web")
            model = load_backbone(path)
        student = self.student["backbone"]
        for what, mine, theirs in (
            ("embed dim", student.embed_dim, model.embed_dim),
            ("patch size", student.patch_size, model.patch_size),
            ("bands", student.in_chans, model.in_chans),
        ):
            if mine != theirs:
                raise GramTeacherError(
                    f"Gram teacher {path}: {what} {theirs}, but the student has {what} {mine}; the Gram teacher must "
                    f"be a checkpoint of the same architecture family (e.g. an earlier checkpoint of this run)"
                )
        self.gram_teacher = _freeze(model.to(self.device))
        return self.gram_teacher

    @torch.no_grad()
    def gram_teacher_from_ema(self) -> nn.Module:
        """Copy the current EMA teacher backbone into the Gram teacher (created on first call, frozen)."""
        source = self.teacher["backbone"]
        if self.gram_teacher is None:
            self.gram_teacher = _freeze(copy.deepcopy(source))
        else:
            self.gram_teacher.load_state_dict(source.state_dict())
        return self.gram_teacher

    def maybe_update_gram_teacher(self, iteration: int) -> bool:
        """Copy the EMA teacher into the Gram teacher if the schedule says so at `iteration`; returns whether."""
        if self.gram_schedule is None or not self.gram_schedule.should_update(iteration):
            return False
        self.gram_teacher_from_ema()
        return True

    # ------------------------------------------------------------------------------------------ batch
    def check_batch(self, batch: dict[str, Any]) -> int:
        """Validate `batch` against the documented format; returns B (images per crop).

        Raises:
            BatchError: a missing key, or a shape or dtype that does not fit.
        """
        for key in ("global_crops", "local_crops", "masks", "n_global", "n_local"):
            if key not in batch:
                raise BatchError(f"batch has no {key!r}; keys found: {sorted(batch)}")
        g, masks = batch["global_crops"], batch["masks"]
        n_g, n_l = int(batch["n_global"]), int(batch["n_local"])
        if g.ndim != 4 or n_g < 1 or g.shape[0] % n_g:
            raise BatchError(f"global_crops {tuple(g.shape)} is not (n_global={n_g} * B, C, H, W)")
        B = g.shape[0] // n_g
        p = self.teacher["backbone"].patch_size
        n_patches = (g.shape[-2] // p) * (g.shape[-1] // p)
        if masks.dtype != torch.bool or tuple(masks.shape) != (g.shape[0], n_patches):
            raise BatchError(
                f"masks must be bool of shape {(g.shape[0], n_patches)} (crops, patches per global crop), got "
                f"{masks.dtype} {tuple(masks.shape)}"
            )
        local = batch["local_crops"]
        if n_l == 0 and local is not None and local.shape[0] > 0:
            raise BatchError(f"n_local is 0 but local_crops has {local.shape[0]} crops")
        if n_l > 0 and (local is None or local.ndim != 4 or local.shape[0] != n_l * B):
            found = None if local is None else tuple(local.shape)
            raise BatchError(f"local_crops must be (n_local={n_l} * B={B}, C, H, W), got {found}")
        if n_g == 1 and n_l == 0:
            raise BatchError("one global crop and no local crops leave the DINO loss no crop pair to compare")
        if self.cfg.loss.koleo_weight and B < 2:
            raise BatchError("KoLeo needs at least 2 images per batch (train.batch_size >= 2)")
        return B

    # ------------------------------------------------------------------------------------------ stages
    def _autocast(self) -> contextlib.AbstractContextManager:
        dev = self.device
        if self.cfg.train.bf16 and dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def get_teacher_output(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """EMA teacher on the unmasked global crops.

        Returns:
            ``cls_probs`` (n_global, B, K) DINO targets, ``masked_patch_probs`` (M, Kp) iBOT targets at the masked
            positions (``masks`` order), ``patch_tokens`` (n_global * B, Ng, D) final-norm patch tokens.
        """
        g, masks, n_g = batch["global_crops"], batch["masks"], int(batch["n_global"])
        with self._autocast():
            out = self.teacher["backbone"].forward_features(g)
            cls_logits = self.teacher["dino_head"](out["x_norm_clstoken"]).float()
            patch_logits = self.teacher["ibot_head"](out["x_norm_patchtokens"][masks]).float()
        n_masked = torch.tensor(patch_logits.shape[0], device=g.device)
        if self.cfg.loss.centering == "sinkhorn_knopp":
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
            patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, n_masked)
        else:
            cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            patch_probs = self.ibot_loss.softmax_center_teacher(patch_logits, teacher_temp)
        return {
            "cls_probs": cls_probs.unflatten(0, (n_g, -1)),
            "masked_patch_probs": patch_probs,
            "patch_tokens": out["x_norm_patchtokens"],
        }

    def get_student_output(
        self, batch: dict[str, Any], student: nn.ModuleDict | None = None, mask_tokens: bool = True
    ) -> dict[str, Tensor | None]:
        """Student on the masked global crops and the local crops.

        Args:
            batch: the batch.
            student: ``backbone``, ``dino_head``, ``ibot_head`` to run; None: ``self.student``.
            mask_tokens: replace the masked patches by the mask token; False (distillation) shows the student
                the whole crops, the masks then only choose the patches of the iBOT loss.

        Returns:
            ``global_cls_logits`` (n_global, B, K), ``local_cls_logits`` (n_local, B, K) or None,
            ``masked_patch_logits`` (M, Kp), ``global_cls`` (n_global * B, D) cls tokens before the head,
            ``global_patch_tokens`` (n_global * B, Ng, D) final-norm patch tokens, ``masks`` the batch's
            (n_global * B, Ng) masks (carried to `compute_losses`).
        """
        g, masks = batch["global_crops"], batch["masks"]
        n_g, n_l = int(batch["n_global"]), int(batch["n_local"])
        student = self.student if student is None else student
        backbone = student["backbone"]
        with self._autocast():
            glob = backbone.forward_features(g, masks if mask_tokens else None)
            cls = [glob["x_norm_clstoken"]]
            if n_l > 0:
                loc = backbone.forward_features(batch["local_crops"], local_crops=True)
                cls.append(loc["x_norm_clstoken"])
            cls_logits = student["dino_head"](torch.cat(cls)).float()
            patch_logits = student["ibot_head"](glob["x_norm_patchtokens"][masks]).float()
        n_global_rows = g.shape[0]
        global_logits = cls_logits[:n_global_rows].unflatten(0, (n_g, -1))
        local_logits = cls_logits[n_global_rows:].unflatten(0, (n_l, -1)) if n_l > 0 else None
        return {
            "global_cls_logits": global_logits,
            "local_cls_logits": local_logits,
            "masked_patch_logits": patch_logits,
            "global_cls": glob["x_norm_clstoken"],
            "global_patch_tokens": glob["x_norm_patchtokens"],
            "masks": masks,
        }

    @torch.no_grad()
    def get_gram_teacher_output(self, batch: dict[str, Any]) -> Tensor | None:
        """Gram-teacher patch tokens on the student's grid, (n_global * B, Ng, D); None when Gram is off.

        On the high-resolution path the teacher sees ``gram_crops`` and its (h', w') patch-feature map is resized
        to the student's (h, w) grid bicubically (no antialias) before the Gram matrix; otherwise it sees the
        unmasked global crops.

        Raises:
            BatchError: high-resolution Gram is on but the batch has no ``gram_crops``.
        """
        if self.gram_teacher is None:
            return None
        g = batch["global_crops"]
        p = self.gram_teacher.patch_size
        h, w = g.shape[-2] // p, g.shape[-1] // p
        if self.cfg.gram.high_res:
            crops = batch.get("gram_crops")
            if crops is None:
                raise BatchError("gram.high_res is on but the batch has no gram_crops (the Gram-teacher crops)")
            if crops.shape[0] != g.shape[0]:
                raise BatchError(f"gram_crops has {crops.shape[0]} crops, global_crops {g.shape[0]}")
        else:
            crops = g
        with self._autocast():
            feats = self.gram_teacher.forward_features(crops)["x_norm_patchtokens"].float()
        ht, wt = crops.shape[-2] // p, crops.shape[-1] // p
        if (ht, wt) != (h, w):
            fmap = feats.transpose(1, 2).unflatten(2, (ht, wt))  # (n, D, h', w')
            fmap = F.interpolate(fmap, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
            feats = fmap.flatten(2).transpose(1, 2)
        return feats

    def compute_losses(
        self,
        teacher_out: dict[str, Tensor],
        student_out: dict[str, Tensor | None],
        gram_out: Tensor | None,
        iteration: int,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total loss and its unweighted parts.

        Args:
            teacher_out / student_out / gram_out: the stages' outputs on one batch.
            iteration: the training iteration (Gram weight schedule).

        Returns:
            (total, parts): parts has `LOSS_KEYS` (unweighted, detached; 0 for a term that is off) and
            ``gram_weight``.
        """
        masks = student_out["masks"]
        w = self.cfg.loss
        teacher_probs = teacher_out["cls_probs"]
        n_g = teacher_probs.shape[0]
        local_logits = student_out["local_cls_logits"]
        n_l = 0 if local_logits is None else local_logits.shape[0]
        zero = teacher_probs.new_zeros(())
        # DINO: crosswise global pairs and local-vs-global pairs, weighted by their share of all pairs.
        global_pairs, local_pairs = n_g * (n_g - 1), n_l * n_g
        dino_global = (
            self.dino_loss(student_out["global_cls_logits"], teacher_probs, ignore_diagonal=True)
            if global_pairs
            else zero
        )
        dino_local = self.dino_loss(local_logits, teacher_probs) if local_pairs else zero
        pairs = global_pairs + local_pairs
        dino = (global_pairs * dino_global + local_pairs * dino_local) / pairs
        # iBOT: per-image mean over masked patches, mean over images, divided by the number of global crops.
        ibot = (
            self.ibot_loss.forward_masked(
                student_out["masked_patch_logits"],
                teacher_out["masked_patch_probs"],
                masks,
                masks_weight=masks_weight_from(masks),
            )
            / n_g
        )
        # KoLeo: on the cls tokens before the head, each global crop's batch on its own, summed.
        koleo = (
            sum(self.koleo_loss(x) for x in student_out["global_cls"].float().chunk(n_g)) if w.koleo_weight else zero
        )
        gram_weight = float(self.gram_weight(iteration))
        gram = zero
        if gram_out is not None:
            mode = self.cfg.gram.tokens
            token_mask = None if mode == "all" else (masks if mode == "masked" else ~masks)
            gram = self.gram_loss(
                student_out["global_patch_tokens"], gram_out, img_level=self.cfg.gram.img_level, token_mask=token_mask
            )
        total = w.dino_weight * dino + w.ibot_weight * ibot + w.koleo_weight * koleo + gram_weight * gram
        parts = {
            "dino/global": dino_global.detach(),
            "dino/local": dino_local.detach(),
            "ibot": ibot.detach(),
            "koleo": torch.as_tensor(koleo).detach(),
            "gram": gram.detach(),
            "gram_weight": torch.tensor(gram_weight),
        }
        return total, parts

    def forward_backward(
        self, batch: dict[str, Any], iteration: int, teacher_temp: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One step's forward and backward (no optimiser step): Gram-teacher refresh if due, teacher, student,
        Gram teacher, losses, ``total.backward()``.

        Returns:
            (total loss detached, parts) as `compute_losses`.
        """
        self.check_batch(batch)
        self.maybe_update_gram_teacher(iteration)
        teacher_out = self.get_teacher_output(batch, teacher_temp)
        student_out = self.get_student_output(batch)
        use_gram = self.gram_teacher is not None and iteration >= self.cfg.gram.start_iteration
        gram_out = self.get_gram_teacher_output(batch) if use_gram else None
        total, parts = self.compute_losses(teacher_out, student_out, gram_out, iteration)
        total.backward()
        return total.detach(), parts

    # ------------------------------------------------------------------------------------------ updates
    def update_teacher(self, momentum: float) -> None:
        """EMA of the student (backbone and both heads) into the teacher."""
        ema_update(self.teacher, self.student, momentum)

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups of the student (see `geodino.training.param_groups.get_param_groups`)."""
        o = self.cfg.optim
        return get_param_groups(
            self.student["backbone"],
            {"dino_head": self.student["dino_head"], "ibot_head": self.student["ibot_head"]},
            layerwise_decay=o.layerwise_decay,
            patch_embed_lr_mult=o.patch_embed_lr_mult,
        )

    def make_optimizer(self) -> torch.optim.AdamW:
        """AdamW over `param_groups` with the recipe's betas; lr and weight decay come from `apply_schedules`."""
        from geodino.training.param_groups import build_optimizer

        return build_optimizer(self.param_groups(), betas=self.cfg.optim.betas)

    def clip_gradients(self) -> Tensor | None:
        """Clip the student's gradient norm to `optim.clip_grad` (None: off); returns the norm before clipping."""
        clip = self.cfg.optim.clip_grad
        if clip is None:
            return None
        return torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip)

    def export_teacher_backbone(self, path: str | Path) -> Path:
        """Write the EMA teacher's backbone with `geodino.models.checkpoint.save_backbone` (load_backbone reads it)."""
        from geodino.models.checkpoint import save_backbone

        return save_backbone(self.teacher["backbone"], path)
