"""Pretraining configuration: typed dataclass defaults, YAML recipes, dotted ``key=value`` overrides.

``load_config("tiny", ["train.steps=50", "gram.enabled=true"])`` starts from the dataclass defaults, applies the
shipped recipe ``recipes/tiny.yaml`` (or a YAML file given by path), then the overrides (values parsed as YAML).
Unknown keys and values of the wrong type raise `ConfigError` naming the key. `save_config` writes the resolved
configuration, which `load_config(path)` reads back unchanged.

Defaults follow the DINOv3 release (dinov3-reference.md, sections 2-3) where it states them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geodino.training.parallel import ParallelConfig

__all__ = [
    "MISSING",
    "CheckpointConfig",
    "ConfigError",
    "CropsConfig",
    "DataConfig",
    "DiagnosticsConfig",
    "DistillConfig",
    "GramConfig",
    "HeadConfig",
    "InitConfig",
    "LossConfig",
    "MaskingConfig",
    "OptimConfig",
    "PretrainConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "backbone_name",
    "config_to_dict",
    "list_recipes",
    "load_config",
    "save_config",
    "student_spec",
]

RECIPES_DIR = Path(__file__).parent / "recipes"

GramTokens = Literal["all", "masked", "unmasked"]
Centering = Literal["sinkhorn_knopp", "softmax"]


# A recipe value the user must give (e.g. the weights a "continue" recipe starts from).
MISSING = "???"


class ConfigError(ValueError):
    """A recipe or override that does not fit `PretrainConfig`."""


@dataclass
class StudentConfig:
    """The student backbone (the teachers are copies of it)."""

    arch: str = "vits16"  # architecture: "test", "vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16"
    weights: str | None = None  # checkpoint to start from (any format geodino.load_backbone reads); None: random
    pretraining: str | None = None  # "sat493m" / "lvd1689m" when the weights file cannot tell (normalisation)
    drop_path: float = 0.0  # stochastic depth rate of the student (release 7B: 0.4)
    patch_size: int = 16  # patch side; must match the weights when given
    in_chans: int = 3  # input bands of a randomly initialised student (weights fix their own)
    rope_rescale: float | None = 2.0  # RoPE coordinate log-uniform rescale range [1/r, r] on the student; None: off


@dataclass
class DataConfig:
    """Where the training windows come from (read by the data pipeline)."""

    paths: list[str] = field(default_factory=list)  # raster files, folders or globs
    bands: list[Any] | None = None  # band indices (1-based) or names to read; None: all (must match in_chans)
    window_nodata_max: float = 0.5  # skip windows whose nodata fraction exceeds this
    mean: list[float] | None = None  # per-band normalisation mean; None: from the backbone metadata or statistics
    std: list[float] | None = None  # per-band normalisation std; None: as mean
    window_size: int | None = None  # side in pixels of the raster windows read before cropping; None: pipeline's choice
    mosaic: bool = False  # the paths are tiles of one mosaic (one grid) instead of separate rasters


@dataclass
class CropsConfig:
    """Multi-crop views of each window."""

    n_global: int = 2  # global crops per image (the teacher sees these)
    global_size: int = 224  # global crop side in pixels (release: 256)
    global_scale: tuple[float, float] = (0.32, 1.0)  # area fraction range of global crops
    n_local: int = 8  # local crops per image (student only); 0 disables them
    local_size: int = 96  # local crop side in pixels (release: 112)
    local_scale: tuple[float, float] = (0.05, 0.32)  # area fraction range of local crops
    gram_teacher_ratio: float = 2.0  # Gram-teacher crop side / global crop side on the high-resolution path
    gram_teacher_size: int | None = None  # explicit Gram-teacher crop side; None: global_size * gram_teacher_ratio
    # Mixed sizes (high-resolution adaptation): one size per step, drawn uniformly, shared by the step's crops.
    global_sizes: list[int] | None = None  # global sides to draw from; None: [global_size] (kept for diagnostics)
    local_sizes: list[int] | None = None  # local sides, drawn independently of the global one; None: [local_size]
    gram_teacher_sizes: list[int] | None = None  # Gram-teacher side paired with each global_sizes entry; None: ratio


@dataclass
class MaskingConfig:
    """Blockwise iBOT masks on the student's global crops."""

    probability: float = 0.5  # fraction of global crops that get a mask
    ratio_min_max: tuple[float, float] = (0.1, 0.5)  # mask ratios, linearly spaced over the masked crops
    min_num_patches: int = 4  # smallest masked block, in patches
    aspect_ratio: tuple[float, float] = (0.3, 3.3)  # block aspect-ratio range


