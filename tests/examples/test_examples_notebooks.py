"""The example notebooks run top to bottom (executed with nbclient on this interpreter's kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent"),
]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    monkeypatch.setenv("GEODINO_DATA", str(DATA))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    # The native kernel ("python3") runs on sys.executable: this venv, with this checkout installed.
    assert nb.metadata["kernelspec"]["name"] == NATIVE_KERNEL_NAME
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name=NATIVE_KERNEL_NAME, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert list(tmp_path.glob("geodino-notebook-*/report/report.json"))
