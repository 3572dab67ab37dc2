"""Binarization math of IR-Net: the sign rule, gradient estimators, their schedule, Libra-PB.

Every function here is pure and works on arrays of any shape.

* ``sign(x) = +1 if x >= 0 else -1`` (never 0; the rule of binary hardware and ONNX/QONNX).
* An *estimator* is ``f(x, k, t) -> sign(x)`` whose backward pass is a surrogate gradient.
  ``k`` and ``t`` are ordinary (scalar or broadcastable) array arguments with zero cotangent, so a
  schedule can change them every step without recompiling the step.

  ========  =====================================================  ============================
  name      backward ``d sign(x) / dx``                            paper
  ========  =====================================================  ============================
  ``ede``   ``k * t * (1 - tanh(t x)^2)``                          IR-Net (Error Decay Estimator)
  ``ste``   ``1{|x| <= 1}`` (k, t ignored)                         BinaryNet (clipped identity)
  ``ie``    ``k * max(0, sqrt(3) t - 1.5 t^2 |x|)``                IE-Net (Information Enhancement)
  ========  =====================================================  ============================

* The EDE schedule, ``p`` = training progress in [0, 1]:
  ``t = T_min * 10**(p * log10(T_max / T_min))``, ``k = max(1/t, 1)``.
* The IE-Net schedule: weights ``t = T_min * 10**(p * log10(T_max / T_min))`` (IE-Net: ``10**(-2 + 3p)``,
  i.e. ``T_min = 0.01``, ``T_max = 10``), ``k = max(1/t, 1)``; activations ``k = 1``, ``t = max(t, 1)``.
* Libra Parameter Binarization of a weight tensor, per output channel ``o``:
  ``w_std = (w - mean_o(w)) / std_o(w)``, ``Q(w) = estimator(w_std) * 2**round(log2(mean_o|w_std|))``
  with the power-of-two scale under ``stop_gradient`` (a bit shift on hardware).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Estimator = Callable[[Array, Array, Array], Array]


def sign(x: Array) -> Array:
    """``+1`` where ``x >= 0``, ``-1`` where ``x < 0``, in ``x.dtype``. ``sign(0) == +1``."""
    return jnp.where(x >= 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype))


def _zero_cotangent(a: Array) -> Array:
    return jnp.zeros_like(a)


@jax.custom_vjp
def ede_sign(x: Array, k: Array, t: Array) -> Array:
    """Error Decay Estimator. Forward ``sign(x)``; backward ``g * k * t * (1 - tanh(t*x)^2)``."""
    return sign(x)


def _ede_fwd(x, k, t):
    return sign(x), (x, k, t)


def _ede_bwd(res, g):
    x, k, t = res
    # 1 - tanh(u)^2 == 4 e / (1 + e)^2 with e = exp(-2|u|): one exp, no cancellation for large |u|.
    e = jnp.exp(-2.0 * jnp.abs(t * x.astype(jnp.float32)))
    grad = (4.0 * k * t) * e / jnp.square(1.0 + e)
    return (g * grad.astype(g.dtype), _zero_cotangent(k), _zero_cotangent(t))


ede_sign.defvjp(_ede_fwd, _ede_bwd)


@jax.custom_vjp
def ste_sign(x: Array, k: Array, t: Array) -> Array:
    """Straight-through estimator (BinaryNet). Forward ``sign(x)``; backward ``g * 1{|x| <= 1}``.

    ``k`` and ``t`` are accepted for a uniform estimator signature and ignored.
    """
    return sign(x)


def _ste_fwd(x, k, t):
    return sign(x), (x, k, t)


def _ste_bwd(res, g):
    x, k, t = res
    return (jnp.where(jnp.abs(x) <= 1, g, jnp.zeros_like(g)), _zero_cotangent(k), _zero_cotangent(t))


ste_sign.defvjp(_ste_fwd, _ste_bwd)


@jax.custom_vjp
def ie_sign(x: Array, k: Array, t: Array) -> Array:
    """Information Enhancement Estimator (IE-Net). Forward ``sign(x)``; backward
    ``g * k * max(0, sqrt(3) t - 1.5 t^2 |x|)`` (a triangle of area 2k around 0)."""
    return sign(x)


def _ie_fwd(x, k, t):
    return sign(x), (x, k, t)


def _ie_bwd(res, g):
    x, k, t = res
    grad = k * jnp.maximum(0.0, math.sqrt(3.0) * t - 1.5 * t * t * jnp.abs(x.astype(jnp.float32)))
    return (g * grad.astype(g.dtype), _zero_cotangent(k), _zero_cotangent(t))


ie_sign.defvjp(_ie_fwd, _ie_bwd)


ESTIMATORS: dict[str, Estimator] = {"ede": ede_sign, "ste": ste_sign, "ie": ie_sign}


def get_estimator(name: str) -> Estimator:
    """The estimator registered under ``name``; a ``ValueError`` listing the valid names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; valid: {sorted(ESTIMATORS)}") from None


