"""Data-parallel pretraining across ranks: DDP or FSDP2 around the meta-architecture's stages, per-block activation
checkpointing and ``torch.compile``, and sharded state gathered for files.

How the wrapping works. `SSLMetaArch` runs its networks in three stage methods (``get_student_output``,
``get_teacher_output``, ``get_gram_teacher_output``). DDP and FSDP2 both act through a module's ``forward``: DDP
prepares its gradient all-reduce there, FSDP2 gathers its root's parameters there. So :func:`wrap_model` puts a
stage behind a small module (a stage module (:func:`stage_module`)) whose ``forward`` calls the stage, wraps that module, and points
the instance's stage attribute at the wrapper. Parameter names, the EMA teacher's pairing by name and state-dict
keys stay as they were.

- ``"ddp"``: the student stage behind ``DistributedDataParallel`` (gradients averaged over the ranks during the
  backward, bucketed and overlapped with it); the teachers stay whole on every rank, where they change identically.
- ``"fsdp2"``: ``fully_shard`` on every transformer block of the student, the EMA teacher and the Gram teacher,
  then on each stage module as root (it holds the rest: embeddings, final norms, heads). Gradients are
  reduce-scattered (averaged); the optimiser and the EMA update work shard by shard. With mixed precision on CUDA:
  ``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``.
- ``"none"``: no wrapper; across ranks the loop averages the gradients with one flat all-reduce after backward.

In a single process nothing is wrapped, whatever the strategy (activation checkpointing and compile still apply).
Backends: gloo on CPU, NCCL on CUDA (chosen where the process group is created, ``geodino.training.cli``).

Equivalence (tested with two gloo processes): a run over W ranks with B images each gives the losses and updated
weights of one process on the W * B images, to float32 round-off, provided the batch-wide terms see every rank:
Sinkhorn-Knopp and softmax centring all-reduce over the ranks, and KoLeo searches neighbours over all ranks when
``loss.koleo_distributed`` is true.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "STAGES",
    "ParallelConfig",
    "gathered_state",
    "is_sharded",
    "load_state",
    "plain_backbone",
    "stage_module",
    "syncs_gradients",
    "wrap_model",
]

Strategy = Literal["none", "ddp", "fsdp2"]

#: The meta-architecture's stage methods and the module tree each runs: (method, attribute).
STAGES = (
    ("get_student_output", "student"),
    ("get_teacher_output", "teacher"),
    ("get_gram_teacher_output", "gram_teacher"),
)


@dataclass
class ParallelConfig:
    """Distribution and throughput settings of a run (the ``parallel`` section of the configuration)."""

    strategy: Strategy = "ddp"  # across ranks: "ddp", "fsdp2" (sharded) or "none" (one flat all-reduce)
    mixed_precision: bool = True  # fsdp2 on CUDA: bf16 parameters in compute, float32 gradient reductions
    activation_checkpointing: bool = False  # recompute each student block's activations in the backward
    compile: bool = False  # torch.compile each transformer block (student and teachers); slow to start on CPU
    pin_memory: bool | None = None  # data-loader pinned host memory; None: on when training on CUDA
    prefetch_factor: int = 2  # batches each data-loader worker prepares ahead (with train.num_workers > 0)
    peak_tflops: float | None = None  # the device's peak TFLOP/s for the mfu column; None: a table of known GPUs

    def problems(self) -> list[str]:
        """What is wrong with these settings (the configuration's validation reports it), as sentences."""
        out = []
        if self.prefetch_factor < 1:
            out.append(f"parallel.prefetch_factor={self.prefetch_factor} must be >= 1")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            out.append(f"parallel.peak_tflops={self.peak_tflops} must be > 0 or null")
        return out


# ------------------------------------------------------------------------------------------------ wrapping
@functools.cache
def _stage_module_class() -> type:
    from torch import nn

    class _Stage(nn.Module):
        """One stage method of a meta-architecture as a module holding that stage's networks.

        Args:
            model: the meta-architecture (not registered: its state dict is not this module's).
            method: the stage method's name.
            net: the module tree the stage runs (registered: the parameters a DDP/FSDP2 wrapper manages).
        """

        def __init__(self, model: nn.Module, method: str, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.method = method
            # the class's function bound to the instance: the instance attribute pointing here is bypassed
            self._call = getattr(type(model), method).__get__(model)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self._call(*args, **kwargs)

    return _Stage


def stage_module(model: nn.Module, method: str, net: nn.Module) -> nn.Module:
    """A module whose ``forward`` is ``model.<method>`` (the class's), holding ``net`` (see the module docstring).

    (The class is made on first use, so that importing this module, and the configuration with it, needs no torch.)
    """
    return _stage_module_class()(model, method, net)


def _set_stage(model: nn.Module, method: str, runner: Any) -> None:
    """Make ``model.<method>(...)`` call ``runner``: an instance attribute, not a registered submodule."""
    model.__dict__[method] = runner


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    return list(backbone.blocks)


def _backbone(tree: nn.Module) -> nn.Module:
    """The backbone of a student/teacher ModuleDict, or the module itself (the Gram teacher is a backbone)."""
    from torch import nn

    return tree["backbone"] if isinstance(tree, nn.ModuleDict) else tree


def _activation_checkpointing(backbone: nn.Module) -> None:
    """Recompute every block's activations in the backward (composable API: parameter names unchanged)."""
    from torch.distributed._composable import checkpoint

    for block in _blocks(backbone):
        checkpoint(block)


def wrap_model(model: nn.Module, cfg: ParallelConfig, device: torch.device) -> nn.Module:
    """Apply `cfg` to an `SSLMetaArch` in place (before its optimiser is built: FSDP2 replaces the parameters).

    Args:
        model: the meta-architecture, already on ``device``.
        cfg: the ``parallel`` section.
        device: the training device (its type picks the FSDP2 device mesh and the mixed-precision policy).

    Returns:
        ``model``, with ``model.parallel_strategy`` set to the strategy in effect ("none" in a single process).
    """
    from geodino.training.distributed import get_world_size

    if cfg.activation_checkpointing:
        _activation_checkpointing(model.student["backbone"])
    if cfg.compile:
        for _, attr in STAGES:
            tree = getattr(model, attr)
            if tree is not None:
                for block in _blocks(_backbone(tree)):
                    block.compile()
    world = get_world_size()
    strategy = cfg.strategy if world > 1 else "none"
    from geodino.training.distill import DistillMetaArch

    if strategy != "none" and isinstance(model, DistillMetaArch):
        # DistillMetaArch keeps one stage per student; the stage wrappers above know the SSLMetaArch layout only.
        from geodino.training.config import ConfigError

        raise ConfigError(
            f"parallel.strategy={strategy} does not apply to distillation yet; set parallel.strategy=none "
            "(the ranks then average gradients by hand, as before)"
        )
    if strategy == "ddp":
        _wrap_ddp(model, device)
    elif strategy == "fsdp2":
        _wrap_fsdp2(model, cfg, device, world)
    model.parallel_strategy = strategy
    return model


def _wrap_ddp(model: nn.Module, device: torch.device) -> None:
    from torch.nn.parallel import DistributedDataParallel

    backbone = model.student["backbone"]
    # Without local crops the local-crop norm is never used; DDP must then look for unused parameters each step.
    unused = model.cfg.crops.n_local == 0 and getattr(backbone, "local_cls_norm", None) is not None
    stage = stage_module(model, "get_student_output", model.student)
    import torch

    # "cuda" without an index is the process's current GPU (set to LOCAL_RANK where the process group is made)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DistributedDataParallel(stage, device_ids=ids, find_unused_parameters=unused)
    _set_stage(model, "get_student_output", ddp)


def _wrap_fsdp2(model: nn.Module, cfg: ParallelConfig, device: torch.device, world: int) -> None:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The stages return views (slices of the token tensors); compute_losses reads them out of place only, so the
    # in-place hazard FSDP2 warns of does not arise (the two-rank test checks the gradients against one process).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world,))
    policy = None
    if cfg.mixed_precision and device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    options: dict[str, Any] = {"mesh": mesh} if policy is None else {"mesh": mesh, "mp_policy": policy}
    for method, attr in STAGES:
        tree = getattr(model, attr)
        if tree is None:
            continue
        for block in _blocks(_backbone(tree)):
            fully_shard(block, **options)
        stage = stage_module(model, method, tree)
        # A root keeps its gathered parameters after forward, for the backward; the teachers have none, so they
        # reshard at once (their shards are what the EMA update and the Gram refresh work on).
        fully_shard(stage, **options, **({} if attr == "student" else {"reshard_after_forward": True}))
        _set_stage(model, method, stage)


def syncs_gradients(model: nn.Module) -> bool:
    """Whether a wrapper (DDP, FSDP2) already averages the gradients over the ranks during the backward."""
    return getattr(model, "parallel_strategy", "none") in ("ddp", "fsdp2")


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (state must be gathered before a file is written)."""
    return getattr(model, "parallel_strategy", "none") == "fsdp2"


# ------------------------------------------------------------------------------------------------- state
def _full(value: Any, keep: bool) -> Any:
    """DTensors (recursively in dicts and lists) replaced by their full tensors on the CPU; a collective for each.

    One tensor at a time is whole on the device. With ``keep`` false the gathered tensors are dropped (None): the
    ranks that take part in the gathers but write nothing hold no full copy.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        full = value.full_tensor()
        return full.cpu() if keep else None
    if isinstance(value, dict):
        return {k: _full(v, keep) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_full(v, keep) for v in value)
    return value


def gathered_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """Model and optimiser state dicts with full (unsharded) tensors on the CPU, for a file any world size loads.

    Every rank must call it (the gathers are collectives); rank 0 gets the state, the others None. None on every
    rank when the model is not sharded (the modules' own state dicts are already full).
    """
    from geodino.training.distributed import get_rank

    if not is_sharded(model):
        return None
    keep = get_rank() == 0
    state = _full(model.state_dict(), keep), _full(optimizer.state_dict(), keep)
    return state if keep else None


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load full (unsharded) state into a model and its optimiser, sharding it like their parameters when sharded.

    Raises:
        RuntimeError, KeyError, ValueError: the state does not fit (as ``load_state_dict``).
    """
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    own = model.state_dict()
    missing = sorted(set(own) ^ set(model_state))
    if missing:
        raise KeyError(f"state keys differ from the model's, e.g. {missing[:5]}")
    sharded = {}
    for key, mine in own.items():
        value = model_state[key]
        if isinstance(mine, DTensor):
            value = distribute_tensor(value.to(mine.device, mine.dtype), mine.device_mesh, mine.placements)
        sharded[key] = value
    model.load_state_dict(sharded)
    optimizer.load_state_dict(optim_state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for p in params:
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if isinstance(p, DTensor) and not isinstance(value, DTensor) and value.shape == p.shape:
                    state[name] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)


def plain_backbone(backbone: nn.Module) -> nn.Module | None:
    """An unsharded copy of an FSDP2-sharded backbone (for diagnostics and export), or the backbone itself.

    Every rank must call it when sharded (the gathers are collectives); rank 0 gets a copy on the shards' device,
    the others None.
    """
    from torch.distributed.tensor import DTensor

    from geodino.training.distributed import get_rank

    state = backbone.state_dict()
    if not any(isinstance(v, DTensor) for v in state.values()):
        return backbone
    import torch

    keep = get_rank() == 0
    full = _full(state, keep)
    if not keep:
        return None
    full = {k: v.detach().cpu() for k, v in full.items()}
    with torch.random.fork_rng(devices=[]):  # the copy's initialisation leaves the training RNG untouched
        copy = type(backbone)(backbone.config)
    copy.load_state_dict(full)
    copy.meta = backbone.meta
    return copy.to(backbone.cls_token.device).eval()  # where the shards live (diagnostics run there)
