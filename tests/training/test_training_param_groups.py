"""AdamW param groups on the tiny ViT, EMA updates."""

from __future__ import annotations

import pytest
import torch

from geodino.hub import dinov3_vit_test
from geodino.training.dino_head import DINOHead
from geodino.training.ema import ema_update
from geodino.training.param_groups import (
    apply_schedules,
    build_optimizer,
    get_param_groups,
    last_layer_frozen,
    layer_id,
)


def _groups(decay: float = 0.5, pe: float = 0.2):
    backbone = dinov3_vit_test()
    heads = {"dino_head": DINOHead(64, 16, 32, 8), "ibot_head": DINOHead(64, 16, 32, 8)}
    groups = get_param_groups(backbone, heads, layerwise_decay=decay, patch_embed_lr_mult=pe)
    by_name = {n: g for g in groups for n in g["names"]}
    return backbone, heads, groups, by_name


def test_layer_ids_of_the_vit() -> None:
    assert layer_id("patch_embed.proj.weight", 2) == 0
    assert layer_id("cls_token", 2) == layer_id("storage_tokens", 2) == layer_id("mask_token", 2) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 2) == 1
    assert layer_id("blocks.1.mlp.fc1.bias", 2) == 2
    assert layer_id("norm.weight", 2) == 3


def test_every_parameter_in_one_group_with_its_multipliers() -> None:
    backbone, heads, groups, by_name = _groups(decay=0.5, pe=0.2)
    n_params = sum(1 for _ in backbone.parameters()) + sum(1 for h in heads.values() for _ in h.parameters())
    assert sum(len(g["params"]) for g in groups) == n_params == len(by_name)
    # Depth 2: layer 0 gets 0.5^3, block 0 0.5^2, block 1 0.5, the top 1.
    assert by_name["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.125 * 0.2)
    assert by_name["backbone.cls_token"]["lr_multiplier"] == pytest.approx(0.125)
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.25)
    assert by_name["backbone.blocks.1.mlp.fc2.weight"]["lr_multiplier"] == pytest.approx(0.5)
    assert by_name["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert by_name["dino_head.mlp.0.weight"]["lr_multiplier"] == 1.0
    # Weight decay: matrices yes; biases, norms, LayerScale and tokens no.
    for name in ("backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "ibot_head.mlp.2.weight"):
        assert by_name[name]["wd_multiplier"] == 1.0, name
    for name in (
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.1.ls2.gamma",
        "backbone.norm.bias",
        "backbone.cls_token",
        "backbone.storage_tokens",
        "backbone.mask_token",
        "backbone.patch_embed.proj.bias",
    ):
        assert by_name[name]["wd_multiplier"] == 0.0, name
    assert by_name["dino_head.last_layer.weight"]["is_last_layer"]
    assert not by_name["dino_head.mlp.0.weight"]["is_last_layer"]


def test_apply_schedules_and_the_frozen_last_layer() -> None:
    _, heads, groups, _ = _groups(decay=0.5, pe=0.2)
    opt = build_optimizer(groups, betas=(0.9, 0.99))
    apply_schedules(opt, lr=0.1, wd=0.04, freeze_last_layer=True)
    for g in opt.param_groups:
        expected_lr = 0.0 if g["is_last_layer"] else 0.1 * g["lr_multiplier"]
        assert g["lr"] == pytest.approx(expected_lr)
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])
        assert g["betas"] == (0.9, 0.99)
    before = heads["dino_head"].last_layer.weight.detach().clone()
    for head in heads.values():
        head(torch.randn(3, 64)).sum().backward()
    opt.step()
    torch.testing.assert_close(heads["dino_head"].last_layer.weight, before)  # frozen: lr 0, no decay either
    apply_schedules(opt, lr=0.1, wd=0.04, freeze_last_layer=False)
    opt.step()
    assert not torch.equal(heads["dino_head"].last_layer.weight, before)
    assert last_layer_frozen(4, 5) and not last_layer_frozen(5, 5)


def test_ema_update_by_hand() -> None:
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * student.state_dict()[k])
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher.weight, student.weight)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(teacher, torch.nn.Sequential(student), 0.5)
