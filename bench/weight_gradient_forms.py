"""The weight gradient of one 3x3 conv (stride 1, zero padding 1) written three ways, timed side by side
in one run, beside the forward conv and the input gradient:

    dW[dh, dw, c, o] = sum_{n, h, w} xpad[n, h + dh, w + dw, c] * g[n, h, w, o]

``conv``: ``jax.vjp`` of ``lax.conv_general_dilated`` in the weights (what the train step's backward
does; XLA:CPU lays its operands out as ``[C, H, W, N]`` / ``[H, W, N, C]`` copies), ``taps``: one
``dot_general`` per tap over the shifted slice ``[N, H, W, C]`` of the padded input, contracting
``N, H, W``; ``patches``: the 9 slices concatenated to ``[N, H, W, 9 C]`` and one ``dot_general``. The
three must agree within float32 summation order. ``bf16_conv_ms`` times ``conv`` with ``x, g, w`` in
bfloat16 (exact for the signs, not for ``g``), whether a CPU's bfloat16 units (AMX, AVX512_BF16) would
pay for a split-precision form; not compared. ``x`` holds signs (a binary conv's input), ``g`` is
Gaussian. ms per call, the best of ``--rounds`` interleaved rounds; one JSON line per shape.

    PYTHONPATH=. python bench/weight_gradient_forms.py [--shapes 64x32x16,64x16x32] [--calls 5]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.int8_conv import ms_per_call
from irnet_jax.sign_conv import float_conv

CONTRACT_NHW = (((0, 1, 2), (0, 1, 2)), ((), ()))


def shifted_slices(x):
    """The 9 taps ``xpad[:, dh : dh + H, dw : dw + W, :]`` of the zero-padded ``x``, row-major."""
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, dh : dh + h, dw : dw + w, :] for dh in range(3) for dw in range(3)]


def conv_vjp(x, g, w):
    return jax.vjp(lambda w_: float_conv(x, w_, 1, 1), w)[1](g)[0]


def taps(x, g, w):
    return jnp.stack([jax.lax.dot_general(s, g, CONTRACT_NHW) for s in shifted_slices(x)]).reshape(w.shape)


def patches(x, g, w):
    return jax.lax.dot_general(jnp.concatenate(shifted_slices(x), axis=-1), g, CONTRACT_NHW).reshape(w.shape)


WEIGHT_GRADIENTS = {"conv_ms": conv_vjp, "taps_ms": taps, "patches_ms": patches}
OTHERS = {
    "forward_ms": lambda x, g, w: float_conv(x, w, 1, 1),
    "input_gradient_ms": lambda x, g, w: jax.vjp(lambda x_: float_conv(x_, w, 1, 1), x)[1](g)[0],
    "bf16_conv_ms": lambda x, g, w: conv_vjp(*(a.astype(jnp.bfloat16) for a in (x, g, w))),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="64x32x16,64x16x32,64x8x64,32x32x128")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, side, channels = (int(v) for v in shape.split("x"))
        x = jnp.asarray(np.where(rng.standard_normal((batch, side, side, channels)) >= 0, 1.0, -1.0), jnp.float32)
        g = jnp.asarray(rng.standard_normal((batch, side, side, channels)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, channels, channels)), jnp.float32)
        fns = {name: jax.jit(f) for name, f in {**WEIGHT_GRADIENTS, **OTHERS}.items()}
        reference = np.asarray(fns["conv_ms"](x, g, w))
        scale = float(np.max(np.abs(reference)))
        for name in WEIGHT_GRADIENTS:
            np.testing.assert_allclose(np.asarray(fns[name](x, g, w)), reference, atol=1e-5 * scale, err_msg=name)
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(ms_per_call(lambda x_, w_, fn=fn, g=g: fn(x_, g, w_), x, w, args.calls))
        row = {"shape": shape, "backend": jax.default_backend(), **{k: round(min(v), 2) for k, v in times.items()}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
