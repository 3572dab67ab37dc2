"""What changes with the step: the learning-rate schedule, the optimizer, and the EDE ``(k, t)``.

Every one of them is a pure function of the integer step (and the config), so a checkpoint of the
step resumes a run exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections
import numpy as np
import optax

from irnet_jax import binarization as bz

OPTIMIZERS = ("sgd", "adam", "adamw")


class Optimizer(NamedTuple):
    """The optax transformation and the learning-rate schedule it follows (for logging)."""

    tx: optax.GradientTransformation
    learning_rate: optax.Schedule


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0 at ``num_epochs``:

        lr(s) = lr0 * s / W                                   for s < W
        lr(s) = lr0 * (1 + cos(pi * (s - W) / (T - W))) / 2   for W <= s <= T

    with ``W = warmup_epochs * steps_per_epoch``, ``T = num_epochs * steps_per_epoch``. With
    ``lr_per_epoch`` the schedule is evaluated at the start of the current epoch (IR-Net steps its
    cosine once per epoch).
    """
    total = max(int(config.num_epochs * steps_per_epoch), 1)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    base = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total, warmup + 1), 0.0)
    if warmup == 0:
        base = optax.cosine_decay_schedule(config.learning_rate, total)
    if not config.lr_per_epoch:
        return base
    return lambda step: base((step // steps_per_epoch) * steps_per_epoch)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum (IR-Net; weight decay added to the gradient as in PyTorch), Adam (same L2), or AdamW."""
    if config.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    elif config.optimizer == "adam":
        opt = optax.adam(schedule)
    elif config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {list(OPTIMIZERS)}")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Optimizer:
    """The configured optimizer over a run of ``steps_per_epoch`` steps per epoch."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    return Optimizer(make_optimizer(config, schedule), schedule)


def estimator_params(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> bz.EstimatorParams:
    """The estimator's ``(k, t)`` at ``step`` (host-side float32 scalars, fed to the jitted step)."""
    total = int(config.num_epochs * steps_per_epoch)
    p = bz.schedule_progress(step, steps_per_epoch, total, config.ede_per_epoch)
    return bz.estimator_schedule(config.estimator, p, config.t_min, config.t_max)


def stack_estimator_params(params: list[bz.EstimatorParams]) -> bz.EstimatorParams:
    """Per-step ``(k, t)`` scalars stacked into ``[S]`` float32 arrays (host-side), for ``make_multi_step``."""
    return bz.EstimatorParams(*(np.asarray(field, np.float32) for field in zip(*params, strict=True)))


def estimator_params_of_steps(
    config: ml_collections.ConfigDict, first: int, count: int, steps_per_epoch: int
) -> bz.EstimatorParams:
    """``(k, t)`` of steps ``first .. first + count - 1`` as ``[count]`` arrays."""
    return stack_estimator_params([estimator_params(config, s, steps_per_epoch) for s in range(first, first + count)])


def validate(config: ml_collections.ConfigDict) -> None:
    """``ValueError`` naming the value and the allowed ones for the optimizer and estimator fields."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {list(OPTIMIZERS)}")
    bz.get_estimator(config.estimator)
