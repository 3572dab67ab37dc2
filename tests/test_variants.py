"""The hardware-oriented variants: input encodings, +-1 padding, BN -> offset / frozen-scale BN,
binary classifier, shift conv, IE-Net; and every result-table config builds and trains."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irnet_jax import binarization as bz
from irnet_jax import encoding, models, optim
from irnet_jax import mesh as mesh_lib
from irnet_jax.layers import BinaryConv, BinaryDense, Offset, ShiftBinaryConv, record_layer_calls
from irnet_jax.steps import make_train_step
from irnet_jax.summary import summarize
from irnet_jax.train_state import build_model, create_train_state, model_input_shape

ALL_PIXELS = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)


@pytest.mark.parametrize(
    "name,levels",
    [("thermometer", 1), ("thermometer", 3), ("thermometer", 8), ("bitplanes", 1), ("bitplanes", 4), ("bitplanes", 8)],
)
def test_encoders_output_pm1_with_stated_channels(name, levels):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), np.uint8)
    out = np.asarray(encoding.encode(jnp.asarray(rgb), name, levels))
    assert out.shape == (2, 5, 5, 3 * levels) and set(np.unique(out)) <= {-1.0, 1.0}
    assert encoding.encoded_channels(3, name, levels) == 3 * levels


def test_thermometer_is_monotone_and_uses_its_thresholds():
    levels = 7
    planes = np.asarray(encoding.thermometer(jnp.asarray(ALL_PIXELS), levels)).reshape(256, levels)
    ones = (planes > 0).sum(1)
    assert np.all(np.diff(ones) >= 0) and ones[0] == 0 and ones[-1] == levels  # brighter: never fewer +1
    t = encoding.thermometer_thresholds(levels)
    np.testing.assert_array_equal(ones, (np.arange(256)[:, None] >= t[None]).sum(1))
    assert np.all(planes[:, :-1] >= planes[:, 1:])  # a thermometer: +1 planes come first


def test_bitplanes_are_the_top_bits():
    planes = np.asarray(encoding.bitplanes(jnp.asarray(ALL_PIXELS), 8)).reshape(256, 8)
    bits = (planes > 0).astype(int)
    np.testing.assert_array_equal(bits @ (2 ** np.arange(7, -1, -1)), np.arange(256))
    top3 = (np.asarray(encoding.bitplanes(jnp.asarray(ALL_PIXELS), 3)).reshape(256, 3) > 0).astype(int)
    np.testing.assert_array_equal(top3 @ np.array([4, 2, 1]), np.arange(256) >> 5)


def test_unknown_encoding_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown input_encoding 'gray'; valid: \['none', 'thermometer', 'bitplanes'\]"
    ):
        encoding.encoded_channels(3, "gray", 2)


@pytest.mark.parametrize("k,t", [(1.0, 0.01), (100.0, 0.01), (1.0, 1.0), (0.1, 10.0), (1.0, 3.3)])
def test_ie_backward_matches_numpy_formula(k, t):
    rng = np.random.default_rng(3)
    x = rng.normal(scale=1.5, size=(1000,)).astype(np.float32)
    g = rng.normal(size=(1000,)).astype(np.float32)
    gx, gk, gt = jax.grad(lambda x, k, t: jnp.sum(g * bz.ie_sign(x, k, t)), argnums=(0, 1, 2))(
        jnp.asarray(x), jnp.float32(k), jnp.float32(t)
    )
    expected = g * k * np.maximum(0.0, np.sqrt(3.0) * t - 1.5 * t * t * np.abs(x.astype(np.float64)))
    np.testing.assert_allclose(np.asarray(gx), expected, rtol=2e-5, atol=1e-6)
    assert gk == 0 and gt == 0


def test_ie_schedule():
    for p in (0.0, 0.3, 1.0):
        s = bz.ie_schedule(p)
        t = 10.0 ** (-2 + 3 * p)
        np.testing.assert_allclose([s.k_w, s.t_w, s.k_a, s.t_a], [max(1 / t, 1), t, 1.0, max(t, 1.0)], rtol=1e-5)


def fully_binary(name, shape, **extra):
    return models.create_model(
        name,
        input_shape=shape,
        num_classes=10,
        rngs=nnx.Rngs(0),
        binary_first_layer=True,
        binary_last_layer=True,
        pad_value="checkerboard",
        **extra,
    )


@pytest.mark.parametrize(
    "name,shape",
    [("vgg_small", (32, 32, 24)), ("mnistnet", (28, 28, 2)), ("alexnet", (32, 32, 3)), ("resnet20", (32, 32, 9))],
)
@pytest.mark.parametrize("shift", [False, True])
def test_fully_binary_models_see_only_pm1(name, shape, shift):
    model = fully_binary(name, shape, shift_conv=shift)
    model.eval()
    image = np.random.default_rng(0).integers(0, 256, (2, shape[0], shape[1], 1), np.uint8)
    x = encoding.thermometer(jnp.asarray(image), shape[2])
    with record_layer_calls() as calls:
        model(x)
    assert len(calls) >= 4
    for c in calls:
        assert set(np.unique(np.asarray(c.matmul_input))) <= {-1.0, 1.0}, c.module
    s = summarize(model, shape)
    assert s.float_macs == 0 and s.binary_macs > 0
    if name != "resnet20":  # its option-A shortcuts and global pooling are integer/float ops, not MACs
        assert all(c.module.is_binary for c in calls)


def test_zero_padding_is_seen_by_the_instrumentation():
    model = models.create_model(
        "mnistnet", input_shape=(28, 28, 2), num_classes=10, rngs=nnx.Rngs(0), binary_first_layer=True
    )
    with record_layer_calls() as calls:
        model(encoding.thermometer(jnp.zeros((1, 28, 28, 1), jnp.uint8), 2))
    assert 0.0 in set(np.unique(np.asarray(calls[0].matmul_input)))


def test_norm_variants():
    kw = dict(input_shape=(28, 28, 1), num_classes=10, rngs=nnx.Rngs(0))
    offset = models.create_model("mnistnet", norm="offset", **kw)
    assert all(isinstance(b, Offset) for b in offset.bns)
    assert not nnx.state(offset, nnx.BatchStat)
    frozen = models.create_model("mnistnet", norm="frozen_scale_batchnorm", **kw)
    assert all(b.scale is None and b.bias is not None for b in frozen.bns)
    x = jnp.arange(6.0).reshape(2, 3)
    o = Offset(3)
    o.bias[...] = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(o(x), x + jnp.array([1.0, -2.0, 0.5]))
    with pytest.raises(ValueError, match=r"unknown norm 'layernorm'; valid: \['batchnorm', 'offset'"):
        models.create_model("mnistnet", norm="layernorm", **kw)


def test_shift_conv_is_two_branches_of_one_binary_kernel():
    conv = ShiftBinaryConv(4, 5, 3, learn_second_branch_scale=True, second_branch_scale=0.25, rngs=nnx.Rngs(0))
    conv.shift1[...] = jnp.linspace(-0.3, 0.3, 4)
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 4))
    ede = bz.EstimatorParams.constant()
    wq = conv.quantized_kernel(ede)
    ref = lambda a: jax.lax.conv_general_dilated(
        bz.sign(a), wq, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    expected = ref(x + conv.shift1[...]) + 0.25 * ref(x + conv.shift2[...])
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(conv)
    for name in ("shift1", "shift2", "branch_scale", "kernel"):
        assert np.any(np.asarray(grads[name][...]) != 0), name


def test_binary_classifier_output_scale():
    dense = BinaryDense(64, 10, output_scale="fixed", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 64))
    ede = bz.EstimatorParams.constant()
    raw = bz.sign(x) @ dense.quantized_kernel(ede)
    np.testing.assert_allclose(dense(x), raw / 8.0 + dense.bias[...], rtol=1e-6)
    learned = BinaryDense(64, 10, output_scale="learned", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(learned(x), raw / 8.0 + learned.bias[...], rtol=1e-6)  # alpha starts at 1
    grad = nnx.grad(lambda m: jnp.sum(m(x)))(learned)["output_scale"][...]
    np.testing.assert_allclose(grad, np.sum(np.asarray(raw)) / 8.0, rtol=1e-5)  # O(logits), not O(K)


def test_learned_weight_scale_starts_at_mean_abs_weight():
    conv = BinaryConv(4, 6, 3, weight_scale="learned", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(
        conv.scale[...], np.mean(np.abs(np.asarray(conv.kernel[...])), axis=(0, 1, 2)), rtol=1e-6
    )
    wq = np.asarray(conv.quantized_kernel(bz.EstimatorParams.constant())).reshape(-1, 6)
    np.testing.assert_allclose(np.abs(wq), np.broadcast_to(conv.scale[...], wq.shape), rtol=1e-6)


ROW_CONFIGS = {
    # config: (has binary MACs, every MAC binary)
    "irnet_resnet20_1w1a_cifar10": (True, False),
    "irnet_resnet20_1w32a_cifar10": (False, False),
    "irnet_vgg_small_1w1a_cifar10": (True, False),
    "binary_first_offset_resnet20_cifar10": (True, False),
    "binary_first_offset_fp16_vgg_small_cifar10": (True, False),
    "binary_first_offset_binary_fc_alexnet_cifar10": (True, True),
    "ienet_resnet18_cifar10": (True, False),
    "ienet_resnet20_cifar10": (True, False),
    "ienet_vgg_small_cifar10": (True, False),
    "fully_binary_vgg_small_cifar10": (True, True),
    "fully_binary_shift_vgg_small_cifar10": (True, True),
    "fully_binary_mnistnet_mnist": (True, True),
}


@pytest.mark.parametrize("name", sorted(ROW_CONFIGS))
def test_row_config_builds_trains_and_splits_binary_float(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    has_binary_macs, all_binary = ROW_CONFIGS[name]
    shape = model_input_shape(config)
    s = summarize(build_model(config, nnx.Rngs(0)), shape)
    assert (s.binary_macs > 0) == has_binary_macs
    assert (s.float_macs == 0) == all_binary, (s.binary_macs, s.float_macs)
    if config.binarize_activations and not all_binary:  # the paper's setting: float first and last layers
        assert 0 < s.float_macs < 0.05 * s.binary_macs
    # A few real train steps on a synthetic batch of the dataset's shape: finite loss, parameters move.
    config.batch_size = 8
    mesh = mesh_lib.make_mesh()
    graphdef, state, tx, _ = create_train_state(config, mesh, 10)
    step = make_train_step(graphdef, tx, config, mesh)
    h, w, c = shape[0], shape[1], 1 if "mnist" in name else 3
    rng = np.random.default_rng(0)
    images = mesh_lib.put_replicated(rng.integers(0, 256, (16, h, w, c), np.uint8), mesh)
    labels = mesh_lib.put_replicated(rng.integers(0, 10, (16,), np.int32), mesh)
    before = jax.tree.map(np.asarray, state.params)
    for i in range(3):
        idx = mesh_lib.put_batch(np.arange(8 * (i % 2), 8 * (i % 2) + 8, dtype=np.int32), mesh)
        state, m = step(state, images, labels, idx, optim.estimator_params(config, i, 10), jax.random.key(0))
        assert np.isfinite(float(m.compute()["loss"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
    assert all(jax.tree.leaves(moved))
