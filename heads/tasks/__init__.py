"""Training tasks: canopy height and land cover. One module per task says how to build its head, its losses, how
to decode outputs and which fields the saved model's ModelInfo carries; this module picks the task by name.

    model = build_head_model(backbone, task="canopy-height", head="dpt")          # binned CHMv2-style DPT
    loss = task_loss("land-cover", "ce+dice", class_weights=[1.0, 3.0])
    fields = model_info_fields("land-cover", class_names=("water", "forest"))

The model's forward returns what `geodino map` needs: heights (B, 1, H, W) in metres, or logits (B, K, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from torch import Tensor

from geodino.heads.data.chips import TASKS, Task
from geodino.heads.tasks import canopy_height, land_cover

if TYPE_CHECKING:  # pragma: no cover
    from geodino.heads.base import DenseHead
    from geodino.heads.model import DenseModel
    from geodino.models.vit import DinoVisionTransformer

__all__ = [
    "HEADS",
    "build_head_model",
    "decode_outputs",
    "default_loss",
    "model_info_fields",
    "task_loss",
    "task_module",
]

HEADS = ("linear", "dpt", "upernet", "fpn", "unet")
DEFAULT_LAYERS = {"linear": "last", "dpt": "four_even", "upernet": "four_even", "fpn": "four_even", "unet": "four_even"}
_TASKS: dict[str, ModuleType] = {"canopy-height": canopy_height, "land-cover": land_cover}


def task_module(task: Task | str) -> ModuleType:
    """The module of `task` ("canopy-height" or "land-cover")."""
    if task not in _TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return _TASKS[task]


def default_loss(task: Task | str, head: str = "linear") -> str:
    """The loss a task trains `head` with when none is named."""
    return task_module(task).default_loss(head)


def _make_head(backbone: DinoVisionTransformer, head: str, layers: Any, options: dict[str, Any]) -> DenseHead:
    """A head by name on `backbone` with `layers` (None: the head's default layer set)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    layers = DEFAULT_LAYERS[head] if layers is None else layers
    if head == "linear":
        from geodino.heads.linear import linear_head

        return linear_head(backbone, layers, **options)
    if head == "dpt":
        from geodino.heads.dpt import dpt_head

        return dpt_head(backbone, layers, **options)
    from geodino.heads.smp import smp_head

    return smp_head(backbone, head, layers, **options)


def build_head_model(
    backbone: DinoVisionTransformer,
    *,
    task: Task,
    head: str = "linear",
    n_classes: int | None = None,
    loss: str | None = None,
    layers: Any = None,
    **head_kwargs: Any,
) -> DenseModel:
    """A frozen backbone + a new head for `task`, ready for `geodino.heads.train.fit_head`.

    Args:
        backbone: the DINOv3 ViT (frozen by the returned model: no gradients, eval mode).
        task: "canopy-height" or "land-cover".
        head: "linear", "dpt", or an smp decoder "upernet", "fpn", "unet".
        n_classes: land cover: K (or give ``class_names``); canopy height: None or 1.
        loss: canopy height "binned" (default for dpt), "l1" (default otherwise) or "silog"; land cover "ce"
            (default) or "ce+dice". It fixes the head's outputs (bin logits or one channel) and is recorded on
            the model as ``model.task_spec`` so that `fit_head` picks the matching loss.
        layers: backbone layers the head reads (None: "last" for linear, "four_even" for the others).
        **head_kwargs: options of the head class (e.g. ``channels`` for DPT, ``bins`` for a binned head,
            ``class_names`` for land cover, ``uncertainty=True`` for a binned head's spread channel).

    Returns:
        a `DenseModel` whose forward gives heights (B, 1, H, W) in metres (>= 0), or logits (B, K, H, W).
    """
    from geodino.heads.model import DenseModel

    module = task_module(task)
    loss = loss or module.default_loss(head)
    options = dict(head_kwargs)
    options.update(module.head_kwargs(loss, n_classes, options))
    model = DenseModel(backbone, _make_head(backbone, head, layers, options))
    model.task_spec = {"task": task, "loss": loss, "head": head}
    return model


def task_loss(
    task: Task | str,
    loss: str | None = None,
    *,
    class_weights: Any = None,
    dice_weight: float = 1.0,
    silog_lambda: float = canopy_height.SILOG_LAMBDA,
    silog_eps: float = canopy_height.SILOG_EPS,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``f(outputs (B, K, H, W), targets (B, H, W)) -> scalar`` of `task`, labelled pixels only.

    Args:
        task: "canopy-height" or "land-cover".
        loss: see `build_head_model` (None: the task's default for a linear head).
        class_weights: land cover: (K,) weights of the cross-entropy.
        dice_weight: land cover "ce+dice": weight of the Dice term.
        silog_lambda, silog_eps: canopy height SiLog's lambda and eps (see `canopy_height`).
    """
    module = task_module(task)
    loss = loss or module.default_loss("linear")
    if task == "canopy-height":
        if class_weights is not None:
            raise ValueError("class_weights are for land cover; canopy height is a regression")
        return canopy_height.loss_fn(loss, silog_lambda=silog_lambda, silog_eps=silog_eps)
    return land_cover.loss_fn(loss, class_weights=class_weights, dice_weight=dice_weight)


def decode_outputs(task: Task | str, outputs: Tensor) -> Tensor:
    """Outputs (B, K, H, W) -> heights (B, H, W) float metres, or classes (B, H, W) int64."""
    return task_module(task).decode(outputs)


def model_info_fields(
    task: Task | str,
    *,
    class_names: Any = None,
    class_colours: Any = None,
    model: Any = None,
) -> dict[str, Any]:
    """The ModelInfo fields a saved model of `task` must carry (pass them to ``geodino.save_model(**fields)``).

    Canopy height: kind "regression", units "m", valid_range (0, None) (or (0, the bins' top) for a binned
    `model`), channel names. Land cover: kind "classification", out_channels, class_names, class_colours.
    """
    if task == "canopy-height":
        if class_names is not None or class_colours is not None:
            raise ValueError("class names and colours are for land cover, not canopy height")
        return canopy_height.info_fields(model)
    task_module(task)
    return land_cover.info_fields(class_names, class_colours, model)
