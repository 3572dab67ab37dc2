"""The parity table of irnet_jax against the official IR-Net code: test accuracy per seed, mean and
sample standard deviation, and training images/s, from the runs' own result files.

    python bench/parity_table.py --runs /work/parity

Reads ``<runs>/jax_<net>_e<E>_s<seed>/summary.json`` (``train.py``'s) and
``<runs>/official_<arch>_e<E>_s<seed>.json`` (the last JSON line of the official harness,
``../shared/reference/irnet_official/run.py --json-out``); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
from collections import defaultdict

OURS = re.compile(r"jax_(?P<net>\w+?)_e(?P<epochs>\d+)_s(?P<seed>\d+)$")
OFFICIAL = re.compile(r"official_(?P<net>\w+?)_e(?P<epochs>\d+)_s(?P<seed>\d+)\.json$")
NETS = {
    "r20": "ResNet-20 1w1a",
    "resnet20_1w1a": "ResNet-20 1w1a",
    "vgg": "VGG-Small 1w1a",
    "vgg_small_1w1a": "VGG-Small 1w1a",
}


def collect(runs: pathlib.Path) -> dict:
    """{(net, epochs): {"irnet_jax" | "official": {seed: (test accuracy %, train img/s)}}}."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(runs.iterdir()):
        if (m := OURS.match(path.name)) and (path / "summary.json").is_file():
            s = json.loads((path / "summary.json").read_text())
            key = (NETS[m["net"]], int(m["epochs"]))
            table[key]["irnet_jax"][int(m["seed"])] = (100 * s["final_test_accuracy"], s["train_images_per_second"])
        elif m := OFFICIAL.match(path.name):
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            s = json.loads(lines[-1])
            key = (NETS[m["net"]], int(m["epochs"]))
            table[key]["official"][int(m["seed"])] = (s["test_acc"], s["train_img_s"])
    return table


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True)
    table = collect(pathlib.Path(parser.parse_args().runs))
    print("| network | epochs | side | seeds | test accuracy % per seed | mean ± std | train img/s |")
    print("|---|---|---|---|---|---|---|")
    for (net, epochs), sides in sorted(table.items()):
        for side in ("official", "irnet_jax"):
            runs = sides.get(side, {})
            if not runs:
                continue
            accs = [runs[s][0] for s in sorted(runs)]
            rates = ", ".join(f"{runs[s][1]:.0f}" for s in sorted(runs))
            per_seed = ", ".join(f"{a:.2f}" for a in accs)
            print(f"| {net} | {epochs} | {side} | {sorted(runs)} | {per_seed} | {spread(accs)} | {rates} |")


if __name__ == "__main__":
    main()
