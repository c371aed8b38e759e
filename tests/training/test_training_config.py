"""PretrainConfig: recipes, overrides, errors and the saved config.yaml."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import pytest
import yaml

from geodino.training.config import (
    ConfigError,
    PretrainConfig,
    backbone_name,
    config_to_dict,
    list_recipes,
    load_config,
    save_config,
)


def test_shipped_recipes_load_and_are_package_data() -> None:
    assert set(list_recipes()) >= {"tiny", "continue_sat493m", "continue_sat493m_gram", "gram_stage"}
    shipped = {p.name for p in (resources.files("geodino.training") / "recipes").iterdir()}
    assert "tiny.yaml" in shipped
    tiny = load_config("tiny")
    assert tiny.student.arch == "test" and tiny.student.weights is None
    assert tiny.crops.global_size == 64 and tiny.crops.local_size == 32
    assert tiny.dino_head.prototypes == 256
    given = ["student.weights=/w.pth", "gram.teacher=/w.pth"]
    assert not load_config("continue_sat493m", given[:1]).gram.enabled
    gram = load_config("continue_sat493m_gram", given)
    assert gram.gram.enabled and gram.student.arch == "vitl16" and gram.optim.betas == (0.9, 0.99)
    assert gram.student.weights == gram.gram.teacher == "/w.pth"
    stage = load_config("gram_stage", [*given[:1], "gram.teacher=ema"])
    assert stage.gram.update_frequency == 10000 and stage.gram.max_updates == 3


@pytest.mark.parametrize(
    ("recipe", "missing"),
    [
        ("continue_sat493m", "student.weights"),
        ("continue_sat493m_gram", "student.weights, gram.teacher"),
        ("gram_stage", "student.weights, gram.teacher"),
    ],
)
def test_recipes_that_continue_refuse_to_start_without_their_weights(recipe: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=f"the recipe needs a value for {missing}: pass it as an override"):
        load_config(recipe)


def test_defaults_follow_the_reference() -> None:
    cfg = load_config(None)
    assert cfg.loss.koleo_weight == 0.1 and cfg.masking.probability == 0.5
    assert cfg.masking.ratio_min_max == (0.1, 0.5) and cfg.masking.min_num_patches == 4
    assert cfg.data.window_nodata_max == 0.5 and cfg.data.paths == []
    assert cfg.gram_teacher_size == 2 * cfg.crops.global_size


def test_overrides_are_parsed_as_yaml_and_typed() -> None:
    cfg = load_config(
        "tiny",
        [
            "optim.lr=1e-4",  # YAML 1.1 reads this as a string: still a number here
            "crops.global_scale=[0.4, 1]",
            "gram.enabled=true",
            "gram.update_frequency=null",
            "data.paths=[a.tif, b.tif]",
            "student.weights=/x/y.pth",
            "optim.clip_grad=null",
            "train.steps=7",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.crops.global_scale == (0.4, 1.0)
    assert cfg.gram.enabled is True and cfg.gram.update_frequency is None
    assert cfg.data.paths == ["a.tif", "b.tif"] and cfg.student.weights == "/x/y.pth"
    assert cfg.optim.clip_grad is None and cfg.train.steps == 7


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'.*valid keys: lr, min_lr"),
        ("optimizer.lr=1", r"'optimizer' is not in the top level; valid keys: student, data"),
        ("optim.lr.x=1", "is a value, not a section"),
        ("optim=3", "is a section"),
        ("train.steps=ten", "train.steps: expected an integer"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("gram.enabled=yes please", "expected true or false"),
        ("gram.tokens=some", "expected one of 'all', 'masked', 'unmasked'"),
        ("crops.global_scale=[0.1]", "expected a list of 2 values"),
        ("student.arch=vitz", "not a known architecture"),
        ("crops.global_size=60", "not a multiple of student.patch_size"),
        ("gram.remove_only_teacher_neg=true", "exclusive"),
        ("no_equals_sign", "not of the form"),
    ],
)
def test_bad_overrides_fail_clearly(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [override])


def test_bad_recipes_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; shipped recipes: .*tiny"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.warmup'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    cfg = load_config("tiny", ["gram.enabled=true", "crops.local_scale=[0.1, 0.3]", "data.bands=[1, 2, 3]"])
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert yaml.safe_load(path.read_text())["crops"]["local_scale"] == [0.1, 0.3]
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert dataclasses.is_dataclass(again) and isinstance(again, PretrainConfig)
    # A run folder that does not exist yet is created; an explicit file name is kept.
    assert save_config(cfg, tmp_path / "run" / "new") == tmp_path / "run" / "new" / "config.yaml"
    assert save_config(cfg, tmp_path / "other.yml") == tmp_path / "other.yml"


def test_backbone_names() -> None:
    assert backbone_name("test") == "dinov3_vit_test"
    assert backbone_name("vitl16") == "dinov3_vitl16"
    assert backbone_name("dinov3_vits16") == "dinov3_vits16"


def test_every_default_has_a_one_line_comment() -> None:
    import inspect

    from geodino.training import config

    source = inspect.getsource(config)
    for cls in (getattr(config, name) for name in config.__all__):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        for f in dataclasses.fields(cls):
            lines = [line for line in source.splitlines() if line.strip().startswith(f"{f.name}: ")]
            assert lines and all("  # " in line for line in lines), f"{cls.__name__}.{f.name} has no comment"
