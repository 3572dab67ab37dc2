"""Metric writers that need no TensorFlow: TensorBoard event files (tensorboardX), ``metrics.jsonl``
and a plain-text ``train.log`` in the workdir. Only process 0 writes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax


class MetricWriter:
    """``write(step, {name: scalar})`` to TensorBoard and to ``<workdir>/metrics.jsonl``;
    ``log(line)`` to stdout (visible in notebooks) and to ``<workdir>/train.log``."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = self._jsonl = self._log = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self._log = open(os.path.join(workdir, "train.log"), "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, global_step=step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
        self._jsonl.flush()

    def log(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)
            self._log.write(line + "\n")
            self._log.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self._log.close()
            self.enabled = False
