"""Every config field checked before anything is loaded or written: ``validate(config, n_devices)``.

A bad value raises ``ConfigError`` naming the field, the value and what is allowed. Numbers are checked
against ``RULES`` (one row per field: its type and the interval it must lie in); names of choices
(model, dataset, optimizer, estimator, augmentation, padding, ...) by the modules that own them, and the
model's own options by building it abstractly (``nnx.eval_shape``: no memory, no compilation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_collections
from flax import nnx

from irnet_jax import data as data_lib
from irnet_jax import models, optim, runtime
from irnet_jax.errors import ConfigError

INF = math.inf


class Rule(NamedTuple):
    """``low <= value <= high`` (``open_low``: ``low < value``), of type ``kind``; ``unset`` is also
    accepted (the field's "not set" sentinel, e.g. -1)."""

    kind: type
    low: float
    high: float = INF
    open_low: bool = False
    unset: float | None = None

    def allowed(self) -> str:
        left = f"> {self.low}" if self.open_low else f">= {self.low}"
        text = left if self.high == INF else f"{left} and <= {self.high}"
        return text if self.unset is None else f"{text}, or {self.unset}"


RULES: dict[str, Rule] = {
    "batch_size": Rule(int, 1),
    "eval_batch_size": Rule(int, 1),
    "num_epochs": Rule(float, 0, open_low=True),
    "num_train_steps": Rule(int, 1, unset=-1),
    "train_size": Rule(int, 1, unset=-1),
    "validation_size": Rule(int, 0),
    "learning_rate": Rule(float, 0, open_low=True),
    "momentum": Rule(float, 0, 1),
    "weight_decay": Rule(float, 0, 1),
    "warmup_epochs": Rule(float, 0),
    "label_smoothing": Rule(float, 0, 1),
    "t_min": Rule(float, 0, open_low=True),
    "t_max": Rule(float, 0, open_low=True),
    "crop_padding": Rule(int, 0),
    "encoding_levels": Rule(int, 1),
    "log_every_steps": Rule(int, 1),
    "save_every_epochs": Rule(int, 1),
    "keep_checkpoints": Rule(int, 1),
    "cpu_devices": Rule(int, 0, runtime.MAX_CPU_DEVICES),
    "seed": Rule(int, 0),
    "residual_frac_bits": Rule(int, 0, 22),
}


def check_number(name: str, value: object, rule: Rule) -> None:
    """``ConfigError`` unless ``value`` is a finite number of ``rule.kind`` inside ``rule``'s interval."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (rule.kind is int and not isinstance(value, int))
    ):
        raise ConfigError(f"{name} must be {'an integer' if rule.kind is int else 'a number'}, got {value!r}")
    if rule.unset is not None and value == rule.unset:
        return
    too_low = value <= rule.low if rule.open_low else value < rule.low
    if not math.isfinite(value) or too_low or value > rule.high:
        raise ConfigError(f"{name}={value!r} is not allowed: must be {rule.allowed()}")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    for name, rule in RULES.items():
        if name in config:
            check_number(name, config[name], rule)
    if config.t_max < config.t_min:
        raise ConfigError(f"t_max={config.t_max} must be >= t_min={config.t_min}")
    if config.warmup_epochs > config.num_epochs:
        raise ConfigError(f"warmup_epochs={config.warmup_epochs} must be <= num_epochs={config.num_epochs}")


def _check_devices(config: ml_collections.ConfigDict, n_devices: int) -> None:
    if config.batch_size % n_devices or config.eval_batch_size % n_devices:
        raise ConfigError(
            f"batch_size={config.batch_size} and eval_batch_size={config.eval_batch_size} must be "
            f"multiples of the device count {n_devices}"
        )


def _check_choices(config: ml_collections.ConfigDict) -> None:
    """The string fields, each by the module that owns its choices (``ValueError`` -> ``ConfigError``)."""
    from irnet_jax.train_state import build_model  # train_state imports the modules validated here

    try:
        info = data_lib.get_dataset_info(config.dataset)
        data_lib.resolve_augment(config.augment, info)
        data_lib.normalization_stats(info, config.normalization)
        if config.model not in models.list_models():
            raise ValueError(f"unknown model {config.model!r}; valid: {models.list_models()}")
        runtime.validate(config)
        optim.validate(config)
        if config.eval_checkpoint not in ("best", "latest"):
            raise ValueError(f"eval_checkpoint must be 'best' or 'latest', got {config.eval_checkpoint!r}")
        nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))  # the model's own options
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def validate(config: ml_collections.ConfigDict, n_devices: int) -> None:
    """``ConfigError`` naming the bad value and the allowed ones, before anything is loaded or written."""
    _check_numbers(config)
    _check_devices(config, n_devices)
    _check_choices(config)


def check_data_sizes(config: ml_collections.ConfigDict, n_train: int) -> None:
    """The checks that need the training split's size ``n_train`` (after ``validation_size`` is held out)."""
    if config.batch_size > n_train:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {n_train} training examples")
