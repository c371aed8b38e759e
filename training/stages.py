"""Later stages started from a previous stage's run folder: high-resolution adaptation, Gram stage, distillation.

``init.from_run: RUN`` (``geodino pretrain --from RUN``) names the previous run. Its pieces:

- ``RUN/config.yaml``: the previous configuration (architecture, patch size, bands, head shapes);
- its checkpoint (``RUN/checkpoints/``, the latest, or ``init.checkpoint``): the student, the EMA teacher and
  both heads of each, and the loss centres;
- ``RUN/backbone.pth``: the exported EMA teacher, whose metadata (bands, normalisation, GSD) the new stage keeps.

A continuing stage (Gram, high-resolution adaptation) builds its `SSLMetaArch` from these: student and teacher
(backbones and heads) from the checkpoint, a Gram teacher given as ``gram.teacher: previous`` fixed to the previous
run's EMA teacher. A distillation stage (``distill.enabled``) takes the previous EMA teacher with its heads as its
frozen teacher (`geodino.training.distill.DistillMetaArch`). The optimiser, schedules and iteration start afresh.

Every piece is checked before anything trains: a missing file, an unfinished previous run (unless
``init.checkpoint`` names a checkpoint on purpose), or a different patch size, band count, band selection or head
shape raise `StageError` naming the run and the key to change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from geodino.training.config import ConfigError, PretrainConfig
from geodino.training.loop import RunError

__all__ = ["PreviousRun", "StageError", "build_model", "open_previous_run"]


class StageError(RunError):
    """A previous stage's run that is missing pieces or does not fit the new stage."""


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_model_state(path: Path) -> tuple[dict[str, Tensor], int]:
    """The model state dict and iteration of a loop checkpoint (the one place that knows the checkpoint layout).

    Raises:
        StageError: the file cannot be read or is not a loop checkpoint.
    """
    import torch

    if path.is_dir():  # a sharded (DCP) checkpoint: load it into a model built from its run's config
        return _read_sharded_state(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: optimiser state unread
        return dict(state["model"]), int(state["iteration"])
    except (RuntimeError, KeyError, OSError, ValueError, TypeError, EOFError) as exc:
        raise StageError(f"{path}: not a readable pretraining checkpoint ({type(exc).__name__}: {exc})") from exc


def _read_sharded_state(path: Path) -> tuple[dict[str, Tensor], int]:
    """`read_model_state` of a ``checkpoint_<N>.dcp`` folder (any world size wrote it; read here in one process)."""
    from geodino.training.checkpoint import load_checkpoint
    from geodino.training.config import load_config
    from geodino.training.meta_arch import SSLMetaArch

    saved = path.parent.parent / "config.yaml"
    try:
        model = SSLMetaArch(load_config(saved))
        resumed = load_checkpoint(path, model, model.make_optimizer())
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise StageError(f"{path}: not a readable pretraining checkpoint ({type(exc).__name__}: {exc})") from exc
    return model.state_dict(), resumed.iteration


@dataclass
class PreviousRun:
    """The pieces of a previous stage's run folder (see the module docstring)."""

    run_dir: Path
    config: PretrainConfig
    checkpoint: Path
    backbone: Path
    _state: dict[str, Tensor] | None = field(default=None, repr=False)

    def model_state(self) -> dict[str, Tensor]:
        """The checkpoint's model state dict (read once)."""
        if self._state is None:
            self._state, _ = read_model_state(self.checkpoint)
        return self._state

    def load(self, module: nn.Module, prefix: str) -> None:
        """Load the checkpoint's ``prefix`` entries into ``module`` (every key must fit).

        Raises:
            StageError: the checkpoint has no such entries, or they do not fit ``module``.
        """
        sub = _prefixed(self.model_state(), prefix)
        if not sub:
            raise StageError(f"{self.checkpoint}: holds no {prefix.rstrip('.')} weights")
        try:
            module.load_state_dict(sub)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise StageError(
                f"{self.checkpoint}: its {prefix.rstrip('.')} weights do not fit this stage's model: "
                f"{' '.join(first[1:3]) if len(first) > 1 else first[0]}"
            ) from exc

    def teacher_modules(self) -> nn.ModuleDict:
        """The previous EMA teacher (backbone with the run's metadata, DINO and iBOT heads), for distillation."""
        from geodino.models.checkpoint import load_backbone
        from geodino.training.dino_head import DINOHead

        backbone = load_backbone(self.backbone)
        self.load(backbone, "teacher.backbone.")
        dim, h1, h2 = backbone.embed_dim, self.config.dino_head, self.config.ibot_head
        heads = {
            "dino_head": DINOHead(dim, h1.prototypes, h1.hidden_dim, h1.bottleneck_dim, h1.nlayers),
            "ibot_head": DINOHead(dim, h2.prototypes, h2.hidden_dim, h2.bottleneck_dim, h2.nlayers),
        }
        for name, head in heads.items():
            self.load(head, f"teacher.{name}.")
        return nn.ModuleDict({"backbone": backbone, **heads})

    def load_loss_centres(self, model: Any) -> None:
        """The DINO and iBOT teacher centres (used by softmax centering) of the previous run, when it has them."""
        for name in ("dino_loss", "ibot_loss"):
            if _prefixed(self.model_state(), f"{name}."):
                self.load(getattr(model, name), f"{name}.")

    def load_into(self, model: Any) -> None:
        """Student, EMA teacher (backbones and heads) and loss centres of a continuing stage's `SSLMetaArch`;
        the Gram teacher too when ``gram.teacher`` is ``previous`` (the previous EMA teacher, fixed)."""
        self.load(model.student, "student.")
        self.load(model.teacher, "teacher.")
        self.load_loss_centres(model)
        if model.gram_teacher is not None and model.cfg.gram.teacher == str(self.backbone):
            self.load(model.gram_teacher, "teacher.backbone.")


def open_previous_run(cfg: PretrainConfig) -> PreviousRun:
    """Find and check the pieces of the run that ``cfg.init`` names.

    Raises:
        StageError: no such folder, no config.yaml, checkpoint or backbone.pth, an unfinished run without an
            explicit ``init.checkpoint``, a distillation run, or a configuration that does not fit ``cfg``.
    """
    from geodino.training.config import load_config
    from geodino.training.loop import latest_checkpoint

    init = cfg.init
    explicit = Path(init.checkpoint) if init.checkpoint is not None else None
    if init.from_run is not None:
        run_dir = Path(init.from_run)
    else:
        assert explicit is not None
        run_dir = explicit.parent.parent  # RUN/checkpoints/checkpoint_N.pth
    if not run_dir.is_dir():
        raise StageError(f"init.from_run: {run_dir} is not a folder (the previous stage's run folder, --out of it)")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise StageError(f"{run_dir}: no config.yaml there, so not a pretraining run folder")
    try:
        previous = load_config(saved)
    except ConfigError as exc:
        raise StageError(f"{saved}: cannot be read as a run configuration: {exc}") from exc
    if previous.distill.enabled:
        raise StageError(
            f"{run_dir} is a distillation run (its teacher is frozen); start from its exported student with "
            f"student.weights={run_dir / 'backbone.pth'} instead"
        )
    ckpt = explicit if explicit is not None else latest_checkpoint(run_dir)
    if ckpt is None or not ckpt.is_file():
        where = explicit if explicit is not None else run_dir / "checkpoints"
        raise StageError(f"{run_dir}: no checkpoint at {where}; the stage needs the run's weights and heads")
    state, iteration = read_model_state(ckpt)
    if explicit is None and iteration < previous.train.steps:
        raise StageError(
            f"{run_dir} stopped at step {iteration} of {previous.train.steps}: finish it (geodino pretrain --resume "
            f"--out {run_dir}) or name the checkpoint to start from with init.checkpoint={ckpt}"
        )
    backbone = run_dir / "backbone.pth"
    if not backbone.is_file():
        raise StageError(f"{run_dir}: no backbone.pth (the exported teacher, with the run's bands and normalisation)")
    prev = PreviousRun(run_dir, previous, ckpt, backbone, state)
    check_compatible(cfg, prev)
    return prev


def check_compatible(cfg: PretrainConfig, prev: PreviousRun) -> None:
    """Patch size, bands and (for a continuing stage) head shapes of ``cfg`` against the previous run.

    Raises:
        StageError: the first mismatch, naming the key and the value that fits.
    """
    from geodino.models.checkpoint import read_backbone_checkpoint

    p, run = prev.config, prev.run_dir
    found = read_backbone_checkpoint(prev.backbone).config
    if found.patch_size != cfg.student.patch_size:
        raise StageError(
            f"{run}: its model has patch size {found.patch_size}, this stage student.patch_size="
            f"{cfg.student.patch_size}; set student.patch_size={found.patch_size}"
        )
    if found.in_chans != cfg.student.in_chans:
        raise StageError(
            f"{run}: its model takes {found.in_chans} bands, this stage student.in_chans={cfg.student.in_chans}; "
            f"set student.in_chans={found.in_chans}"
        )
    if p.data.bands != cfg.data.bands:
        raise StageError(
            f"{run}: it read data.bands={p.data.bands}, this stage data.bands={cfg.data.bands}; the model must see "
            "the same bands in the same order"
        )
    if cfg.distill.enabled:
        return
    if cfg.student.weights is not None and cfg.student.weights != str(prev.backbone):
        raise StageError(
            f"student.weights={cfg.student.weights} and init.from_run={run} both give the student's weights; "
            "drop student.weights"
        )
    for name in ("dino_head", "ibot_head"):
        mine, theirs = getattr(cfg, name), getattr(p, name)
        if mine != theirs:
            raise StageError(
                f"{run}: its {name} is {theirs}, this stage's {mine}; the heads continue, so set the same shape"
            )


def build_model(cfg: PretrainConfig) -> Any:
    """The run's model: `SSLMetaArch`, continued from ``init.from_run`` when given, or `DistillMetaArch`.

    Raises:
        StageError: see `open_previous_run`.
        ConfigError: the previous backbone does not fit ``student.arch`` (continuing stages).
    """
    from geodino.training.meta_arch import SSLMetaArch

    if cfg.init.from_run is None and cfg.init.checkpoint is None:
        return SSLMetaArch(cfg)
    prev = open_previous_run(cfg)
    if cfg.distill.enabled:
        from geodino.training.distill import DistillMetaArch

        model = DistillMetaArch(cfg, prev.teacher_modules())
        prev.load_loss_centres(model)  # the teacher's targets keep its centres
        return model
    built = copy.deepcopy(cfg)
    built.student.weights = str(prev.backbone)  # metadata and architecture checks; the weights follow
    if built.gram.enabled and built.gram.teacher == "previous":
        built.gram.teacher = str(prev.backbone)
    model = SSLMetaArch(built)
    prev.load_into(model)
    return model