class EstimatorParams(NamedTuple):
    """The estimator's ``(k, t)`` for weights and for activations: float32 scalars (traced in jit)."""

    k_w: Array
    t_w: Array
    k_a: Array
    t_a: Array

    @classmethod
    def constant(cls, k: float = 1.0, t: float = 1.0) -> EstimatorParams:
        """The same ``(k, t)`` for weights and activations (e.g. at evaluation, where it is unused)."""
        k_, t_ = jnp.float32(k), jnp.float32(t)
        return cls(k_, t_, k_, t_)


def ede_t(progress: float, t_min: float, t_max: float) -> np.float32:
    """``t = T_min * 10**(p * log10(T_max / T_min))`` with ``p`` clipped to [0, 1] (host-side NumPy)."""
    p = min(max(float(progress), 0.0), 1.0)
    return np.float32(t_min * 10.0 ** (p * math.log10(t_max / t_min)))


def ede_schedule(progress: float, t_min: float, t_max: float) -> EstimatorParams:
    """IR-Net's schedule, shared by weights and activations: ``t`` as in :func:`ede_t`, ``k = max(1/t, 1)``."""
    t = ede_t(progress, t_min, t_max)
    k = np.float32(max(1.0 / t, 1.0))
    return EstimatorParams(k, t, k, t)


def ie_schedule(progress: float, t_min: float = 0.01, t_max: float = 10.0) -> EstimatorParams:
    """IE-Net's schedule: weights ``(max(1/t, 1), t)``, activations ``(1, max(t, 1))``."""
    t = ede_t(progress, t_min, t_max)
    return EstimatorParams(np.float32(max(1.0 / t, 1.0)), t, np.float32(1.0), np.float32(max(t, 1.0)))


def estimator_schedule(estimator: str, progress: float, t_min: float, t_max: float) -> EstimatorParams:
    """The ``(k, t)`` schedule that goes with ``estimator``: EDE's for ``ede`` (and ``ste``, which ignores
    it), IE-Net's for ``ie``. Computed on the host (NumPy float32 scalars), fed to the jitted step."""
    get_estimator(estimator)
    return ie_schedule(progress, t_min, t_max) if estimator == "ie" else ede_schedule(progress, t_min, t_max)


def schedule_progress(step: int, steps_per_epoch: int, total_steps: int, per_epoch: bool) -> float:
    """Training progress ``p`` in [0, 1]: ``epoch / num_epochs`` (official IR-Net) or ``step / total``."""
    if per_epoch:
        num_epochs = max(total_steps // steps_per_epoch, 1)
        return min((step // steps_per_epoch) / num_epochs, 1.0)
    return min(step / max(total_steps, 1), 1.0)


def standardize_per_channel(w: Array, reduce_axes: Sequence[int], eps: float = 1e-12) -> Array:
    """``(w - mean) / std`` over ``reduce_axes`` (population std); a constant channel maps to 0."""
    centred = w - jnp.mean(w, axis=reduce_axes, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=reduce_axes, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps)


def power_of_two_scale(w_std: Array, reduce_axes: Sequence[int]) -> Array:
    """``2**round(log2(mean|w_std|))`` per channel, under ``stop_gradient``; 1 for an all-zero channel."""
    mean_abs = jnp.mean(jnp.abs(w_std), axis=reduce_axes, keepdims=True)
    safe = jnp.where(mean_abs > 0, mean_abs, 1.0)
    return jax.lax.stop_gradient(jnp.exp2(jnp.round(jnp.log2(safe))))


def libra_pb(
    w: Array,
    k: Array,
    t: Array,
    *,
    reduce_axes: Sequence[int],
    estimator: Estimator = ede_sign,
    scale: bool = True,
) -> Array:
    """Libra Parameter Binarization: ``estimator(w_std, k, t) * 2**round(log2(mean|w_std|))``.

    ``w`` is a latent float kernel, e.g. ``[kh, kw, c_in, c_out]`` with ``reduce_axes=(0, 1, 2)``
    (statistics per output channel) or ``[c_in, c_out]`` with ``reduce_axes=(0,)``. Returns a tensor
    of ``w``'s shape whose values are ``+-2**n`` (``n`` per output channel; ``+-1`` when ``scale`` is off).
    """
    w_std = standardize_per_channel(w, reduce_axes)
    w_bin = estimator(w_std, k, t)
    if scale:
        w_bin = w_bin * power_of_two_scale(w_std, reduce_axes)
    return w_bin
