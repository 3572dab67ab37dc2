"""The side-by-side speed table: irnet_jax against the official IR-Net code, from one run's JSON lines.

    python bench/speed_table.py OUT_DIR/speed.jsonl

Reads the rows ``bench/cpu_side_by_side.sh`` (or ``bench/gpu_side_by_side.sh``) appended to one file:
the official harness's (``run.py --mode bench``: ``arch``, ``train_img_s``, ``eval_img_s``) and
``python -m irnet_jax.bench``'s (``model``, ``loop_train_images_per_second``, ``train_images_per_second``,
``eval_images_per_second``). Per network it prints, as Markdown, the official runs and their mean, and
for each irnet_jax row its training loop's rate (the benchmark's isolated step beside it) and its
evaluation rate, each as a ratio to the official mean of the same file:

    ratio = irnet_jax rate / mean(official rates).

irnet_jax rows of one network are told apart by the fields in which they differ (``VARIANT_FIELDS``),
e.g. ``binary_conv_products=float``; rows that differ in none are numbered.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from dataclasses import dataclass, field

# The fields each kind of row must have.
OFFICIAL_FIELDS = ("arch", "train_img_s", "eval_img_s")
OURS_FIELDS = ("model", "train_images_per_second", "eval_images_per_second")
# The official harness's ``arch`` -> irnet_jax's ``model``.
ARCH_TO_MODEL = {"resnet20_1w1a": "resnet20", "vgg_small_1w1a": "vgg_small"}
NET_NAMES = {"resnet20": "ResNet-20 1w1a", "vgg_small": "VGG-Small 1w1a"}
# irnet_jax bench fields that name a variant of a run (the config's speed choices and the machine split).
VARIANT_FIELDS = (
    "config_overrides",  # the command's --config.<field>=<value> arguments (rows since this script)
    "binary_conv_products",
    "train_ynn_reduce_only",
    "dtype",
    "device_count",
    "steps_per_call",
    "xla_flags",
)


@dataclass
class NetRows:
    """One network's rows of a side-by-side file, in file order."""

    official_train: list[float] = field(default_factory=list)
    official_eval: list[float] = field(default_factory=list)
    ours: list[dict] = field(default_factory=list)


def read_rows(path: pathlib.Path) -> dict[str, NetRows]:
    """``{model: NetRows}`` from a JSON-lines file (blank lines skipped; other rows refused by name)."""
    nets: dict[str, NetRows] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
        kind = OFFICIAL_FIELDS if "arch" in row else OURS_FIELDS if "model" in row else ()
        if missing := [f for f in kind if f not in row]:
            raise ValueError(f"{path}:{number}: the row has no {', '.join(missing)}")
        if "arch" in row:
            if row["arch"] not in ARCH_TO_MODEL:
                raise ValueError(
                    f"{path}:{number}: official arch {row['arch']!r} is not one of {sorted(ARCH_TO_MODEL)}"
                )
            net = nets.setdefault(ARCH_TO_MODEL[row["arch"]], NetRows())
            net.official_train.append(float(row["train_img_s"]))
            net.official_eval.append(float(row["eval_img_s"]))
        elif "model" in row:
            nets.setdefault(row["model"], NetRows()).ours.append(row)
        else:
            raise ValueError(f"{path}:{number}: neither an official row (arch) nor an irnet_jax row (model)")
    return nets


def variant_labels(rows: list[dict]) -> list[str]:
    """A label per irnet_jax row: its ``config_overrides`` (``defaults`` when none) where those differ
    among ``rows``, else ``field=value`` for each other ``VARIANT_FIELDS`` entry that differs; rows
    still alike are numbered (``run i``), a single row is ``irnet_jax``."""
    differing = [f for f in VARIANT_FIELDS if len({json.dumps(r.get(f)) for r in rows}) > 1]
    if "config_overrides" in differing:
        labels = [" ".join(r.get("config_overrides") or ["defaults"]) for r in rows]
    else:
        labels = [", ".join(f"{f}={r.get(f)}" for f in differing) for r in rows]
    if len(rows) == 1:
        return [labels[0] or "irnet_jax"]
    if len(set(labels)) < len(labels):
        return [f"{label}, run {i + 1}" if label else f"run {i + 1}" for i, label in enumerate(labels)]
    return labels


def ratio(rate: float | None, official: list[float]) -> str:
    """``"rate (r.rrx)"`` against the official mean; ``"-"`` when either side is missing."""
    if rate is None or not official:
        return "-"
    return f"{rate:,.1f} ({rate / statistics.fmean(official):.2f}x)"


def official_cell(rates: list[float]) -> str:
    if not rates:
        return "-"
    return ", ".join(f"{r:,.1f}" for r in rates) + f" (mean {statistics.fmean(rates):,.1f})"


def markdown(nets: dict[str, NetRows]) -> str:
    """The table: one line per network and irnet_jax variant (module docstring)."""
    lines = [
        "| network | official train img/s | official eval img/s | irnet_jax variant | loop img/s (ratio) "
        "| bench step img/s | eval img/s (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, net in nets.items():
        name = NET_NAMES.get(model, model)
        head = f"| {name} | {official_cell(net.official_train)} | {official_cell(net.official_eval)}"
        if not net.ours:
            lines.append(f"{head} | - | - | - | - |")
        for label, row in zip(variant_labels(net.ours), net.ours):
            loop = row.get("loop_train_images_per_second")
            lines.append(
                f"{head} | {label} | {ratio(loop, net.official_train)} | {row['train_images_per_second']:,.1f} "
                f"| {ratio(row['eval_images_per_second'], net.official_eval)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", type=pathlib.Path, help="the side-by-side run's JSON lines")
    path = parser.parse_args().jsonl
    if not path.is_file():
        sys.exit(f"speed_table: {path} is not a file")
    try:
        print(markdown(read_rows(path)))
    except ValueError as e:
        sys.exit(f"speed_table: {e}")


if __name__ == "__main__":
    main()
