"""THE model-metadata contract (geodino.modelinfo.ModelInfo): validation, plain-type round trips, the backbone's
embedding contract, and that it stays in the core (no wing, no torch at import)."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geodino.modelinfo import ModelInfo
from geodino.models.meta import SAT_MEAN, SAT_STD, BackboneMeta
from geodino.workflows.predictor import PredictorInfo, backbone_info

ROOT = Path(__file__).resolve().parents[1]


def _landcover(**changes) -> ModelInfo:
    fields = {
        "in_bands": 3,
        "out_channels": 2,
        "kind": "classification",
        "class_names": ("water", "land"),
        "class_colours": ((0, 0, 255), (0, 160, 0)),
        "band_names": ("red", "green", "blue"),
        "mean": (0.4, 0.4, 0.3),
        "std": (0.2, 0.15, 0.14),
        "tile": 256,
        "multiple": 16,
        "gsd": 0.6,
    }
    return ModelInfo(**{**fields, **changes})


def test_predictor_info_is_the_contract() -> None:
    assert PredictorInfo is ModelInfo


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "segmentation"}, "kind must be one of"),
        ({"class_names": ("a",)}, "1 class names for 2 output channels"),
        ({"class_colours": ((0, 0, 300), (0, 0, 0))}, "0..255"),
        ({"mean": (0.1, 0.2)}, "mean has 2 values for 3 input bands"),
        ({"std": (0.2, 0.0, 0.1)}, "std must be > 0"),
        ({"band_names": ("r",)}, "band_names has 1 values"),
        ({"units": "m"}, "describe regression outputs"),
        ({"activation": "relu"}, "activation must be one of"),
        ({"tile": 0}, "tile must be >= 1"),
        ({"overlap": 256}, r"overlap must be in \[0, tile\)"),
        ({"kind": "regression", "class_names": None, "class_colours": None, "valid_range": (5.0, 1.0)}, "low < high"),
        ({"kind": "regression", "class_colours": None}, "class_names are for classification"),
    ],
)
def test_invalid_contracts_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _landcover(**changes)


def test_plain_round_trip_through_weights_only_torch_load() -> None:
    info = _landcover()
    buffer = io.BytesIO()
    torch.save(info.to_dict(), buffer)
    buffer.seek(0)
    assert ModelInfo.from_dict(torch.load(buffer, weights_only=True)) == info
    chm = ModelInfo(3, 2, units="m", valid_range=(0.0, None), channel_names=("height", "height_std"))
    assert ModelInfo.from_dict(chm.to_dict()) == chm
    assert chm.output_attrs() == {
        "model": "model",
        "units": "m",
        "valid_min": 0.0,
        "channel_names": ["height", "height_std"],
    }
    with pytest.raises(ValueError, match=r"unknown model-info fields \['colour'\]"):
        ModelInfo.from_dict({**info.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="incomplete model info"):
        ModelInfo.from_dict({"in_bands": 3})


def test_backbone_meta_gives_the_embedding_contract() -> None:
    meta = BackboneMeta(
        name="dinov3_vitl16", weights="sat493m", embed_dim=1024, depth=24, mean=SAT_MEAN, std=SAT_STD, gsd=0.6
    )
    info = meta.model_info()
    assert info == backbone_info(meta)
    assert (info.kind, info.in_bands, info.out_channels, info.factor, info.multiple, info.tile) == (
        "embedding", 3, 1024, 16, 16, 224,
    )  # fmt: skip
    assert (
        info.mean == SAT_MEAN
        and info.std == SAT_STD
        and info.gsd == 0.6
        and info.band_names == ("red", "green", "blue")
    )
    assert meta.model_info(tile_tokens=32).tile == 512


def test_summary_rows() -> None:
    rows = _landcover().summary()
    assert rows["classes"] == "water #0000ff, land #00a000" and rows["GSD"] == "0.6 m"
    assert rows["tile / overlap / multiple / output stride"] == "256 / default / 16 / 1"


def test_geodino_exposes_the_api_lazily_without_importing_torch() -> None:
    code = (
        "import sys, geodino; geodino.hub; geodino.save_model; geodino.load_model; geodino.ModelInfo;"
        "import geodino.bundle, geodino.modelinfo; print(sorted(m for m in ('torch', 'dask', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_contract_and_saved_models_import_no_wing() -> None:
    for name in ("geodino/modelinfo.py", "geodino/bundle.py", "geodino/models/meta.py"):
        tree = ast.parse((ROOT / name).read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        wings = [
            m
            for m in modules
            if m.split(".")[:2] in (["geodino", "workflows"], ["geodino", "heads"], ["geodino", "training"])
        ]
        assert not wings, f"{name} imports {wings}"
