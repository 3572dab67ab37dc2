"""The EDE backward ``g * k * t * (1 - tanh(t x)^2)`` written three ways, timed side by side in one run:

    ``one_exp``: ``4 k t e / (1 + e)^2`` with ``e = exp(-2 |t x|)``   (binarization.ede_sign's backward, called)
    ``cosh``:    ``k t / cosh(t x)^2``                                 (its form before: XLA's cosh is 2 exps)
    ``tanh``:    ``k t (1 - tanh(t x)^2)``                             (the official code's; cancels to 0
                                                                       once tanh rounds to +-1, |t x| > ~9)

on ``x, g``: Gaussian ``[B, H, W, C]`` float32 (a binary conv's input and its output gradient). Prints,
per shape, one JSON line: ms per call (the best of ``--rounds`` interleaved rounds) and each form's
largest relative error against float64 where the float64 gradient is above 1e-30 (``tanh``'s is 1: the
cancellation).

    PYTHONPATH=. python bench/ede_backward_forms.py [--shapes 64x32x32x16] [--t 3.0] [--calls 50]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.int8_conv import ms_per_call
from irnet_jax.binarization import ede_sign


def one_exp(g, x, k, t):
    """The library's own backward (``ede_sign``'s ``custom_vjp``); its unused forward is dead code."""
    return jax.vjp(lambda x_: ede_sign(x_, k, t), x)[1](g)[0]


def cosh(g, x, k, t):
    return g * (k * t * jnp.square(1.0 / jnp.cosh(t * x)))


def tanh(g, x, k, t):
    return g * (k * t * (1.0 - jnp.square(jnp.tanh(t * x))))


FORMS = {"one_exp": one_exp, "cosh": cosh, "tanh": tanh}


def max_relative_error(got: np.ndarray, g: np.ndarray, x: np.ndarray, k: float, t: float) -> float:
    """``max |got - exact| / |exact|`` over the elements whose float64 gradient exceeds 1e-30."""
    u = t * x.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = g * k * t / np.cosh(u) ** 2
    keep = np.abs(exact) > 1e-30
    return float(np.max(np.abs(got[keep] - exact[keep]) / np.abs(exact[keep])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="64x32x32x16,64x16x16x32,64x8x8x64")
    parser.add_argument("--k", type=float, default=1.0)
    parser.add_argument("--t", type=float, default=3.0)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    k, t = jnp.float32(args.k), jnp.float32(args.t)
    for shape in args.shapes.split(","):
        dims = tuple(int(v) for v in shape.split("x"))
        x, g = (rng.standard_normal(dims).astype(np.float32) for _ in range(2))
        fns = {name: jax.jit(f) for name, f in FORMS.items()}
        errors = {
            f"{name}_max_rel_error": max_relative_error(np.asarray(fn(g, x, k, t)), g, x, args.k, args.t)
            for name, fn in fns.items()
        }
        times = {name: [] for name in fns}
        xj, gj = jnp.asarray(x), jnp.asarray(g)
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(ms_per_call(lambda x_, g_, fn=fn: fn(g_, x_, k, t), xj, gj, args.calls))
        row = {"shape": shape, "k": args.k, "t": args.t, "backend": jax.default_backend()}
        row.update({f"{name}_ms": round(min(v), 3) for name, v in times.items()})
        row.update({name: float(f"{err:.3g}") for name, err in errors.items()})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