@dataclass
class HeadConfig:
    """A projection head: MLP -> bottleneck -> L2-normalise -> Linear to prototypes."""

    prototypes: int = 65536  # output width K (release 7B: 262144 DINO, 98304 iBOT)
    hidden_dim: int = 2048  # MLP hidden width
    bottleneck_dim: int = 256  # width before L2 normalisation
    nlayers: int = 3  # MLP layers (GELU between)


@dataclass
class LossConfig:
    """Loss weights and variants; total = dino + ibot + koleo + gram(t) terms, each times its weight."""

    dino_weight: float = 1.0  # weight of the DINO (cls token) loss, split into global/local as in the release
    ibot_weight: float = 1.0  # weight of the iBOT (masked patch) loss
    koleo_weight: float = 0.1  # weight of KoLeo (summed over global crops)
    koleo_distributed: bool = True  # nearest neighbours over every rank's batch (one big batch) instead of this rank's
    centering: Centering = "sinkhorn_knopp"  # teacher target normalisation for DINO and iBOT
    student_temp: float = 0.1  # student softmax temperature (DINO and iBOT)


@dataclass
class GramConfig:
    """Gram anchoring: keep the student's patch-similarity matrices close to a frozen Gram teacher's."""

    enabled: bool = False  # turn the Gram loss (and its teacher) on
    teacher: str = "ema"  # "ema": copy the EMA teacher at start_iteration; "previous": init.from_run's EMA teacher
    # (its backbone.pth, fixed); otherwise a backbone checkpoint path
    start_iteration: int = 0  # first iteration with a Gram loss (and when an "ema" teacher is copied)
    update_frequency: int | None = None  # refresh the Gram teacher from the EMA teacher every k iterations; None: never
    max_updates: int | None = None  # at most this many refreshes (the first copy not counted); None: unlimited
    tokens: GramTokens = "all"  # patch tokens of the student's global crops used: all, masked or unmasked ones
    high_res: bool = False  # Gram teacher sees the crops at gram_teacher_size, features resized back bicubically
    img_level: bool = True  # one Gram matrix per image (True) or over the flattened batch
    apply_norm: bool = True  # cosine similarities (L2-normalised patch features)
    remove_neg: bool = True  # clip negative similarities to 0 in both Gram matrices
    remove_only_teacher_neg: bool = False  # clip teacher negatives (and the student's where the teacher's were)
    weight: float = 1.0  # Gram loss weight once ramped up (release 7B: 2.0; high-res stage 1.5)
    weight_ramp_iters: int = 0  # cosine ramp of the weight from 0 over this many iterations after start_iteration


@dataclass
class OptimConfig:
    """AdamW and its schedules."""

    lr: float = 5e-4  # peak learning rate (after warm-up); absolute, not scaled by batch size
    min_lr: float = 1e-6  # final learning rate of the cosine schedule
    schedule: Literal["cosine", "constant"] = "cosine"  # lr after warm-up: cosine to min_lr, or constant
    warmup_iters: int = 0  # linear lr warm-up from 0
    weight_decay: float = 0.04  # weight decay at the start
    weight_decay_end: float = 0.04  # weight decay at the end (cosine); equal to weight_decay: constant (release)
    layerwise_decay: float = 0.98  # lr multiplier per layer below the top (release 7B: 0.98); 1.0: off
    patch_embed_lr_mult: float = 0.2  # extra lr multiplier of the patch embedding
    clip_grad: float | None = 3.0  # gradient norm clip; None: off (release 7B: 30)
    freeze_last_layer_iters: int = 0  # keep the heads' last (prototype) layer frozen for these first iterations
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (release 7B: (0.9, 0.99))


