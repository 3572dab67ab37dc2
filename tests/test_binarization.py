"""Binarization math: sign rule, estimator gradients vs NumPy references, schedule, Libra-PB."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irnet_jax import binarization as bz
from irnet_jax import sign_conv
from irnet_jax.layers import BinaryConv, BinaryDense, record_layer_calls


def test_sign_maps_zero_to_plus_one_and_never_outputs_zero():
    x = jnp.array([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(bz.sign(x), [-1, -1, 1, 1, 1, 1])
    assert bz.sign(jnp.zeros((), jnp.bfloat16)) == 1
    assert bz.sign(jnp.zeros((), jnp.bfloat16)).dtype == jnp.bfloat16


def _input_grad(estimator, x, k, t, g):
    """d/dx sum(g * estimator(x, k, t)) and the (k, t) gradients."""
    return jax.grad(lambda x, k, t: jnp.sum(g * estimator(x, k, t)), argnums=(0, 1, 2))(x, k, t)


@pytest.mark.parametrize("k,t", [(1.0, 0.1), (10.0, 0.1), (1.0, 1.0), (1.0, 10.0), (1000.0, 1e-3), (2.5, 3.7)])
def test_ede_backward_matches_numpy_formula(k, t):
    rng = np.random.default_rng(0)
    x = rng.normal(scale=2.0, size=(1000,)).astype(np.float32)
    g = rng.normal(size=(1000,)).astype(np.float32)
    gx, gk, gt = _input_grad(bz.ede_sign, jnp.asarray(x), jnp.float32(k), jnp.float32(t), jnp.asarray(g))
    expected = g * k * t * (1.0 - np.tanh(t * x.astype(np.float64)) ** 2)
    np.testing.assert_allclose(np.asarray(gx), expected, rtol=2e-5, atol=1e-6)
    assert gk == 0 and gt == 0
    np.testing.assert_array_equal(bz.ede_sign(jnp.asarray(x), k, t), np.where(x >= 0, 1.0, -1.0))


def test_ede_backward_keeps_relative_precision_far_from_zero():
    """Where ``tanh(t x)`` rounds to +-1 in float32 (|t x| > ~9), ``1 - tanh^2`` would cancel to 0; the
    estimator's gradient keeps its float64 value to float32 precision, and is 0 (not NaN) past exp's range."""
    u = np.concatenate([np.linspace(-40.0, -4.0, 50), np.linspace(4.0, 40.0, 50), [-1e4, 1e4]]).astype(np.float32)
    k, t = 1.0, 10.0
    gx, _, _ = _input_grad(bz.ede_sign, jnp.asarray(u / t), jnp.float32(k), jnp.float32(t), jnp.ones_like(u))
    u64 = (np.float32(t) * (u / np.float32(t))).astype(np.float64)  # t x as the kernel rounds it, in float32
    with np.errstate(over="ignore"):  # cosh(1e4) is inf in float64 too: the expected gradient is 0
        expected = k * t / np.cosh(u64) ** 2
    assert np.all(np.isfinite(np.asarray(gx)))
    np.testing.assert_allclose(np.asarray(gx), expected, rtol=1e-5, atol=0)


def test_ste_backward_is_clipped_identity():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-3, 3, 997), [-1.0, 1.0, 0.0]]).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    gx, gk, gt = _input_grad(bz.ste_sign, jnp.asarray(x), jnp.float32(5.0), jnp.float32(0.3), jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(gx), np.where(np.abs(x) <= 1, g, 0.0))
    assert gk == 0 and gt == 0


def test_estimator_changes_of_k_t_do_not_recompile():
    traces = []

    @jax.jit
    def f(x, k, t):
        traces.append(1)
        return jax.grad(lambda x: jnp.sum(bz.ede_sign(x, k, t) * x))(x)

    x = jnp.linspace(-1, 1, 8)
    outs = [f(x, jnp.float32(k), jnp.float32(t)) for k, t in [(1, 1), (10, 0.1), (1, 10)]]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown estimator 'foo'.*'ede'.*'ste'"):
        bz.get_estimator("foo")


def test_ede_schedule_endpoints_and_k():
    for t_min, t_max in [(1e-3, 10.0), (0.1, 10.0)]:
        p0, p_half, p1 = (bz.ede_schedule(p, t_min, t_max) for p in (0.0, 0.5, 1.0))
        np.testing.assert_allclose(p0.t_w, t_min, rtol=1e-6)
        np.testing.assert_allclose(p1.t_w, t_max, rtol=1e-6)
        np.testing.assert_allclose(p_half.t_a, np.sqrt(t_min * t_max), rtol=1e-5)
        for s in (p0, p_half, p1):
            np.testing.assert_allclose(s.k_w, max(1.0 / float(s.t_w), 1.0), rtol=1e-6)
    assert bz.schedule_progress(step=250, steps_per_epoch=100, total_steps=1000, per_epoch=True) == 0.2
    assert bz.schedule_progress(step=250, steps_per_epoch=100, total_steps=1000, per_epoch=False) == 0.25


@pytest.mark.parametrize("shape,axes", [((3, 3, 16, 8), (0, 1, 2)), ((64, 10), (0,))])
def test_libra_pb_standardizes_and_scales_by_exact_power_of_two(shape, axes):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(0.3, 0.05, size=shape).astype(np.float32))
    w_std = bz.standardize_per_channel(w, axes)
    np.testing.assert_allclose(jnp.mean(w_std, axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(w_std, axes), 1.0, rtol=1e-4)
    one = jnp.float32(1.0)
    wb = np.asarray(bz.libra_pb(w, one, one, reduce_axes=axes))
    magnitudes = np.abs(wb).reshape(-1, shape[-1])
    assert np.all(magnitudes == magnitudes[:1])  # one magnitude per output channel
    exponents = np.log2(magnitudes[0])
    np.testing.assert_array_equal(exponents, np.round(exponents))  # exact power of two
    expected_exp = np.round(np.log2(np.mean(np.abs(np.asarray(w_std)), axis=axes)))
    np.testing.assert_array_equal(exponents, expected_exp)
    np.testing.assert_array_equal(np.sign(wb), np.where(np.asarray(w_std) >= 0, 1, -1))
    unscaled = np.asarray(bz.libra_pb(w, one, one, reduce_axes=axes, scale=False))
    assert set(np.unique(unscaled)) <= {-1.0, 1.0}


def test_libra_pb_constant_channel_is_finite():
    w = jnp.ones((3, 3, 4, 2))
    wb = bz.libra_pb(w, jnp.float32(1), jnp.float32(1), reduce_axes=(0, 1, 2))
    assert np.all(np.isfinite(wb)) and set(np.unique(np.asarray(wb))) == {1.0}
    grad = jax.grad(lambda w: jnp.sum(bz.libra_pb(w, 1.0, 1.0, reduce_axes=(0, 1, 2))))(w)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_binary_conv_and_dense_see_only_pm1_inputs_and_pm_scale_weights(dtype):
    rngs = nnx.Rngs(0)
    conv = BinaryConv(5, 7, 3, dtype=dtype, pad_value="checkerboard", rngs=rngs)
    dense = BinaryDense(7 * 6 * 6, 4, dtype=dtype, rngs=rngs)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 5))
    with record_layer_calls() as calls:
        y = conv(x)
        dense(y.reshape(2, -1))
    assert [type(c.module) for c in calls] == [BinaryConv, BinaryDense]
    for c in calls:
        assert c.matmul_input.dtype == dtype
        assert set(np.unique(np.asarray(c.matmul_input, np.float32))) <= {-1.0, 1.0}
    ede = bz.EstimatorParams.constant()
    for layer in (conv, dense):
        wq = np.asarray(layer.quantized_kernel(ede)).reshape(-1, layer.out_features)
        assert np.all(np.abs(wq) == np.abs(wq[:1]))
        assert np.all(np.log2(np.abs(wq)) == np.round(np.log2(np.abs(wq))))
    assert y.dtype == dtype


@pytest.mark.parametrize(
    "pad_value,border", [("zero", {0.0}), ("one", {1.0}), ("minus_one", {-1.0}), ("checkerboard", {-1.0, 1.0})]
)
def test_padding_values_reach_the_convolution(pad_value, border):
    conv = BinaryConv(2, 3, 3, pad_value=pad_value, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    with record_layer_calls() as calls:
        y = conv(x)
    seen = np.asarray(calls[0].matmul_input)
    assert seen.shape == (1, 6, 6, 2) and y.shape == (1, 4, 4, 3)
    ring = np.concatenate([seen[0, 0].ravel(), seen[0, -1].ravel(), seen[0, :, 0].ravel(), seen[0, :, -1].ravel()])
    assert set(np.unique(ring)) == border
    if pad_value == "checkerboard":  # +1 where row + col is even
        assert seen[0, 0, 0, 0] == 1 and seen[0, 0, 1, 0] == -1 and seen[0, 1, 0, 0] == -1


def test_binary_conv_bad_input_shape_names_expected_shape():
    conv = BinaryConv(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"BinaryConv expects \[B, H, W, 3\].*\(2, 8, 8, 5\)"):
        conv(jnp.zeros((2, 8, 8, 5)))


CONV_CASES = [(3, 1, 1, 5, 0.25), (3, 2, 1, 8, 2.0**-7), (1, 2, 0, 4, 1.0), (5, 1, 2, 3, 4.0), (3, 1, 1, 6, 0.3)]
CONV_CASES += [(3, 2, 1, 37, 0.5), (3, 1, 0, 64, 2.0)]  # two uint32 words, one partly used; no padding
CONV_CASES += [(3, 1, 1, 16, 0.5), (3, 2, 1, 11, 1.0)]  # 2 taps a word: 16 channels (stage 1), 11 (22 bits)


@pytest.mark.parametrize("products", ["int8", "popcount"])
@pytest.mark.parametrize("kernel,strides,pad,c_in,scale", CONV_CASES)
def test_sign_conv_products_are_the_float_conv_forward_and_backward(products, kernel, strides, pad, c_in, scale):
    """int8 and XNOR-popcount products give the float32 conv's numbers (bit for bit with a power-of-two
    scale, within one rounding otherwise), with zero padding, a dead channel and (int8) 0s inside the
    input; the gradient is the float conv's."""
    k = jax.random.split(jax.random.key(kernel * 10 + c_in), 4)
    x = bz.sign(jax.random.normal(k[0], (2, 9, 9, c_in)))
    if products == "int8":  # int8 products also take 0s anywhere (popcount: signs only, 0s of zero padding)
        x = x * (jax.random.uniform(k[1], (2, 9, 9, c_in)) > 0.1)
    channel_scale = scale * jnp.array([1.0, 2.0, 0.0, 0.5])  # channel 2: all weights 0
    w = bz.sign(jax.random.normal(k[2], (kernel, kernel, c_in, 4))) * channel_scale
    g = jax.random.normal(k[3], sign_conv.float_conv(x, w, strides, pad).shape)
    y_float, vjp_float = jax.vjp(lambda a, b: sign_conv.float_conv(a, b, strides, pad), x, w)
    y, vjp = jax.vjp(lambda a, b: sign_conv.PRODUCTS[products](a, b, strides, pad), x, w)
    assert y.dtype == jnp.float32 and np.any(np.asarray(y_float) != 0)
    if np.log2(scale) == np.round(np.log2(scale)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_float))
    else:
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_float), rtol=1e-6, atol=1e-6)
    for a, b in zip(vjp(g), vjp_float(g)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("products", ["int8", "popcount"])
def test_sign_conv_products_any_channel_scale_are_the_exact_sum_rounded_once(products):
    """64 output channels with scales that are no powers of two (a learned weight scale's): each output
    is ``D * s_o`` rounded once, ``D`` the exact integer sum (none of its terms lost to rounding)."""
    k = jax.random.split(jax.random.key(7), 2)
    x = bz.sign(jax.random.normal(k[0], (2, 6, 6, 40)))
    signs = bz.sign(jax.random.normal(k[1], (3, 3, 40, 64)))
    scales = jnp.linspace(0.013, 0.97, 64, dtype=jnp.float32)
    y = np.asarray(jax.jit(lambda a, b: sign_conv.PRODUCTS[products](a, b, 1, 1))(x, signs * scales))
    d = np.asarray(sign_conv.float_conv(x, signs, 1, 1)).astype(np.int64)  # +-1 products: exact
    np.testing.assert_array_equal(y, (d * np.asarray(scales, np.float64)).astype(np.float32))


def test_merge_tap_words_puts_n_taps_in_a_word_at_their_bit_offsets():
    """9 taps of 16 bits -> 5 words (tap t at bits 16 (t % 2)), 9 of 5 bits -> 2 words (6 and 3 taps);
    the XOR-popcount over the merged words is the one over the taps."""
    rng = np.random.default_rng(0)
    for bits, n_words in [(16, 5), (5, 2)]:
        taps = [jnp.asarray(rng.integers(0, 2**bits, (3, 1)), jnp.uint32) for _ in range(9)]
        rows = jnp.asarray(rng.integers(0, 2**bits, (9, 4)), jnp.uint32)
        words, merged = sign_conv.merge_tap_words(taps, rows, bits)
        assert len(words) == n_words and merged.shape == (n_words, 4)
        n = 32 // bits
        np.testing.assert_array_equal(np.asarray(words[1] >> bits & (2**bits - 1)), np.asarray(taps[n + 1]))
        np.testing.assert_array_equal(
            np.asarray(sign_conv.packed_popcount_xor(words, merged)),
            np.asarray(sign_conv.packed_popcount_xor(taps, rows)),
        )
    with pytest.raises(ValueError, match="taps of 17 bits do not share a uint32 word"):
        sign_conv.merge_tap_words(taps, rows, 17)


def test_popcount_sums_bfloat16_and_border_table():
    """The packed sums are those of the int8 conv for bfloat16 signs too, and the border table of a
    3x3 conv with padding 1 is ``sum_c sign(w)`` over the taps outside the image (corner: 5 taps)."""
    k = jax.random.split(jax.random.key(3), 2)
    x = bz.sign(jax.random.normal(k[0], (3, 7, 7, 33))).astype(jnp.bfloat16)
    w = bz.sign(jax.random.normal(k[1], (3, 3, 33, 9)))
    np.testing.assert_array_equal(
        np.asarray(sign_conv.popcount_sums(x, w, 1, 1)), np.asarray(sign_conv.int8_sums(x, w, 1, 1))
    )
    table = np.asarray(sign_conv.border_table(w, (7, 7), 1, 1))
    per_tap = np.asarray(w).sum(axis=2)  # [3, 3, C_out]
    assert table.shape == (7, 7, 9) and not table[3, 3].any()
    np.testing.assert_array_equal(table[0, 0], per_tap[0].sum(0) + per_tap[1:, 0].sum(0))
    np.testing.assert_array_equal(table[6, 3], per_tap[2].sum(0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_popcount_backward_unpacks_the_signs_it_kept_as_bits(dtype):
    """``unpack_signs(pack_signs(x))`` is ``x`` for 1 to 3 words of channels, and the popcount conv's
    gradient, computed from those bits, is the float conv's in ``x``'s dtype (bfloat16 included)."""
    k = jax.random.split(jax.random.key(5), 3)
    for channels in (1, 16, 31, 32, 33, 70):
        x = bz.sign(jax.random.normal(k[0], (2, 5, 5, channels))).astype(dtype)
        words = sign_conv.pack_signs(x)
        assert words.shape == (2, 5, 5, -(-channels // 32)) and words.dtype == jnp.uint32
        back = sign_conv.unpack_signs(words, channels, dtype)
        assert back.dtype == dtype
        np.testing.assert_array_equal(np.asarray(back, np.float32), np.asarray(x, np.float32))
    w = (bz.sign(jax.random.normal(k[1], (3, 3, 70, 4))) * 0.25).astype(dtype)
    g = jax.random.normal(k[2], (2, 3, 3, 4)).astype(dtype)
    _, vjp = jax.vjp(lambda a, b: sign_conv.popcount_sign_conv(a, b, 2, 1), x, w)
    _, vjp_float = jax.vjp(lambda a, b: sign_conv.float_conv(a, b, 2, 1), x, w)
    for a, b in zip(vjp(g), vjp_float(g)):
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("products", ["int8", "popcount"])
@pytest.mark.parametrize("pad_value", ["zero", "checkerboard"])
def test_binary_conv_products_change_no_number(products, pad_value):
    """A BinaryConv with int8 or popcount ``products``: the same output and parameter gradients as float."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    ede = bz.EstimatorParams.constant(1.0, 3.0)

    def run(products):
        conv = BinaryConv(6, 5, 3, strides=2, pad_value=pad_value, products=products, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(conv)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x, ede)))  # noqa: E731
        return jax.value_and_grad(loss)(params)

    (loss_f, grads_f), (loss_i, grads_i) = run("float"), run(products)
    assert loss_f == loss_i
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), grads_f, grads_i)
    with pytest.raises(ValueError, match=f"products='{products}' needs a 1w1a conv"):
        BinaryConv(6, 5, binarize_activations=False, products=products, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown products 'int4'; valid: \['float', 'int8', 'popcount'\]"):
        BinaryConv(6, 5, products="int4", rngs=nnx.Rngs(0))
