"""DistillMetaArch on random batches: the pretraining losses against a frozen teacher, unmasked students, one
teacher forward for several students, per-student optimiser groups, clipping, EMA copies and export."""

from __future__ import annotations

import copy

import pytest
import torch

from geodino.models.checkpoint import load_backbone
from geodino.training.config import ConfigError
from geodino.training.distill import DistillMetaArch
from geodino.training.meta_arch import LOSS_KEYS, SSLMetaArch

TWO = "distill.students=[{name: deep1, arch: test, depth: 1}, {name: narrow, arch: test, embed_dim: 32, num_heads: 2}]"


def _distill_cfg(tiny_cfg, *extra):
    return tiny_cfg("distill.enabled=true", "init.from_run=/previous/run", *extra)


@pytest.fixture
def teacher(tiny_cfg):
    """A trained-looking teacher: the tiny SSL model's teacher, perturbed so that it is not at initialisation."""
    ssl = SSLMetaArch(tiny_cfg())
    with torch.no_grad():
        for p in ssl.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return ssl.teacher


def test_one_student_gets_exactly_the_pretraining_losses(tiny_cfg, teacher, batch_factory):
    """With the mask token on, one student against a frozen teacher is SSLMetaArch's step with that teacher."""
    cfg = tiny_cfg()
    ssl = SSLMetaArch(cfg)
    ssl.teacher.load_state_dict(teacher.state_dict())
    dist = DistillMetaArch(_distill_cfg(tiny_cfg, "distill.students=[test]", "distill.mask_student=true"), teacher)
    dist.students["test"].load_state_dict(ssl.student.state_dict())
    batch = batch_factory(cfg)
    torch.manual_seed(1)
    total_ssl, parts_ssl = ssl.forward_backward(batch, iteration=0, teacher_temp=0.07)
    torch.manual_seed(1)
    total_dist, parts_dist = dist.forward_backward(batch, iteration=0, teacher_temp=0.07)
    assert torch.allclose(total_ssl, total_dist)
    for key in LOSS_KEYS:
        assert torch.allclose(parts_ssl[key], parts_dist[key]), key
    for (name, a), b in zip(ssl.student.named_parameters(), dist.students["test"].parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None) and (a.grad is None or torch.allclose(a.grad, b.grad)), name


def test_students_see_unmasked_global_crops(tiny_cfg, teacher, batch_factory):
    model = DistillMetaArch(_distill_cfg(tiny_cfg), teacher)
    batch = batch_factory(model.cfg)
    assert batch["masks"].any()
    student = model.students["test"]
    model.eval()  # no RoPE augmentation: outputs comparable
    out = model.get_student_output(batch, student, mask_tokens=False)
    plain = student["backbone"].forward_features(batch["global_crops"])["x_norm_patchtokens"]
    masked = student["backbone"].forward_features(batch["global_crops"], batch["masks"])["x_norm_patchtokens"]
    assert torch.allclose(out["global_patch_tokens"], plain)
    assert not torch.allclose(out["global_patch_tokens"], masked)
    # The iBOT logits are still taken at the masked positions only.
    assert out["masked_patch_logits"].shape[0] == int(batch["masks"].sum())