@dataclass
class TeacherConfig:
    """EMA teacher momentum and target temperature."""

    momentum_start: float = 0.992  # EMA momentum at iteration 0
    momentum_end: float = 1.0  # EMA momentum at the last iteration (cosine); = start for constant (7B: 0.994)
    temp_warmup_start: float = 0.04  # teacher temperature at iteration 0
    temp: float = 0.07  # teacher temperature after warm-up
    temp_warmup_iters: int = 0  # linear temperature warm-up length


@dataclass
class TrainConfig:
    """The loop."""

    steps: int = 1000  # optimiser steps
    batch_size: int = 32  # images per step per process (each gives n_global + n_local crops)
    num_workers: int = 2  # data-loader worker processes
    seed: int = 0  # seed of models, windows, crops and masks
    log_every: int = 10  # write a metrics row every k steps
    checkpoint_every: int = 500  # save a resumable checkpoint every k steps (and at the end)
    diagnostic_every: int = 100  # run the patch-similarity diagnostic every k steps; 0: off
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # bf16 autocast where the device supports it (never on CPU)


@dataclass
class CheckpointConfig:
    """Resumable checkpoints (written every train.checkpoint_every steps and at the end)."""

    keep: int = 2  # the newest k checkpoints are kept, older ones deleted (milestones excepted)
    milestone_every: int = 0  # also keep every checkpoint whose step is a multiple of this; 0: none
    # "file": one .pth written by rank 0; "dcp": a torch.distributed.checkpoint folder, every rank writing its shards
    format: Literal["auto", "file", "dcp"] = "auto"  # "auto": dcp when the model holds FSDP2-sharded parameters


@dataclass
class DiagnosticsConfig:
    """The patch-similarity diagnostic and the optional dense linear probe (every train.diagnostic_every steps)."""

    probe_windows: int = 8  # fixed probe windows of the training rasters for patch similarity and Gram distance
    probe_labels: str | None = None  # label raster (class ids) for the linear probe; None: no probe
    probe_image: str | None = None  # imagery on the labels' grid; None: the first data path
    probe_ignore_index: int | None = 0  # label value the probe ignores (e.g. 0 = no data); None: none
    probe_tile: int | None = None  # probe tile side in pixels; None: crops.global_size
    probe_steps: int = 100  # optimiser steps of the probe's linear head


@dataclass
class InitConfig:
    """Start from a previous stage's run folder (see `geodino.training.stages`)."""

    from_run: str | None = None  # run folder: student, EMA teacher and heads from its last checkpoint; normalisation
    # and bands from its backbone.pth; with distill.enabled the frozen teacher (backbone + heads) instead
    checkpoint: str | None = None  # a checkpoint file of that run instead of its latest (may be an unfinished run's)


