"""Training curves of a workdir as a PNG: loss and accuracy (train per log line, validation per epoch)
against the epoch, and the schedules (learning rate, EDE ``t``).

    python -m irnet_jax.curves runs/smoke          # writes runs/smoke/curves.png

Reads ``<workdir>/metrics.jsonl`` (``metric_writers.MetricWriter``). matplotlib is optional
(``pip install 'irnet_jax[plots]'``); without it ``write_curves`` raises ``ImportError`` and the
trainer logs that it skipped the plot.
"""

import json
import os
import sys
from typing import Any

from absl import app

from irnet_jax import cli

CURVES_FILE = "curves.png"
PROG = "python -m irnet_jax.curves"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The rows of ``<workdir>/metrics.jsonl`` (JSON lines: no code is executed)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} has no metrics.jsonl: pass the workdir of a training run")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def steps_per_epoch(rows: list[dict[str, Any]]) -> float | None:
    """Steps per epoch of the run: ``step / epoch`` of a train row (their ``epoch`` is fractional), else
    of a validation row after a whole epoch (older runs); ``None`` when no row says."""
    for kind in ("train_loss", "val_accuracy"):
        for r in rows:
            if kind in r and r.get("epoch"):
                return r["step"] / r["epoch"]
    return None


def series(rows: list[dict[str, Any]], name: str) -> tuple[list[float], list[float]]:
    """``(x, values)`` of metric ``name``: x is the epoch (``step / steps_per_epoch``), or the step
    when the rows do not tell the steps per epoch."""
    per_epoch = steps_per_epoch(rows) or 1.0
    points = [(r["step"] / per_epoch, r[name]) for r in rows if name in r]
    return [p[0] for p in points], [p[1] for p in points]


def write_curves(workdir: str, path: str = "") -> str:
    """Plot the curves of ``workdir`` into ``path`` (default ``<workdir>/curves.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read_metrics(workdir)
    x_label = "epoch" if steps_per_epoch(rows) else "step"
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "validation")], False),
        ("accuracy", [("train_accuracy", "train"), ("val_accuracy", "validation")], False),
        ("learning rate", [("learning_rate", "learning rate")], False),
        ("EDE", [("ede_t", "t"), ("ede_k", "k")], True),
    ]
    for ax, (title, names, log_scale) in zip(axes, panels):
        for name, label in names:
            x, y = series(rows, name)
            if x:
                ax.plot(x, y, marker="o" if name.startswith("val_") else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = path or os.path.join(workdir, CURVES_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str]) -> None:
    try:
        print(write_curves(argv[1]))
    except (FileNotFoundError, ImportError, json.JSONDecodeError) as e:
        cli.fail(PROG, cli.one_line(e))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        cli.fail(PROG, "usage: python -m irnet_jax.curves WORKDIR")
    app.run(main)