def test_two_students_one_teacher_forward_frozen_teacher(tiny_cfg, teacher, batch_factory):
    model = DistillMetaArch(_distill_cfg(tiny_cfg, TWO), teacher)
    assert list(model.students) == ["deep1", "narrow"]
    assert [len(s["backbone"].blocks) for s in model.students.values()] == [1, 2]
    assert [s["backbone"].embed_dim for s in model.students.values()] == [64, 32]
    calls = {"teacher": 0, "deep1": 0, "narrow": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1

        return hook

    model.teacher["dino_head"].register_forward_hook(counter("teacher"))
    for name, student in model.students.items():
        student["dino_head"].register_forward_hook(counter(name))
    model.train()
    total, parts = model.forward_backward(batch_factory(model.cfg), iteration=0, teacher_temp=0.07)
    assert calls == {"teacher": 1, "deep1": 1, "narrow": 1}
    assert torch.allclose(total, parts["loss/deep1"] + parts["loss/narrow"])
    w = model.cfg.loss
    weighted = (
        w.dino_weight * (2 * parts["dino/global"] + 4 * parts["dino/local"]) / 6
        + w.ibot_weight * parts["ibot"]
        + w.koleo_weight * parts["koleo"]
    )
    assert torch.allclose(total, weighted, rtol=1e-5)  # the parts are summed over the students
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    for name, student in model.students.items():
        for part in ("dino_head", "ibot_head"):
            assert all(p.grad is not None for p in student[part].parameters()), (name, part)
        assert student["backbone"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_one_optimiser_over_all_students_clip_each_and_ema(tiny_cfg, teacher, batch_factory):
    model = DistillMetaArch(_distill_cfg(tiny_cfg, TWO, "optim.clip_grad=0.5"), teacher)
    groups = model.param_groups()
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.students.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    assert {n.split(".")[0] for g in groups for n in g["names"]} == {"deep1", "narrow"}
    optimizer = model.make_optimizer()
    model.train()
    model.forward_backward(batch_factory(model.cfg), iteration=0, teacher_temp=0.07)
    for p in model.students.parameters():
        if p.grad is not None:
            p.grad.mul_(1e3)
    model.clip_gradients()
    for student in model.students.values():
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in student.parameters() if p.grad is not None])
        )
        assert norm == pytest.approx(0.5, rel=1e-4)  # each clipped on its own
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    ema_before = copy.deepcopy(model.students_ema.state_dict())
    for g in optimizer.param_groups:
        g["lr"] = 1e-2
    optimizer.step()
    model.update_teacher(0.5)
    ema = model.students_ema.state_dict()
    live = {f"{k}": v for k, v in model.students.state_dict().items()}
    moved = [k for k in ema if not torch.equal(ema[k], ema_before[k])]
    assert moved and all(torch.allclose(ema[k], 0.5 * ema_before[k] + 0.5 * live[k]) for k in moved)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())


def test_export_writes_every_student(tiny_cfg, teacher, tmp_path):
    model = DistillMetaArch(_distill_cfg(tiny_cfg, TWO), teacher)
    for s in model.backbones():
        s.meta = teacher["backbone"].meta
    path = model.export_teacher_backbone(tmp_path / "backbone.pth")
    assert path == tmp_path / "backbone.pth"
    assert model.export_paths(path) == {"deep1": path, "narrow": tmp_path / "backbone_narrow.pth"}
    assert load_backbone(path).embed_dim == 64 and load_backbone(tmp_path / "backbone_narrow.pth").embed_dim == 32
    assert model.exported_backbone is model.students_ema["deep1"]["backbone"]


def test_bad_students_are_refused(tiny_cfg, teacher):
    with pytest.raises(ConfigError, match="prototypes"):
        DistillMetaArch(_distill_cfg(tiny_cfg, "ibot_head.prototypes=128"), teacher)
    with pytest.raises(ConfigError, match="head dimension"):
        DistillMetaArch(_distill_cfg(tiny_cfg, "distill.students=[{arch: test, embed_dim: 40, num_heads: 4}]"), teacher)
    with pytest.raises(ConfigError, match="names must differ"):
        _distill_cfg(tiny_cfg, "distill.students=[test, test]")
    with pytest.raises(ConfigError, match=r"needs init\.from_run"):
        tiny_cfg("distill.enabled=true")
    with pytest.raises(ConfigError, match=r"distill\.enabled is false"):
        tiny_cfg("distill.students=[test]")


def test_ddp_or_fsdp2_wrapping_of_students_is_refused_not_half_applied(tiny_cfg, teacher, monkeypatch):
    import torch

    import geodino.training.distributed as distributed
    from geodino.training.parallel import ParallelConfig, wrap_model

    model = DistillMetaArch(_distill_cfg(tiny_cfg, TWO), teacher)
    monkeypatch.setattr(distributed, "get_world_size", lambda: 2)  # as under torchrun, without a process group
    for strategy in ("ddp", "fsdp2"):
        with pytest.raises(ConfigError, match=r"parallel\.strategy=none"):
            wrap_model(model, ParallelConfig(strategy=strategy), torch.device("cpu"))
    assert wrap_model(model, ParallelConfig(strategy="none"), torch.device("cpu")).parallel_strategy == "none"
