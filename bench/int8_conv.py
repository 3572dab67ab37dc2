"""One 3x3 conv of +-1 inputs and +-1 weights in float32, bfloat16 (float32 sums), int8 (int32 sums) and
by XNOR-popcount of packed sign bits (``sign_conv.popcount_sums``, the packing included): ms per call on
this backend, and that all four give the same numbers. It measures which products pay
(``runtime.CPU_BINARY_CONV_PRODUCTS``).

    PYTHONPATH=. python bench/int8_conv.py [--shapes 256x16x256,128x32x128,256x32x16] [--calls 5]

A shape is ``BATCHxSIDExCHANNELS`` (``C_in = C_out``, stride 1, zero padding 1). One JSON line per shape.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from irnet_jax import sign_conv


def conv_in(dtype, sums_dtype):
    def run(x, w):
        return jax.lax.conv_general_dilated(
            x.astype(dtype),
            w.astype(dtype),
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=sign_conv.DIMENSIONS,
            preferred_element_type=sums_dtype,
        )

    return jax.jit(run)


VARIANTS = {
    "float32": conv_in(jnp.float32, jnp.float32),
    "bfloat16": conv_in(jnp.bfloat16, jnp.float32),
    "int8": conv_in(jnp.int8, jnp.int32),
    "popcount": jax.jit(lambda x, w: sign_conv.popcount_sums(x, w, 1, 1)),
}


def ms_per_call(fn, x, w, calls: int) -> float:
    fn(x, w).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        y = fn(x, w)
    y.block_until_ready()
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="256x16x256,128x32x128,128x8x512,256x8x64,256x16x32,256x32x16")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, side, channels = (int(v) for v in shape.split("x"))
        x = jnp.asarray(np.sign(rng.standard_normal((batch, side, side, channels))), jnp.float32)
        w = jnp.asarray(np.sign(rng.standard_normal((3, 3, channels, channels))), jnp.float32)
        reference = np.asarray(VARIANTS["float32"](x, w))
        row = {"shape": shape, "backend": jax.default_backend()}
        for name, fn in VARIANTS.items():
            assert np.array_equal(np.asarray(fn(x, w), np.float32), reference), name
            row[f"{name}_ms"] = round(ms_per_call(fn, x, w, args.calls), 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
