"""Mapping you can trust (issue 7): resume by content, no silent random weights, incomplete stores that say so.

Every case runs real files through a real run: a run that dies midway (its model fails after a few chunks, with
the chunks before it written and flagged), then a resume, or a read, or an export of what it left.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner
from workflows_helpers import STEPWISE, interrupt, save_test_backbone

from geodino.cli import app
from geodino.errors import IncompleteStoreError, ModelError, StoreMismatchError
from geodino.workflows.manifest import completeness, read_manifest
from geodino.workflows.mapping import IncompleteStoreWarning, embed_raster, open_output


def _cli(*args: str) -> object:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


# ----------------------------------------------------------------------------------------------------------------
# 1. --resume identifies inputs and models by content, paths by their resolved form.


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """Two different checkpoints, both called m.pth, of the same size, in folders a/ and b/."""
    a = save_test_backbone(tmp_path / "a" / "m.pth", seed=1)
    b = save_test_backbone(tmp_path / "b" / "m.pth", seed=2)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    return a, b


def test_resume_with_another_checkpoint_of_the_same_name_is_refused(
    scene: Path, tmp_path: Path, two_checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_checkpoints
    out = tmp_path / "e.zarr"
    monkeypatch.chdir(a.parent)
    interrupt(lambda: embed_raster(scene, "m.pth", out, **STEPWISE), monkeypatch)
    done, total = completeness(out)
    assert 0 < done < total
    monkeypatch.chdir(b.parent)
    with pytest.raises(StoreMismatchError, match=r"model\.digest differs"):
        embed_raster(scene, "m.pth", out, resume=True, **STEPWISE)
    # The same through the command line: one line, exit 2, and the store is untouched.
    result = _cli("embed", str(scene), "--backbone", "m.pth", "--out", str(out), "--resume", "--tile", "64",
                  "--overlap", "0", "--chunk", "4", "--batch-size", "1", "--scheduler", "sync", "--no-progress")  # fmt: skip
    assert result.exit_code == 2 and "model.digest differs" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 300, result.output
    # The checkpoint's warning is one line too (no Python source line under it).
    assert all(line.startswith(("warning: ", "error: ")) for line in result.output.splitlines()), result.output
    assert completeness(out) == (done, total)


def test_resume_with_the_same_files_spelled_otherwise_is_accepted(
    scene: Path, tmp_path: Path, two_checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_checkpoints
    out = tmp_path / "e.zarr"
    monkeypatch.chdir(tmp_path)
    interrupt(lambda: embed_raster("scene.tif", "a/m.pth", "e.zarr", **STEPWISE), monkeypatch)
    monkeypatch.chdir(a.parent)  # now by absolute paths, from elsewhere
    got = embed_raster(str(scene), str(a), str(out), resume=True, **STEPWISE).embedding.values
    reference = embed_raster(scene, a, tmp_path / "ref.zarr", **STEPWISE).embedding.values
    assert np.array_equal(got, reference) and np.isfinite(got).all()
    assert completeness(out)[0] == completeness(out)[1]


def test_resume_after_a_checkpoint_is_rewritten_in_place_is_refused(
    scene: Path, tmp_path: Path, two_checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_checkpoints
    out = tmp_path / "e.zarr"
    interrupt(lambda: embed_raster(scene, a, out, **STEPWISE), monkeypatch)
    before = a.stat()
    save_test_backbone(a, seed=3)  # same path, same size; mtime put back: only the bytes tell
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert a.stat().st_size == before.st_size and a.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(StoreMismatchError, match=r"model\.digest differs"):
        embed_raster(scene, a, out, resume=True, **STEPWISE)


def test_resume_after_an_input_is_rewritten_in_place_is_refused(
    scene: Path, tmp_path: Path, two_checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_checkpoints
    out = tmp_path / "e.zarr"
    interrupt(lambda: embed_raster(scene, a, out, **STEPWISE), monkeypatch)
    before = scene.stat()
    write_raster(scene, smooth_scene(3, 128, 192, seed=99, dtype=np.uint8))  # same shape, dtype, size
    os.utime(scene, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert scene.stat().st_size == before.st_size
    with pytest.raises(StoreMismatchError, match=r"inputs\[0\] \(scene\.tif\)\.sha256 differs"):
        embed_raster(scene, a, out, resume=True, **STEPWISE)


# ----------------------------------------------------------------------------------------------------------------
# 2. Random weights only when asked for, and said so in the output.


def test_a_hub_architecture_name_needs_random_weights_asked_for(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.zarr"
    result = _cli("embed", str(scene), "--backbone", "vits16", "--out", str(out), "--no-progress")
    assert result.exit_code == 2
    assert "checkpoint file" in result.output and "--random-weights" in result.output
    assert not out.exists()
    with pytest.raises(ModelError, match="random_weights=True"):
        embed_raster(scene, "vits16", out, progress=False)

    result = _cli("embed", str(scene), "--backbone", "vits16", "--random-weights", "--out", str(out), "--tile", "64",
                  "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output
    ds = open_output(out)
    assert ds.attrs["weights"] == "random" and ds.embedding.shape[0] == 384
    model = read_manifest(out)["model"]
    assert model["random_weights"] is True and model["pretraining"] == "random"
    assert read_manifest(out)["options"]["random_weights"] is True


def test_random_weights_with_a_checkpoint_file_is_refused(
    scene: Path, tmp_path: Path, two_checkpoints: tuple[Path, Path]
) -> None:
    a, _ = two_checkpoints
    result = _cli("embed", str(scene), "--backbone", str(a), "--random-weights", "--out", str(tmp_path / "e.zarr"))
    assert result.exit_code == 2 and "applies to hub names" in result.output


def test_the_test_model_runs_without_the_flag_but_is_marked_random(scene: Path, tmp_path: Path) -> None:
    ds = embed_raster(scene, "test", tmp_path / "e.zarr", progress=False)
    assert ds.attrs["weights"] == "random" and read_manifest(tmp_path / "e.zarr")["model"]["random_weights"]


def test_a_checkpoint_run_is_not_marked_random(scene: Path, tmp_path: Path, two_checkpoints) -> None:
    ds = embed_raster(scene, two_checkpoints[0], tmp_path / "e.zarr", pretraining="sat493m", progress=False)
    assert ds.attrs["weights"] == "sat493m"
    assert read_manifest(tmp_path / "e.zarr")["model"]["random_weights"] is False


# ----------------------------------------------------------------------------------------------------------------
# 3. Incomplete stores say how much is missing; export refuses them unless asked.


@pytest.fixture
def incomplete(scene: Path, tmp_path: Path, two_checkpoints, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "e.zarr"
    interrupt(lambda: embed_raster(scene, two_checkpoints[0], out, **STEPWISE), monkeypatch)
    assert completeness(out) == (2, 6)
    return out


def test_open_output_refuses_an_incomplete_store_unless_allowed(incomplete: Path) -> None:
    with pytest.raises(IncompleteStoreError, match=r"4 of 6 chunks are missing.*--resume") as info:
        open_output(incomplete)
    assert (info.value.missing, info.value.total) == (4, 6)
    with pytest.warns(IncompleteStoreWarning, match="4 of 6 chunks are missing"):
        ds = open_output(incomplete, allow_incomplete=True)
    assert np.isnan(ds.embedding.values).mean() == pytest.approx(4 / 6)


def test_export_cog_refuses_an_incomplete_store_unless_allowed(incomplete: Path, tmp_path: Path) -> None:
    tif = tmp_path / "e.tif"
    result = _cli("export-cog", str(incomplete), "embedding", str(tif), "--band", "0")
    assert result.exit_code == 2 and "4 of 6 chunks are missing" in result.output and not tif.exists()
    result = _cli("export-cog", str(incomplete), "embedding", str(tif), "--band", "0", "--allow-incomplete")
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "4 of 6 chunks are missing" in result.output
    with rasterio.open(tif) as src:
        assert np.isnan(src.read(1)).mean() == pytest.approx(4 / 6)


def test_info_reports_an_incomplete_store(incomplete: Path) -> None:
    result = _cli("info", str(incomplete))
    assert result.exit_code == 0, result.output
    assert "2 of 6 chunks done (INCOMPLETE: 4 of 6 chunks missing)" in result.output
    assert "failed: RuntimeError: simulated crash" in result.output
