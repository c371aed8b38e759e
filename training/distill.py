"""Distillation: a frozen big teacher (backbone + DINO/iBOT heads) trains one or more smaller students.

Each step runs the teacher once on the unmasked global crops (its DINO targets, and its iBOT targets at the masked
positions, Sinkhorn-Knopp or softmax centred as in pretraining); then every student, with its own DINO and iBOT
heads, sees the same global and local crops and gets the pretraining losses against those targets (DINO + iBOT +
KoLeo, see `geodino.training.meta_arch`; no Gram term). Per the reference (dinov3-reference.md, section 3) the
students' global crops are unmasked: the masks only choose the patches the iBOT loss compares
(``distill.mask_student`` turns the mask token back on).

Choices:

- one AdamW over every student's parameter groups (each student's layer-wise lr decay follows its own depth), so
  the loop steps one optimiser; the gradient norm is clipped per student, as if each trained alone;
- each student backpropagates on its own (its graph is freed before the next student runs), so memory is that of
  the largest student, not of all of them;
- each student has an EMA copy (momentum schedule of ``teacher.momentum_*``): the EMA is what is exported and
  diagnosed, as the EMA teacher is in pretraining. The first student exports to ``backbone.pth``, the others to
  ``backbone_<name>.pth`` beside it.

The student heads must have the teacher's prototype counts (the losses compare distributions over the same
prototypes); their hidden and bottleneck widths may differ.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geodino.training.config import ConfigError, PretrainConfig, backbone_name, student_spec
from geodino.training.ema import ema_update
from geodino.training.meta_arch import SSLMetaArch, _freeze, network_with_heads, ssl_losses
from geodino.training.param_groups import get_param_groups
from geodino.training.schedules import gram_weight_schedule

__all__ = ["DistillMetaArch", "build_student_backbone"]


def build_student_backbone(cfg: PretrainConfig, spec: dict[str, Any], like: nn.Module) -> nn.Module:
    """A random student backbone of ``spec`` (see `student_spec`) with the teacher ``like``'s patch size and bands.

    Raises:
        ConfigError: the shape overrides make an invalid ViT (width not divisible by the heads).
    """
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    arch = ARCHS[backbone_name(spec["arch"])].replace(patch_size=like.patch_size, in_chans=like.in_chans)
    arch = arch.replace(**spec["shape"])
    if arch.embed_dim % arch.num_heads or (arch.embed_dim // arch.num_heads) % 4:
        raise ConfigError(
            f"distill.students {spec['name']}: width {arch.embed_dim} over {arch.num_heads} heads does not give a "
            "head dimension that is a multiple of 4 (RoPE); change embed_dim or num_heads"
        )
    s = cfg.student
    model = DinoVisionTransformer(arch, drop_path_rate=s.drop_path, rope_rescale=s.rope_rescale)
    model.meta = like.meta  # the students read the teacher's inputs: its bands and normalisation
    return model.train()


class DistillMetaArch(SSLMetaArch):
    """Frozen teacher and its students; the loss stages are `SSLMetaArch`'s.

    Args:
        cfg: the run's configuration (``distill.enabled``).
        teacher: ``nn.ModuleDict`` with ``backbone``, ``dino_head``, ``ibot_head`` (the previous run's EMA teacher,
            see `geodino.training.stages.PreviousRun.teacher_modules`); frozen here.

    Attributes:
        teacher: the frozen teacher.
        students: ``nn.ModuleDict`` name -> ``nn.ModuleDict(backbone, dino_head, ibot_head)``, trained.
        students_ema: the same names -> frozen EMA copies (exported).
        student: ``students`` (every trained parameter, e.g. for gradient averaging across ranks).
    """

    def __init__(self, cfg: PretrainConfig, teacher: nn.ModuleDict) -> None:
        nn.Module.__init__(self)  # the modules differ from SSLMetaArch's: only its stages are shared
        if not cfg.distill.enabled:
            raise ConfigError("DistillMetaArch needs distill.enabled=true")
        self.cfg = cfg
        self.teacher = _freeze(teacher)
        t_dino, t_ibot = teacher["dino_head"], teacher["ibot_head"]
        h1, h2 = cfg.dino_head, cfg.ibot_head
        for what, mine, theirs in (
            ("dino_head.prototypes", h1.prototypes, t_dino.last_layer.out_features),
            ("ibot_head.prototypes", h2.prototypes, t_ibot.last_layer.out_features),
        ):
            if mine != theirs:
                raise ConfigError(
                    f"{what}={mine}, but the teacher's head has {theirs} prototypes; the student heads must match "
                    f"it (set {what}={theirs})"
                )
        specs = [student_spec(s, cfg.student.arch) for s in cfg.distill.students or [cfg.student.arch]]
        self.students = nn.ModuleDict()
        for spec in specs:
            backbone = build_student_backbone(cfg, spec, teacher["backbone"])
            self.students[spec["name"]] = network_with_heads(cfg, backbone)
        self.students_ema = _freeze(copy.deepcopy(self.students))
        self.dino_loss, self.ibot_loss, self.koleo_loss = ssl_losses(cfg)
        self.gram_loss = None
        self.gram_teacher = None
        self.gram_schedule = None
        self.gram_weight = gram_weight_schedule(False, 0, 0.0, 0)

    @property
    def student(self) -> nn.ModuleDict:  # type: ignore[override]
        return self.students

    # ------------------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> DistillMetaArch:
        """Only the students train; teacher and EMA copies stay in eval mode."""
        nn.Module.train(self, mode)
        self.teacher.eval()
        self.students_ema.eval()
        return self

    def backbones(self) -> list[nn.Module]:
        """Every student backbone and its EMA copy (they carry the run's bands and normalisation)."""
        return [m["backbone"] for group in (self.students, self.students_ema) for m in group.values()]

    @property
    def exported_backbone(self) -> nn.Module:
        """The first student's EMA backbone (written to backbone.pth and diagnosed)."""
        return next(iter(self.students_ema.values()))["backbone"]

    def maybe_update_gram_teacher(self, iteration: int) -> bool:
        return False

    # ------------------------------------------------------------------------------------------ step
    def forward_backward(
        self, batch: dict[str, Any], iteration: int, teacher_temp: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher once, then each student's forward, losses and backward (no optimiser step).

        Returns:
            (sum of the students' total losses, detached; parts): the `LOSS_KEYS` summed over the students (so
            the total is the loss weights times the parts, as in pretraining), ``gram_weight`` 0, and per student
            ``loss/<name>`` (its total; a key no metrics column takes, whatever the name).
        """
        self.check_batch(batch)
        teacher_out = self.get_teacher_output(batch, teacher_temp)
        mask_tokens = self.cfg.distill.mask_student
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, student in self.students.items():
            student_out = self.get_student_output(batch, student, mask_tokens=mask_tokens)
            loss, own = self.compute_losses(teacher_out, student_out, None, iteration)
            loss.backward()
            del student_out  # its graph is freed by backward; the next student starts from here
            loss = loss.detach()
            total = loss if total is None else total + loss
            for key, value in own.items():
                parts[key] = value if key not in parts or key == "gram_weight" else parts[key] + value
            parts[f"loss/{name}"] = loss
        assert total is not None
        return total, parts

    # ------------------------------------------------------------------------------------------ updates
    def update_teacher(self, momentum: float) -> None:
        """EMA of each student (backbone and heads) into its copy; the teacher is frozen."""
        for name, student in self.students.items():
            ema_update(self.students_ema[name], student, momentum)

    def param_groups(self) -> list[dict[str, Any]]:
        """Every student's AdamW groups (names prefixed with the student's name)."""
        o = self.cfg.optim
        groups = []
        for name, student in self.students.items():
            for group in get_param_groups(
                student["backbone"],
                {"dino_head": student["dino_head"], "ibot_head": student["ibot_head"]},
                layerwise_decay=o.layerwise_decay,
                patch_embed_lr_mult=o.patch_embed_lr_mult,
            ):
                group["names"] = [f"{name}.{n}" for n in group["names"]]
                groups.append(group)
        return groups

    def clip_gradients(self) -> Tensor | None:
        """Clip each student's gradient norm to `optim.clip_grad` on its own; returns the largest norm before."""
        clip = self.cfg.optim.clip_grad
        if clip is None:
            return None
        norms = [torch.nn.utils.clip_grad_norm_(s.parameters(), clip) for s in self.students.values()]
        return torch.stack(norms).max()

    def export_paths(self, path: str | Path) -> dict[str, Path]:
        """Student name -> the file its EMA backbone is exported to (the first: ``path``)."""
        path = Path(path)
        names = list(self.students_ema)
        return {n: path if i == 0 else path.with_name(f"{path.stem}_{n}{path.suffix}") for i, n in enumerate(names)}

    def export_teacher_backbone(self, path: str | Path) -> Path:
        """Write every student's EMA backbone (see `export_paths`) for `geodino.load_backbone`; returns ``path``."""
        from geodino.models.checkpoint import save_backbone

        for name, target in self.export_paths(path).items():
            save_backbone(self.students_ema[name]["backbone"], target)
        return Path(path)
