"""The loop across two real gloo processes: shards of the window stream, averaged gradients, one writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from training_data_helpers import write_rgb

WORLD = 2


def _worker(rank: int, store: str, image: str, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        from geodino.training.config import load_config
        from geodino.training.loop import train

        overrides = [f"data.paths=['{image}']", "train.steps=3", "train.batch_size=4", "train.diagnostic_every=3",
                     "train.log_every=1"]  # fmt: skip
        result = train(load_config("tiny", overrides), run_dir, log=lambda *_: None)
        model = result.model
        torch.save(
            {"teacher": model.teacher["backbone"].state_dict(), "student": model.student.state_dict()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_one_model_and_rank0_writes(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    image = write_rgb(tmp_path / "scene.tif", size=128)
    run = tmp_path / "run"
    args = (str(tmp_path / "store"), str(image), str(run), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method="fork")  # fork: no re-import
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]
    # Each rank reads its own shard of windows (tested in test_training_data_windows), yet both hold the same
    # model after every step: the gradients were averaged.
    for key in r[0]["student"]:
        torch.testing.assert_close(r[0]["student"][key], r[1]["student"][key], rtol=0, atol=1e-6)
    for key in r[0]["teacher"]:
        torch.testing.assert_close(r[0]["teacher"][key], r[1]["teacher"][key], rtol=0, atol=1e-6)
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 3  # one writer: a header and three rows, not six
    assert (run / "backbone.pth").is_file() and len(list((run / "checkpoints").glob("*.pth"))) == 1