@dataclass
class DistillConfig:
    """Distillation: a frozen teacher (init.from_run, with its heads) -> smaller students ([]: one of student.arch)."""

    enabled: bool = False  # DINO + iBOT + KoLeo against the frozen teacher, no Gram, no EMA teacher of its own
    # Each student has its own heads (dino_head / ibot_head shapes) and an EMA copy (teacher.momentum_*), exported.
    students: list[Any] = field(default_factory=list)  # arch names or {arch, name, embed_dim, depth, num_heads}
    mask_student: bool = False  # replace masked patches by the mask token in the students' global crops (the
    # reference distils unmasked: masks then only choose the patches of the iBOT loss)


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; see the module docstring for loading."""

    student: StudentConfig = field(default_factory=StudentConfig)  # backbone
    data: DataConfig = field(default_factory=DataConfig)  # rasters
    crops: CropsConfig = field(default_factory=CropsConfig)  # multi-crop
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # iBOT masks
    dino_head: HeadConfig = field(default_factory=HeadConfig)  # DINO projection head
    ibot_head: HeadConfig = field(default_factory=HeadConfig)  # iBOT projection head
    loss: LossConfig = field(default_factory=LossConfig)  # loss weights
    gram: GramConfig = field(default_factory=GramConfig)  # Gram anchoring
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # EMA teacher
    train: TrainConfig = field(default_factory=TrainConfig)  # loop
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # resumable checkpoints
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)  # probe set and linear probe
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # ranks (DDP/FSDP2), compile, data loading
    init: InitConfig = field(default_factory=InitConfig)  # start from a previous stage's run
    distill: DistillConfig = field(default_factory=DistillConfig)  # distillation into smaller students

    @property
    def gram_teacher_size(self) -> int:
        """Side of the Gram-teacher crops on the high-resolution path."""
        c = self.crops
        return c.gram_teacher_size if c.gram_teacher_size is not None else round(c.global_size * c.gram_teacher_ratio)

    @property
    def global_crop_sizes(self) -> list[int]:
        """Global crop sides a step draws from (one entry: a fixed size)."""
        return list(self.crops.global_sizes or [self.crops.global_size])

    @property
    def local_crop_sizes(self) -> list[int]:
        """Local crop sides a step draws from."""
        return list(self.crops.local_sizes or [self.crops.local_size])

    @property
    def gram_teacher_sizes(self) -> list[int]:
        """Gram-teacher crop side paired with each entry of `global_crop_sizes`."""
        c = self.crops
        if c.gram_teacher_sizes is not None:
            return list(c.gram_teacher_sizes)
        if c.global_sizes is None:
            return [self.gram_teacher_size]
        return [round(s * c.gram_teacher_ratio) for s in c.global_sizes]


# ------------------------------------------------------------------------------------------------ helpers
_ARCH_ALIASES = {"test": "dinov3_vit_test"}


def backbone_name(arch: str) -> str:
    """Short arch name ("vitl16", "test") -> official constructor name ("dinov3_vitl16"); full names pass."""
    from geodino.models.config import ARCHS

    name = _ARCH_ALIASES.get(arch, arch if arch.startswith("dinov3_") else f"dinov3_{arch}")
    if name not in ARCHS:
        short = sorted(k.removeprefix("dinov3_") for k in ARCHS if k != "dinov3_vit_test")
        raise ConfigError(f"student.arch={arch!r} is not a known architecture; valid: test, {', '.join(short)}")
    return name


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def config_to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as written to config.yaml."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"section.key": value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint` (converting lists to tuples, ints to floats); raise on mismatch."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string: accept the number it spells
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_describe(hint)}")  # pragma: no cover


def _set(obj: Any, path: list[str], value: Any, full_key: str) -> None:
    """Set obj.<path> = value, checking each name and the value's type."""
    name = path[0]
    valid = [f.name for f in dataclasses.fields(obj)]
    where = full_key[: len(full_key) - len(".".join(path))].rstrip(".") or "the top level"
    if name not in valid:
        raise ConfigError(
            f"unknown config key {full_key!r}: {name!r} is not in {where}; valid keys: {', '.join(valid)}"
        )
    hint = _hints(type(obj))[name]
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{full_key}: is a section; expected a mapping of its keys, got {value!r}")
            for k, v in value.items():
                _set(current, [str(k)], v, f"{full_key}.{k}")
            return
        _set(current, path[1:], value, full_key)
        return
    if len(path) > 1:
        raise ConfigError(f"unknown config key {full_key!r}: {name!r} is a value, not a section")
    setattr(obj, name, _coerce(value, hint, full_key))


