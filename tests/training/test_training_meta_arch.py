"""SSLMetaArch on the tiny config: the documented batch format, gradients, teachers, Gram teacher, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geodino.models.checkpoint import load_backbone, save_backbone
from geodino.models.config import ARCHS, VitConfig
from geodino.models.vit import DinoVisionTransformer
from geodino.training.config import ConfigError
from geodino.training.meta_arch import LOSS_KEYS, BatchError, GramTeacherError, GramTeacherSchedule, SSLMetaArch
from geodino.training.param_groups import apply_schedules, build_optimizer


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


def test_forward_backward_runs_and_gradients_reach_only_the_student(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("gram.enabled=true", "gram.high_res=true")
    arch = SSLMetaArch(cfg).train()
    batch = batch_factory(cfg, batch_size=4)
    assert batch["gram_crops"].shape[-1] == 128
    total, parts = arch.forward_backward(batch, iteration=0, teacher_temp=0.04)
    assert set(LOSS_KEYS) <= set(parts)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(parts[k] > 0 for k in LOSS_KEYS)
    student = _grads(arch.student)
    for name in (
        "backbone.patch_embed.proj.weight",
        "backbone.mask_token",
        "backbone.blocks.1.mlp.fc2.weight",
        "dino_head.last_layer.weight",
        "ibot_head.last_layer.weight",
        "backbone.cls_token",
    ):
        assert student[name] is not None and student[name].abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in arch.teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in arch.gram_teacher.parameters())
    assert not arch.teacher.training and not arch.gram_teacher.training and arch.student.training


def test_dino_terms_are_weighted_by_their_share_of_crop_pairs(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("loss.koleo_weight=0", "loss.ibot_weight=0", "crops.n_local=8")
    arch = SSLMetaArch(cfg)
    batch = batch_factory(cfg, batch_size=2)
    t = arch.get_teacher_output(batch, 0.04)
    s = arch.get_student_output(batch)
    total, parts = arch.compute_losses(t, s, None, 0)
    # 2 global crops crosswise (2 pairs) and 8 local x 2 global (16 pairs): 2/18 and 16/18.
    expected = 2 / 18 * parts["dino/global"] + 16 / 18 * parts["dino/local"]
    torch.testing.assert_close(total.detach(), expected)
    assert parts["koleo"] == 0 and parts["gram"] == 0
    # The global term compares student crop 0 with teacher crop 1 and vice versa.
    cross = (
        arch.dino_loss(s["global_cls_logits"][:1], t["cls_probs"][1:])
        + arch.dino_loss(s["global_cls_logits"][1:], t["cls_probs"][:1])
    ) / 2
    torch.testing.assert_close(parts["dino/global"], cross.detach())


def test_total_loss_falls_on_a_fixed_batch(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg()
    arch = SSLMetaArch(cfg).train()
    batch = batch_factory(cfg, batch_size=4)
    opt = arch.make_optimizer()
    assert opt.param_groups[0]["betas"] == cfg.optim.betas
    losses = []
    for it in range(20):
        apply_schedules(opt, 1e-3, 0.04)
        opt.zero_grad(set_to_none=True)
        total, _ = arch.forward_backward(batch, it, teacher_temp=0.04)
        norm = arch.clip_gradients()
        assert norm is not None and torch.isfinite(norm)
        opt.step()
        arch.update_teacher(0.9)
        losses.append(float(total))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


def test_update_teacher_moves_it_towards_the_student(tiny_cfg) -> None:
    arch = SSLMetaArch(tiny_cfg())
    with torch.no_grad():
        for p in arch.student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in arch.teacher.state_dict().items()}
    arch.update_teacher(0.75)
    s = arch.student.state_dict()
    for name, _ in arch.teacher.named_parameters():
        torch.testing.assert_close(arch.teacher.state_dict()[name], 0.75 * before[name] + 0.25 * s[name])


def test_gram_teacher_schedule_copies() -> None:
    sched = GramTeacherSchedule(start=10, update_frequency=5, max_updates=3)
    assert sched.update_iterations(50) == [10, 15, 20, 25]
    assert GramTeacherSchedule(10, 5, 3, copy_at_start=False).update_iterations(50) == [15, 20, 25]
    assert GramTeacherSchedule(0, None, None).update_iterations(30) == [0]
    assert GramTeacherSchedule(2, 4, None).update_iterations(15) == [2, 6, 10, 14]
    assert GramTeacherSchedule(2, 4, 0).update_iterations(15) == [2]


def test_gram_teacher_from_ema_is_copied_at_the_scheduled_iterations(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("gram.enabled=true", "gram.start_iteration=1", "gram.update_frequency=2", "gram.max_updates=1")
    arch = SSLMetaArch(cfg).train()
    batch = batch_factory(cfg, batch_size=4)
    opt = build_optimizer(arch.param_groups())
    snapshots = []
    for it in range(6):
        apply_schedules(opt, 1e-2, 0.0)
        opt.zero_grad()
        _, parts = arch.forward_backward(batch, it, 0.04)
        opt.step()
        snapshots.append((arch.gram_teacher.cls_token.detach().clone(), arch.teacher["backbone"].cls_token.clone()))
        assert (parts["gram"] > 0) == (it >= 1) and (parts["gram_weight"] > 0) == (it >= 1)
        arch.update_teacher(0.5)
    gram_tokens = [g for g, _ in snapshots]
    ema_tokens = [e for _, e in snapshots]  # EMA teacher as it was during step `it` (before that step's update)
    copied = [it for it in range(1, 6) if not torch.equal(gram_tokens[it], gram_tokens[it - 1])]
    assert copied == [1, 3]
    torch.testing.assert_close(gram_tokens[3], ema_tokens[3])
    torch.testing.assert_close(gram_tokens[5], ema_tokens[3])


def _official_file(path: Path, config: VitConfig, seed: int = 0) -> Path:
    """A Meta-layout plain state dict with random weights."""
    torch.manual_seed(seed)
    torch.save(DinoVisionTransformer(config).state_dict(), path)
    return path


def test_continue_from_an_official_checkpoint_with_a_checkpoint_gram_teacher(tmp_path, tiny_cfg, batch_factory):
    ckpt = _official_file(tmp_path / "dinov3_vit_test_pretrain.pth", ARCHS["dinov3_vit_test"])
    overrides = ["student.patch_size=16", f"student.weights={ckpt}", "student.pretraining=sat493m"]
    cfg = tiny_cfg(*overrides, "gram.enabled=true", f"gram.teacher={ckpt}", "gram.high_res=true")
    arch = SSLMetaArch(cfg).train()
    official = load_backbone(ckpt, pretraining="sat493m")
    torch.testing.assert_close(arch.student["backbone"].blocks[1].mlp.fc1.weight, official.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(arch.gram_teacher.cls_token, official.cls_token)
    assert arch.gram_schedule.update_iterations(10) == []  # a checkpoint teacher is never overwritten by default
    batch = batch_factory(cfg, batch_size=4)
    total, parts = arch.forward_backward(batch, 0, 0.04)
    assert torch.isfinite(total) and parts["gram"] > 0
    # Without Gram anchoring too.
    plain = SSLMetaArch(tiny_cfg(*overrides))
    assert plain.gram_teacher is None
    total, parts = plain.forward_backward(batch_factory(plain.cfg, batch_size=4), 0, 0.04)
    assert torch.isfinite(total) and parts["gram"] == 0


def test_bad_teachers_and_weights_fail_clearly(tmp_path, tiny_cfg) -> None:
    narrow = tmp_path / "narrow.pth"
    save_backbone(DinoVisionTransformer(VitConfig(32, 1, 2, patch_size=8)), narrow)
    with pytest.raises(GramTeacherError, match=r"narrow.pth: embed dim 32, but the student has embed dim 64"):
        SSLMetaArch(tiny_cfg("gram.enabled=true", f"gram.teacher={narrow}"))
    ckpt = _official_file(tmp_path / "test.pth", ARCHS["dinov3_vit_test"])
    with pytest.raises(ConfigError, match=r"patch size 16, but student.patch_size=8"):
        SSLMetaArch(tiny_cfg(f"student.weights={ckpt}", "student.pretraining=sat493m"))
    with pytest.raises(ConfigError, match=r"takes 3 bands, but student.in_chans=4"):
        SSLMetaArch(
            tiny_cfg(
                f"student.weights={ckpt}", "student.patch_size=16", "student.in_chans=4", "student.pretraining=sat493m"
            )
        )


def test_bad_batches_fail_clearly(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("gram.enabled=true", "gram.high_res=true")
    arch = SSLMetaArch(cfg)
    good = batch_factory(cfg, batch_size=4)
    with pytest.raises(BatchError, match="no 'masks'"):
        arch.check_batch({k: v for k, v in good.items() if k != "masks"})
    with pytest.raises(BatchError, match="masks must be bool of shape"):
        arch.check_batch({**good, "masks": good["masks"].float()})
    with pytest.raises(BatchError, match="local_crops must be"):
        arch.check_batch({**good, "local_crops": good["local_crops"][:3]})
    with pytest.raises(BatchError, match="no gram_crops"):
        arch.forward_backward({**good, "gram_crops": None}, 0, 0.04)


def test_export_teacher_backbone_loads_with_load_backbone(tmp_path, tiny_cfg) -> None:
    arch = SSLMetaArch(tiny_cfg())
    path = arch.export_teacher_backbone(tmp_path / "backbone.pth")
    loaded = load_backbone(path)
    teacher = arch.teacher["backbone"]
    assert loaded.patch_size == 8 and loaded.embed_dim == 64
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), teacher(x))


def test_gram_on_masked_tokens_only_and_softmax_centering(tiny_cfg, batch_factory) -> None:
    for tokens in ("masked", "unmasked"):
        cfg = tiny_cfg("gram.enabled=true", f"gram.tokens={tokens}", "loss.centering=softmax")
        arch = SSLMetaArch(cfg).train()
        total, parts = arch.forward_backward(batch_factory(cfg, batch_size=4), 0, 0.04)
        assert torch.isfinite(total) and parts["gram"] > 0, tokens
    assert arch.dino_loss.center.abs().sum() > 0  # the softmax centre was updated


def test_high_res_gram_features_are_resized_bicubically_to_the_student_grid(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("gram.enabled=true", "gram.high_res=true")
    arch = SSLMetaArch(cfg)
    batch = batch_factory(cfg, batch_size=2)
    feats = arch.get_gram_teacher_output(batch)
    assert feats.shape == (4, 64, 64)  # 2 crops x 2 images, 8 x 8 student patches, width 64
    hi = arch.gram_teacher.forward_features(batch["gram_crops"])["x_norm_patchtokens"]  # 16 x 16 patches
    fmap = hi.transpose(1, 2).reshape(4, 64, 16, 16)
    expected = torch.nn.functional.interpolate(fmap, size=(8, 8), mode="bicubic", antialias=False)
    torch.testing.assert_close(feats, expected.flatten(2).transpose(1, 2))
    # Without the high-resolution path the teacher sees the global crops themselves.
    low = SSLMetaArch(tiny_cfg("gram.enabled=true"))
    low.gram_teacher.load_state_dict(arch.gram_teacher.state_dict())
    direct = low.gram_teacher.forward_features(batch["global_crops"])["x_norm_patchtokens"]
    torch.testing.assert_close(low.get_gram_teacher_output(batch), direct)


@pytest.mark.parametrize("recipe", ["continue_sat493m", "continue_sat493m_gram", "gram_stage"])
def test_continue_recipes_run_from_an_official_checkpoint(tmp_path, recipe, batch_factory) -> None:
    """The shipped recipes, shrunk to the test ViT (arch, crops, heads), continue from a Meta-layout file."""
    from geodino.training.config import load_config

    ckpt = _official_file(tmp_path / "sat.pth", ARCHS["dinov3_vit_test"])
    small = [
        "student.arch=test",
        f"student.weights={ckpt}",
        "student.pretraining=sat493m",
        "crops.global_size=64",
        "crops.local_size=32",
        "crops.n_local=2",
        *(f"{h}.{k}={v}" for h in ("dino_head", "ibot_head") for k, v in (("prototypes", 64), ("hidden_dim", 32))),
    ]
    if recipe != "continue_sat493m":
        small.append(f"gram.teacher={ckpt}")
    cfg = load_config(recipe, small)
    arch = SSLMetaArch(cfg).train()
    assert (arch.gram_teacher is not None) == (recipe != "continue_sat493m")
    batch = batch_factory(cfg, batch_size=2)
    assert (batch["gram_crops"] is not None) == cfg.gram.high_res
    total, parts = arch.forward_backward(batch, 0, cfg.teacher.temp_warmup_start)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    # Gram weight ramps from 0 at the start iteration (the recipes ramp over 1000 iterations).
    assert parts["gram_weight"] == 0.0
    assert float(arch.gram_weight(10**6)) == (cfg.gram.weight if cfg.gram.enabled else 0.0)


def test_a_batch_without_any_mask(tiny_cfg, batch_factory) -> None:
    cfg = tiny_cfg("gram.enabled=true", "gram.tokens=masked")
    arch = SSLMetaArch(cfg).train()
    batch = batch_factory(cfg, batch_size=2)
    batch["masks"] = torch.zeros_like(batch["masks"])
    total, parts = arch.forward_backward(batch, 0, 0.04)
    assert torch.isfinite(total) and parts["ibot"] == 0 and parts["gram"] == 0 and parts["dino/local"] > 0
