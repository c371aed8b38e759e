"""Stages started from a previous run folder: tiny pretrain -> high-resolution adaptation -> distillation -> export.

Real runs on a GeoTIFF the test writes; the previous run folders are real (config.yaml, checkpoints, backbone.pth),
and the broken ones are copies with a piece removed or a setting changed.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
from training_data_helpers import single_thread, tiny_args, write_rgb  # noqa: F401 (single_thread is a fixture)

from geodino.models.checkpoint import load_backbone
from geodino.training.config import ConfigError, load_config, save_config
from geodino.training.data.multicrop import MixedSizeCollate
from geodino.training.loop import build_data, latest_checkpoint, train
from geodino.training.stages import StageError, build_model, read_model_state

pytestmark = pytest.mark.usefixtures("single_thread")


def _rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 128 px raster, a 2-step tiny pretrain run and a 3-step hires_adapt_tiny run started from it."""
    root = tmp_path_factory.mktemp("stages")
    image = write_rgb(root / "scene.tif", size=128, seed=3)
    data = f"data.paths=['{image}']"
    torch.set_num_threads(1)
    pre = root / "pretrain"
    train(load_config("tiny", [data, "train.steps=2", "train.diagnostic_every=0", "crops.n_local=2"]), pre)
    hires = root / "hires"
    result = train(load_config("hires_adapt_tiny", [data, f"init.from_run={pre}"]), hires)
    return {"image": image, "data": data, "pretrain": pre, "hires": hires, "hires_model": result.model}


def _copy(run, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


# ------------------------------------------------------------------------------------------------ hires
def test_hires_starts_from_the_previous_checkpoint_with_a_fixed_gram_teacher(chain):
    pre = chain["pretrain"]
    state, iteration = read_model_state(latest_checkpoint(pre))
    assert iteration == 2
    cfg = load_config("hires_adapt_tiny", [chain["data"], f"init.from_run={pre}"])
    model = build_model(cfg)
    for prefix, module in (("student.", model.student), ("teacher.", model.teacher)):
        mine = module.state_dict()
        assert mine.keys() == {k[len(prefix) :] for k in state if k.startswith(prefix)}
        assert all(torch.equal(mine[k], state[prefix + k]) for k in mine)
    teacher_backbone = {k[len("teacher.backbone.") :]: v for k, v in state.items() if k.startswith("teacher.backbone.")}
    assert _same(_state(model.gram_teacher), teacher_backbone)
    assert not any(model.gram_schedule.should_update(i) for i in range(1000))  # fixed: never refreshed
    # The normalisation is the previous run's (from its backbone.pth), not new statistics.
    assert model.teacher["backbone"].meta.mean == load_backbone(pre / "backbone.pth").meta.mean

    rows = _rows(chain["hires"])
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["gram"]) > 0 and float(r["gram_weight"]) == 1.5 for r in rows)
    trained = chain["hires_model"]
    assert _same(_state(trained.gram_teacher), teacher_backbone)  # the Gram teacher stayed fixed
    before = {k[len("student.backbone.") :]: v for k, v in state.items() if k.startswith("student.backbone.")}
    assert not _same(_state(trained.student["backbone"]), before)  # and the student trained