def apply_mapping(cfg: PretrainConfig, data: dict[str, Any], source: str = "") -> PretrainConfig:
    """Apply a nested mapping (a recipe's contents) onto `cfg` in place and return it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'recipe'}: expected a mapping of config sections, got {type(data).__name__}")
    for key, value in data.items():
        try:
            _set(cfg, [str(key)], value, str(key))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 0.0001)``; the value is parsed as YAML (``null``, lists, ...)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key, value


def _read_recipe(recipe: str | Path) -> tuple[dict[str, Any], str]:
    import yaml

    path = Path(recipe)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown recipe {recipe!r}; shipped recipes: {', '.join(list_recipes())}")
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return data, str(path)


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Cross-field checks that the types alone cannot express; raises `ConfigError`."""
    backbone_name(cfg.student.arch)
    if cfg.init.checkpoint is not None and cfg.init.from_run == MISSING:
        cfg.init.from_run = None  # a checkpoint file names its run folder (RUN/checkpoints/...)
    missing = [key for key, value in _flatten(config_to_dict(cfg)).items() if value == MISSING]
    if missing:
        raise ConfigError(
            f"the recipe needs a value for {', '.join(missing)}: pass it as an override, e.g. {missing[0]}=/path"
        )
    c, p = cfg.crops, cfg.student.patch_size
    problems = []
    if c.n_global < 1:
        problems.append(f"crops.n_global={c.n_global}: at least one global crop is needed")
    if c.n_local < 0:
        problems.append(f"crops.n_local={c.n_local}: must be >= 0")
    for name, size in (("global_size", c.global_size), ("local_size", c.local_size)):
        if size % p:
            problems.append(f"crops.{name}={size} is not a multiple of student.patch_size={p}")
    for name, sizes in (("global_sizes", c.global_sizes), ("local_sizes", c.local_sizes)):
        if sizes is not None and (not sizes or any(s < p or s % p for s in sizes)):
            problems.append(f"crops.{name}={sizes}: give at least one side, each a multiple of student.patch_size={p}")
    if c.gram_teacher_sizes is not None and len(c.gram_teacher_sizes) != len(cfg.global_crop_sizes):
        problems.append(
            f"crops.gram_teacher_sizes={c.gram_teacher_sizes} needs one side per global crop size "
            f"{cfg.global_crop_sizes}"
        )
    elif cfg.gram.high_res and any(s % p for s in cfg.gram_teacher_sizes):
        problems.append(f"Gram-teacher crop sides {cfg.gram_teacher_sizes} are not multiples of the patch size {p}")
    problems += _stage_problems(cfg)
    if not 0.0 <= cfg.masking.probability <= 1.0:
        problems.append(f"masking.probability={cfg.masking.probability} is not in [0, 1]")
    lo, hi = cfg.masking.ratio_min_max
    if not 0.0 <= lo <= hi < 1.0:
        problems.append(f"masking.ratio_min_max={[lo, hi]} must satisfy 0 <= min <= max < 1")
    if cfg.gram.remove_neg and cfg.gram.remove_only_teacher_neg:
        problems.append("gram.remove_neg and gram.remove_only_teacher_neg are exclusive: set one to false")
    if cfg.gram.update_frequency is not None and cfg.gram.update_frequency < 1:
        problems.append(f"gram.update_frequency={cfg.gram.update_frequency} must be >= 1 or null")
    if cfg.train.steps < 1 or cfg.train.batch_size < 1:
        problems.append("train.steps and train.batch_size must be >= 1")
    if cfg.checkpoint.keep < 1 or cfg.checkpoint.milestone_every < 0:
        problems.append("checkpoint.keep must be >= 1 and checkpoint.milestone_every >= 0")
    if c.n_global == 1 and c.n_local == 0:
        problems.append("one global crop and no local crops leave the DINO loss no crop pair to compare")
    problems += cfg.parallel.problems()
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _stage_problems(cfg: PretrainConfig) -> list[str]:
    """Checks of the init / distill sections (the previous run itself is checked by `geodino.training.stages`)."""
    problems = []
    has_previous = cfg.init.from_run is not None or cfg.init.checkpoint is not None
    if cfg.gram.enabled and cfg.gram.teacher == "previous" and not has_previous:
        problems.append("gram.teacher=previous needs init.from_run (the previous stage's run folder, or --from RUN)")
    if cfg.distill.enabled:
        if not has_previous:
            problems.append("distill.enabled needs init.from_run: the run whose teacher is distilled (--from RUN)")
        if cfg.gram.enabled:
            problems.append("distillation has no Gram loss: set gram.enabled=false")
        if cfg.student.weights is not None:
            problems.append("distillation students start from random weights: set student.weights=null")
        for i, spec in enumerate(cfg.distill.students):
            try:
                student_spec(spec, cfg.student.arch)
            except ConfigError as exc:
                problems.append(f"distill.students[{i}]: {exc}")
        names = [student_spec(s, cfg.student.arch)["name"] for s in cfg.distill.students if _valid_spec(s, cfg)]
        if len(set(names)) != len(names):
            problems.append(f"distill.students: names must differ, got {names}; give each a name")
    elif cfg.distill.students:
        problems.append("distill.students is set but distill.enabled is false")
    return problems


