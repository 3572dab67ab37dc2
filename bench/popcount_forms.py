"""Six ways to write the XNOR-popcount sums of one 3x3 conv (stride 1, zero padding 1), timed side by
side in one run: ``sign_conv.popcount_sums`` (one elementwise term per tap and word, packed weights
word-major ``[words, C_out]``, taps of <= 16 channels sharing words), the same with one tap a word
(as before 30364bf), with the packed weights made ``[C_out, words]`` and transposed inside the jit, a
reduction over a ``[..., words, C_out]`` axis, and two forms meant for CPUs without a vector popcount
instruction (AVX2 only): per-byte counts by bit tricks on the uint32 words, summed over up to 31 words
before one horizontal byte sum ("SWAR"), and ``population_count`` on the words' bytes (uint8 lanes)
summed in uint8 over up to 31 bytes. All six must give the int8 conv's sums. ms per call on this
backend, the best of ``--rounds`` interleaved rounds (the first timed call of a process runs slow); one
JSON line per shape.

    PYTHONPATH=. python bench/popcount_forms.py [--shapes 128x32x16,64x32x128] [--calls 5]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.int8_conv import ms_per_call
from irnet_jax import sign_conv


def _packed(x, w):
    """Padded packed input ``[B, H+2, W+2, Wd]`` and packed weights ``[kh, kw, Wd, C_out]``."""
    a = jnp.pad(sign_conv.pack_bits_u32(x > 0), ((0, 0), (1, 1), (1, 1), (0, 0)))
    b = jnp.moveaxis(sign_conv.pack_bits_u32(jnp.moveaxis(w > 0, 2, 3)), 3, 2)
    return a, b


def _with_taps(x, w, popcount_xor):
    """The sums with ``popcount_xor(taps, rows)`` over one tap a word (the taps never merged)."""
    a, b = _packed(x, w)
    p = popcount_xor(sign_conv.packed_taps(a, 3, 3, 1), b.reshape(-1, w.shape[3]))
    return 9 * w.shape[2] - 2 * p + sign_conv.border_table(w, x.shape[1:3], 1, 1)


def one_tap_a_word(x, w):
    return _with_taps(x, w, sign_conv.packed_popcount_xor)


def transposed_weights(x, w):
    a, _ = _packed(x, w)
    rows = sign_conv.pack_bits_u32(jnp.moveaxis(w > 0, 3, 0)).reshape(w.shape[3], -1)  # [C_out, words]
    p = sign_conv.packed_popcount_xor(sign_conv.packed_taps(a, 3, 3, 1), rows.T)
    return 9 * w.shape[2] - 2 * p + sign_conv.border_table(w, x.shape[1:3], 1, 1)


def word_axis_reduction(x, w):
    a, b = _packed(x, w)
    taps = jnp.concatenate(sign_conv.packed_taps(a, 3, 3, 1), axis=-1)  # [B, H, W, 9 Wd]
    p = jnp.sum(jax.lax.population_count(taps[..., :, None] ^ b.reshape(-1, w.shape[3])).astype(jnp.int32), -2)
    return 9 * w.shape[2] - 2 * p + sign_conv.border_table(w, x.shape[1:3], 1, 1)


M1, M2, M4, M8 = (np.uint32(v) for v in (0x55555555, 0x33333333, 0x0F0F0F0F, 0x00FF00FF))
MAX_BYTE_TERMS = 31  # 31 counts of <= 8 fit a byte


def _byte_counts(x):
    """uint32 -> the popcount of each of its 4 bytes, in that byte."""
    x = x - ((x >> 1) & M1)
    x = (x & M2) + ((x >> 2) & M2)
    return (x + (x >> 4)) & M4


def _byte_sum(acc):
    """uint32 of 4 byte counts -> their sum (int32)."""
    acc = (acc & M8) + ((acc >> 8) & M8)
    return ((acc + (acc >> 16)) & np.uint32(0xFFFF)).astype(jnp.int32)


def _grouped_sum(terms, count, finish):
    """``sum_g finish(sum of the terms of group g)``, groups of ``MAX_BYTE_TERMS`` terms."""
    total = 0
    for start in range(0, len(terms), MAX_BYTE_TERMS):
        group = [count(t) for t in terms[start : start + MAX_BYTE_TERMS]]
        total = total + finish(sum(group[1:], group[0]))
    return total


def swar_byte_counts(x, w):
    def popcount_xor(parts, words_major):
        words = [part[..., j : j + 1] for part in parts for j in range(part.shape[-1])]
        return _grouped_sum([a ^ words_major[i] for i, a in enumerate(words)], _byte_counts, _byte_sum)

    return _with_taps(x, w, popcount_xor)


def uint8_lanes(x, w):
    def as_bytes(words):
        return jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*words.shape[:-1], -1)

    def popcount_xor(parts, words_major):
        rows = as_bytes(words_major.T).T  # [4 words (their bytes), C_out] uint8
        words = [part[..., j : j + 1] for part in map(as_bytes, parts) for j in range(part.shape[-1])]
        terms = [a ^ rows[i] for i, a in enumerate(words)]
        return _grouped_sum(terms, jax.lax.population_count, lambda acc: acc.astype(jnp.int32))

    return _with_taps(x, w, popcount_xor)


FORMS = {
    "per_word_terms_ms": lambda x, w: sign_conv.popcount_sums(x, w, 1, 1),
    "one_tap_a_word_ms": one_tap_a_word,
    "transposed_weights_ms": transposed_weights,
    "word_axis_reduction_ms": word_axis_reduction,
    "swar_byte_counts_ms": swar_byte_counts,
    "uint8_lanes_ms": uint8_lanes,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="128x32x16,64x32x128")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, side, channels = (int(v) for v in shape.split("x"))
        x = jnp.asarray(np.where(rng.standard_normal((batch, side, side, channels)) >= 0, 1.0, -1.0), jnp.float32)
        w = jnp.asarray(np.where(rng.standard_normal((3, 3, channels, channels)) >= 0, 1.0, -1.0), jnp.float32)
        reference = np.asarray(sign_conv.int8_sums(x, w, 1, 1))
        fns = {name: jax.jit(form) for name, form in FORMS.items()}
        for name, fn in fns.items():
            assert np.array_equal(np.asarray(fn(x, w)), reference), name
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(ms_per_call(fn, x, w, args.calls))
        row = {"shape": shape, "backend": jax.default_backend(), **{k: round(min(v), 2) for k, v in times.items()}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