def test_mixed_sizes_one_size_per_batch_paired_gram_crops(chain):
    cfg = load_config("hires_adapt_tiny", [chain["data"], "init.from_run=/unused", "train.batch_size=2"])
    backbone = load_backbone(chain["pretrain"] / "backbone.pth")
    data = build_data(cfg, backbone)
    assert isinstance(data.loader.collate_fn.collate, MixedSizeCollate)  # inside IndexedCollate
    seen = set()
    for _, batch in zip(range(12), data.loader, strict=False):
        g, local, gram, masks = batch["global_crops"], batch["local_crops"], batch["gram_crops"], batch["masks"]
        side, lside = g.shape[-1], local.shape[-1]
        assert g.shape == (4, 3, side, side) and local.shape == (8, 3, lside, lside)
        assert gram.shape[-1] == {64: 96, 96: 144}[side]
        assert masks.shape == (4, (side // 8) ** 2)
        seen.add((side, lside))
    assert {s for s, _ in seen} == {64, 96} and {s for _, s in seen} == {32, 48}
    # The same windows give the same sizes (a resumed run repeats them).
    again = build_data(cfg, backbone)
    first = [b["global_crops"].shape[-1] for _, b in zip(range(12), again.loader, strict=False)]
    second = [b["global_crops"].shape[-1] for _, b in zip(range(12), build_data(cfg, backbone).loader, strict=False)]
    assert first == second


# ------------------------------------------------------------------------------------------------ distill
def test_distill_from_the_hires_run_exports_students_that_load(chain, tmp_path):
    hires = chain["hires"]
    cfg = load_config("distill_tiny", [chain["data"], f"init.from_run={hires}"])
    model = build_model(cfg)
    state, _ = read_model_state(latest_checkpoint(hires))
    teacher_before = _state(model.teacher)
    assert all(torch.equal(v, state["teacher." + k]) for k, v in teacher_before.items())
    # The loop builds its own model: count the teacher forwards through the class.
    from geodino.training import distill

    original = distill.DistillMetaArch.get_teacher_output
    counted = []

    def counting(self, batch, teacher_temp):
        counted.append(1)
        return original(self, batch, teacher_temp)

    distill.DistillMetaArch.get_teacher_output = counting
    try:
        result = train(cfg, tmp_path / "distill")
    finally:
        distill.DistillMetaArch.get_teacher_output = original
    assert len(counted) == 3  # one teacher forward per step, shared by both students
    trained = result.model
    assert _same(_state(trained.teacher), teacher_before)  # frozen
    rows = _rows(tmp_path / "distill")
    assert all(float(r["gram"]) == 0 and float(r["ibot"]) > 0 for r in rows)
    deep1 = load_backbone(tmp_path / "distill" / "backbone.pth")
    narrow = load_backbone(tmp_path / "distill" / "backbone_narrow.pth")
    assert (deep1.embed_dim, len(deep1.blocks), deep1.patch_size) == (64, 1, 8)
    assert (narrow.embed_dim, len(narrow.blocks), narrow.patch_size) == (32, 1, 8)
    assert _same(_state(deep1), _state(trained.students_ema["deep1"]["backbone"]))
    # The students keep the teacher's normalisation; their weights moved.
    assert deep1.meta.mean == load_backbone(hires / "backbone.pth").meta.mean
    x = torch.randn(1, 3, 32, 32)
    assert deep1.forward_features(x)["x_norm_patchtokens"].shape == (1, 16, 64)
    assert narrow.forward_features(x)["x_norm_patchtokens"].shape == (1, 16, 32)
    fresh = build_model(cfg)
    assert not _same(_state(fresh.students["narrow"]), _state(trained.students["narrow"]))
    # The distillation run resumes like any run: teacher, students, EMA copies and optimiser from its checkpoint.
    more = train(
        load_config(tmp_path / "distill" / "config.yaml", ["train.steps=4"]), tmp_path / "distill", resume=True
    )
    assert (more.start_iteration, more.end_iteration) == (3, 4)
    assert _same(_state(more.model.teacher), teacher_before)
    assert [int(r["step"]) for r in _rows(tmp_path / "distill")] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ errors
def test_missing_pieces_are_named(chain, tmp_path):
    data = chain["data"]

    def attempt(run, *extra):
        with pytest.raises(StageError) as info:
            build_model(load_config("hires_adapt_tiny", [data, f"init.from_run={run}", *extra]))
        return str(info.value)

    assert "is not a folder" in attempt(tmp_path / "nowhere")
    run = _copy(chain["pretrain"], tmp_path, "no_backbone")
    (run / "backbone.pth").unlink()
    assert "no backbone.pth" in attempt(run)
    run = _copy(chain["pretrain"], tmp_path, "no_ckpt")
    shutil.rmtree(run / "checkpoints")
    assert "no checkpoint" in attempt(run)
    run = _copy(chain["pretrain"], tmp_path, "no_config")
    (run / "config.yaml").unlink()
    assert "no config.yaml" in attempt(run)
    run = _copy(chain["pretrain"], tmp_path, "cut")
    ckpt = latest_checkpoint(run)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert "not a readable pretraining checkpoint" in attempt(run)
    # An unfinished run is refused, unless its checkpoint is named on purpose.
    run = _copy(chain["pretrain"], tmp_path, "unfinished")
    cfg = load_config(run / "config.yaml", ["train.steps=10"])
    save_config(cfg, run)
    message = attempt(run)
    assert "stopped at step 2 of 10" in message and "init.checkpoint=" in message
    build_model(load_config("hires_adapt_tiny", [data, f"init.checkpoint={latest_checkpoint(run)}"]))


def test_incompatible_previous_runs_are_refused(chain):
    data, pre = chain["data"], chain["pretrain"]

    def attempt(recipe, *extra, error=StageError):
        with pytest.raises(error) as info:
            build_model(load_config(recipe, [data, f"init.from_run={pre}", *extra]))
        return str(info.value)

    assert "patch size 8" in attempt("hires_adapt_tiny", "student.patch_size=16")
    assert "set student.in_chans=3" in attempt("hires_adapt_tiny", "student.in_chans=4")
    assert "data.bands" in attempt("hires_adapt_tiny", "data.bands=[3,2,1]")
    assert "dino_head" in attempt("hires_adapt_tiny", "dino_head.hidden_dim=64")
    assert "student.weights" in attempt("hires_adapt_tiny", f"student.weights={chain['image']}")
    assert "patch size 8" in attempt("distill_tiny", "student.patch_size=16")
    assert "prototypes" in attempt("distill_tiny", "dino_head.prototypes=128", error=ConfigError)
    assert "not student.arch=vits16" in attempt("hires_adapt_tiny", "student.arch=vits16", error=ConfigError)
    # The config itself: "previous" and distillation need a previous run; no Gram in distillation.
    with pytest.raises(ConfigError, match=r"gram\.teacher=previous needs init\.from_run"):
        load_config("hires_adapt_tiny", [data, "init.from_run=null"])
    with pytest.raises(ConfigError, match="no Gram loss"):
        load_config("distill_tiny", [data, f"init.from_run={pre}", "gram.enabled=true"])
    with pytest.raises(ConfigError, match=r"distill.students\[0\]: unknown key"):
        load_config("distill_tiny", [data, f"init.from_run={pre}", "distill.students=[{arch: test, width: 3}]"])


def test_distilling_a_distillation_run_is_refused(chain, tmp_path):
    run = _copy(chain["pretrain"], tmp_path)
    cfg = load_config("distill_tiny", [chain["data"], f"init.from_run={chain['pretrain']}"])
    save_config(cfg, run)
    with pytest.raises(StageError, match="is a distillation run"):
        build_model(load_config("distill_tiny", [chain["data"], f"init.from_run={run}"]))


# ------------------------------------------------------------------------------------------------ CLI
def _geodino(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "geodino.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_cli_hires_from_a_run_folder(chain, tmp_path):
    out = tmp_path / "hires_cli"
    args = tiny_args(chain["image"], out)
    args[args.index("tiny")] = "hires_adapt_tiny"
    done = _geodino(*args, "--from", str(chain["pretrain"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_config(out / "config.yaml").init.from_run == str(chain["pretrain"])
    assert load_backbone(out / "backbone.pth").patch_size == 8
    bad = _geodino(*tiny_args(chain["image"], tmp_path / "bad"), "--from", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a folder" in lines[0] and "Traceback" not in bad.stderr


def test_full_size_recipes_say_what_the_reference_says():
    with pytest.raises(ConfigError, match=r"needs a value for init\.from_run"):
        load_config("hires_adapt")
    hires = load_config("hires_adapt", ["init.from_run=/runs/gram"])
    assert hires.global_crop_sizes == [512, 768] and hires.gram_teacher_sizes == [768, 1152]
    assert hires.local_crop_sizes == [112, 160, 224, 336]
    g = hires.gram
    assert g.enabled and g.teacher == "previous" and g.update_frequency is None and g.weight == 1.5 and g.high_res
    distill = load_config("distill", ["init.from_run=/runs/vitl"])
    assert distill.distill.enabled and distill.distill.students == ["vits16", "vitb16"]
    assert not distill.distill.mask_student and not distill.gram.enabled


def test_distillation_keeps_the_teachers_loss_centres(chain, tmp_path):
    """Softmax centering's teacher centres travel with the teacher (they shape its targets)."""
    run = _copy(chain["hires"], tmp_path)
    ckpt = latest_checkpoint(run)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    centre = torch.rand_like(saved["model"]["dino_loss.center"])
    saved["model"]["dino_loss.center"] = centre
    torch.save(saved, ckpt)
    model = build_model(load_config("distill_tiny", [chain["data"], f"init.from_run={run}", "loss.centering=softmax"]))
    assert torch.equal(model.dino_loss.center, centre)
