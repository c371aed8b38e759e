"""``geodino plot-run``: a run's curves (loss terms, schedules, patch-feature diagnostics) in one PNG."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_run", "read_metrics"]


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv -> {column: [(step, value), ...]} for the non-empty cells of each column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (is this a pretraining run folder?)")
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: not a metrics.csv (no 'step' column in its header)")
        for row in reader:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    if not series:
        raise ValueError(f"{path}: no logged step yet")
    return series


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's figure; returns its path (default ``run_dir/run.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series = read_metrics(run_dir / "metrics.csv")
    out = Path(out) if out is not None else run_dir / "run.png"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

    def line(ax, key: str, **kw) -> None:
        if key in series:
            steps, values = zip(*series[key], strict=True)
            ax.plot(steps, values, label=kw.pop("label", key), **kw)

    ax = axes[0]
    line(ax, "loss", color="black", linewidth=2)
    for key in ("dino_global", "dino_local", "ibot", "koleo", "gram"):
        line(ax, key)
    ax.set(title="losses", xlabel="step")
    ax.legend(fontsize=8)

    ax = axes[1]
    for key in ("teacher_temp", "momentum", "gram_weight"):
        line(ax, key)
    ax.set(title="schedules", xlabel="step")
    ax.legend(fontsize=8, loc="upper left")
    if "lr" in series:
        twin = ax.twinx()
        line(twin, "lr", color="grey", linestyle="--")
        twin.set_ylabel("lr")
        twin.legend(fontsize=8, loc="upper right")

    ax = axes[2]
    if "patch_sim_mean" in series:
        for lo, hi, alpha in (("patch_sim_q05", "patch_sim_q95", 0.15), ("patch_sim_q25", "patch_sim_q75", 0.3)):
            if lo in series and hi in series:
                steps = [s for s, _ in series[lo]]
                ax.fill_between(steps, [v for _, v in series[lo]], [v for _, v in series[hi]], alpha=alpha,
                                color="tab:blue", label=f"{lo[-3:]}-{hi[-3:]}")  # fmt: skip
        line(ax, "patch_sim_mean", color="tab:blue", marker="o", label="patch similarity (mean)")
        line(ax, "gram_distance", color="tab:red", marker="s", label="Gram distance")
        line(ax, "probe_miou", color="tab:green", marker="^", label="linear probe mIoU")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no diagnostic step yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="dense-feature diagnostics", xlabel="step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
