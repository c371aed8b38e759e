"""``geodino pretrain --nproc N``: the same command re-run as N local processes by torchrun.

The processes are started by PyTorch's own launcher, ``python -m torch.distributed.run`` (torchrun's module), with
a standalone rendezvous on this machine (a free port, no clash with another job); each runs ``geodino pretrain``
without ``--nproc`` and joins the process group torchrun describes in its environment. Under an existing torchrun
(``RANK`` and ``WORLD_SIZE`` set, e.g. a multi-node job) nothing is re-launched.

Workers' stdout (rank 0's progress) passes through as it comes; their stderr is collected, so that an anticipated
failure (a worker's ``error: ...`` line) ends in that one line and exit status 2, not torchrun's failure report.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["LaunchError", "check_nproc", "relaunch", "torchrun_command", "under_torchrun"]

#: the module the workers run (its ``main`` registers ``pretrain``)
WORKER_MODULE = "geodino.training.cli"


class LaunchError(ValueError):
    """A ``--nproc`` that cannot be honoured here."""


def under_torchrun() -> bool:
    """Whether this process is a worker of a torchrun (or compatible) launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_nproc(nproc: int | None) -> bool:
    """Whether ``--nproc`` asks for a re-launch (True) or the command runs here (False).

    Raises:
        LaunchError: ``nproc`` < 1, or a different count from the local processes of the torchrun already running.
    """
    if nproc is None:
        return False
    if nproc < 1:
        raise LaunchError(f"--nproc must be at least 1, got {nproc}")
    if under_torchrun():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if nproc != local:
            raise LaunchError(
                f"--nproc {nproc}, but this process already runs under torchrun with {local} local processes; "
                "drop --nproc (torchrun's --nproc-per-node decides)"
            )
        return False
    return nproc > 1


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The command line that runs ``geodino <args>`` as ``nproc`` local processes through torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        WORKER_MODULE,
        *args,
    ]


def relaunch(nproc: int, args: list[str]) -> tuple[int, str]:
    """Run ``geodino <args>`` as ``nproc`` processes under torchrun and wait for them.

    Returns:
        (exit status, message for stderr): (0, the workers' stderr) on success; (2, the first ``error: ...`` line a
        worker printed) for an anticipated failure; else (torchrun's status, its stderr).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # torchrun would say 1
    proc = subprocess.run(torchrun_command(nproc, args), stderr=subprocess.PIPE, text=True, env=env, check=False)
    err = proc.stderr or ""
    if proc.returncode == 0:
        return 0, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if errors:
        return 2, errors[0]
    return proc.returncode or 1, err