_SHAPE_KEYS = ("embed_dim", "depth", "num_heads")


def student_spec(spec: Any, default_arch: str) -> dict[str, Any]:
    """A distillation student entry as ``{"name", "arch", "shape"}``; ``shape`` overrides of the arch's VitConfig.

    Args:
        spec: an arch name ("vits16") or a mapping with ``arch`` and optionally ``name``, ``embed_dim``,
            ``depth``, ``num_heads``.
        default_arch: used when a mapping has no ``arch``.

    Raises:
        ConfigError: an unknown arch or key, or a shape value that is not a positive integer.
    """
    if isinstance(spec, str):
        backbone_name(spec)
        return {"name": spec, "arch": spec, "shape": {}}
    if not isinstance(spec, dict):
        raise ConfigError(f"expected an arch name or a mapping, got {spec!r}")
    unknown = sorted(set(spec) - {"arch", "name", *_SHAPE_KEYS})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; valid: arch, name, {', '.join(_SHAPE_KEYS)}")
    arch = str(spec.get("arch", default_arch))
    backbone_name(arch)
    shape = {k: spec[k] for k in _SHAPE_KEYS if k in spec}
    for key, value in shape.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    name = str(spec.get("name", arch))
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"name {name!r}: use letters, digits, - and _ (it names the exported file)")
    return {"name": name, "arch": arch, "shape": shape}


def _valid_spec(spec: Any, cfg: PretrainConfig) -> bool:
    try:
        student_spec(spec, cfg.student.arch)
    except ConfigError:
        return False
    return True


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Defaults, then the recipe (a shipped name or a YAML path; None: defaults only), then overrides.

    Args:
        recipe: e.g. "tiny", or a path such as a run's config.yaml.
        overrides: dotted ``section.key=value`` strings; values are YAML (``gram.teacher=/x.pth``,
            ``crops.global_scale=[0.4,1.0]``, ``student.weights=null``).

    Raises:
        ConfigError: unknown recipe, key or section; a value of the wrong type; inconsistent settings.
    """
    cfg = PretrainConfig()
    if recipe is not None:
        data, source = _read_recipe(recipe)
        apply_mapping(cfg, data, source)
    for text in overrides:
        key, value = parse_override(text)
        try:
            _set(cfg, key.split("."), value, key)
        except ConfigError as exc:
            raise ConfigError(f"override {text!r}: {exc}") from None
    return validate(cfg)


def save_config(cfg: PretrainConfig, path: str | Path) -> Path:
    """Write the resolved configuration as YAML; returns the file path.

    Args:
        path: a ``.yaml`` / ``.yml`` file, or a run folder (created if needed) that gets ``config.yaml``.
    """
    import yaml

    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".yaml", ".yml"):
        path = path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
