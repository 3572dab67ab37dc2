"""Every topology x dataset: shapes, finite forward/backward in float32 and bfloat16, gradients
reach every parameter, parameter counts derived by hand, and the summary's accounting."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irnet_jax import models, runtime
from irnet_jax.binarization import EstimatorParams
from irnet_jax.layers import BinaryConv, max_pool
from irnet_jax.summary import summarize

SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1)}


def conv(c_in, c_out, k=3):
    return k * k * c_in * c_out


def bn(c):
    return 2 * c


def dense(c_in, c_out):
    return c_in * c_out + c_out


def expected_params(name, h, c):
    """Parameter counts derived by hand from each topology's definition."""
    if name == "vgg_small":
        w = [128, 128, 256, 256, 512, 512]
        ins = [c] + w[:-1]
        side = h // 8
        return sum(conv(i, o) + bn(o) for i, o in zip(ins, w)) + dense(512 * side * side, 10)
    if name == "alexnet":
        spec = [(c, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
        return sum(conv(i, o, k) + bn(o) for i, o, k in spec) + dense(256 * 1 * 1, 10)
    if name == "mnistnet":
        spec = [(c, 32), (32, 64), (64, 128)]
        return sum(conv(i, o) + bn(o) for i, o in spec) + dense(128 * (h // 8) ** 2, 10)
    if name == "resnet20":
        stem = conv(c, 16) + bn(16)
        blocks = 6 * (conv(16, 16) + bn(16))
        blocks += conv(16, 32) + bn(32) + 5 * (conv(32, 32) + bn(32))
        blocks += conv(32, 64) + bn(64) + 5 * (conv(64, 64) + bn(64))
        return stem + blocks + bn(64) + dense(64, 10)  # option-A shortcuts have no parameters
    if name == "resnet18":
        total, c_in = conv(c, 64) + bn(64), 64
        for c_out in (64, 128, 256, 512):
            for _ in range(2):
                total += conv(c_in, c_out) + bn(c_out) + conv(c_out, c_out) + bn(c_out)
                if c_in != c_out:
                    total += conv(c_in, c_out, 1) + bn(c_out)  # option-B shortcut
                c_in = c_out
        return total + dense(512, 10)
    raise AssertionError(f"no hand count for {name}")


def test_registry_lists_every_topology():
    assert models.list_models() == ["alexnet", "mnistnet", "resnet18", "resnet20", "vgg_small"]
    assert models.list_models("resnet*") == ["resnet18", "resnet20"]


def test_unknown_model_and_option_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vgg7'.*'vgg_small'"):
        models.create_model("vgg7", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"unknown model option\(s\) \['halfprec'\] for 'vgg_small'.*'dtype'.*'widths'"
    ):
        models.create_model("vgg_small", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), halfprec=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
@pytest.mark.parametrize("name", ["vgg_small", "alexnet", "resnet20", "resnet18", "mnistnet"])
def test_forward_backward(name, dataset, dtype):
    shape = SHAPES[dataset]
    model = models.create_model(name, input_shape=shape, num_classes=10, rngs=nnx.Rngs(0), dtype=dtype)
    params = nnx.state(model, nnx.Param)
    n_params = sum(int(v.size) for v in jax.tree.leaves(params))
    assert n_params == expected_params(name, shape[0], shape[2])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    labels = jnp.arange(4) % 10

    @jax.jit
    def loss_and_grad(params, rest):
        def loss_fn(params, rest):
            logits = nnx.merge(graphdef, params, rest, copy=True)(x)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32))
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params, rest)

    (loss, logits), grads = loss_and_grad(params, rest)
    assert logits.shape == (4, 10) and logits.dtype == dtype
    assert np.isfinite(float(loss))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g, np.float32)
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_1w32a_and_full_precision_options():
    kw = dict(input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))
    s = summarize(models.create_model("resnet20", binarize_activations=False, **kw), (32, 32, 3))
    assert s.binary_macs == 0 and s.binary_params == 267264  # 1-bit weights, float inputs
    s = summarize(models.create_model("resnet20", binary=False, **kw), (32, 32, 3))
    assert s.binary_params == 0 and s.float_params == 269850
    s = summarize(models.create_model("vgg_small", binary_first_layer=True, binary_last_layer=True, **kw), (32, 32, 3))
    assert s.float_macs == 0
    basic = models.create_model("resnet20", block="basic", **kw)
    assert type(basic.blocks[0]).__name__ == "BasicBlock"
    assert summarize(basic, (32, 32, 3)).binary_params == 267264


def test_summary_accounts_for_vgg_small_by_hand():
    model = models.create_model("vgg_small", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))
    s = summarize(model, (32, 32, 3))
    binary = [(128, 128, 32), (128, 256, 16), (256, 256, 16), (256, 512, 8), (512, 512, 8)]
    assert s.binary_macs == sum(9 * i * o * side * side for i, o, side in binary)
    assert s.float_macs == 9 * 3 * 128 * 32 * 32 + 8192 * 10
    assert s.binary_params == sum(9 * i * o for i, o, _ in binary)
    assert s.binary_params + s.float_params == expected_params("vgg_small", 32, 3)
    assert s.size_bits == s.binary_params + 32 * s.float_params
    # A model whose eval mode is integer arithmetic is summarized as the float layers it trains
    integer = models.create_model(
        "vgg_small", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), integer_first_layer=True, **STATS
    )
    assert summarize(integer, (32, 32, 3)) == s
    resnet = dict(input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))
    fixed = models.create_model("resnet20", residual_frac_bits=16, **STATS, **resnet)
    assert summarize(fixed, (32, 32, 3)) == summarize(models.create_model("resnet20", **resnet), (32, 32, 3))


def _max_convs_read_by_one_fusion(hlo: str) -> int:
    """In optimized HLO text: the most convolution results that one non-convolution fusion of the
    entry computation reads (1 when each block's output is stored; it grows with depth when XLA
    recomputes the residual chain inside every fusion)."""
    bodies = dict(re.findall(r"^(?:ENTRY )?%?(\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    entry = hlo[hlo.index("\nENTRY") :]
    convs, worst = set(), 0
    for name, op, rest in re.findall(r"^\s*%(\S+) = \S+ (\w[\w-]*)\((.*)$", entry, re.M):
        called = re.search(r"calls=%(\S+?)[,\s]", rest)
        body = bodies.get(called.group(1), "") if called else ""
        if op == "convolution" or "convolution(" in body:
            convs.add(name)
        elif op == "fusion":
            operands = re.findall(r"%([\w.-]+)", rest.split(")")[0])
            worst = max(worst, sum(o in convs for o in operands))
    return worst


@pytest.mark.parametrize("block", ["bireal", "basic"])
def test_materialized_residual_stream_is_not_recomputed(block):
    """``materialize_residuals`` (the trainer's CPU default) stores each block output once: with it
    no fusion of the compiled eval forward reads more than one conv result; without it XLA:CPU
    re-derives the chain of earlier blocks in each fusion. Outputs agree either way."""
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    outputs, worst = {}, {}
    for on in (True, False):
        model = models.create_model(
            "resnet20", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), block=block, materialize_residuals=on
        )
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(
            lambda s, x: nnx.merge(graphdef, s)(x),  # noqa: B023 (compiled in this iteration)
            compiler_options=runtime.KEEP_BARRIERS,
        )
        compiled = forward.lower(state, x).compile()
        worst[on] = _max_convs_read_by_one_fusion(compiled.as_text())
        outputs[on] = np.asarray(compiled(state, x))
    assert worst[True] == 1, worst
    if jax.default_backend() == "cpu":
        assert worst[False] >= 3, worst
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)


def _fusions_computing(hlo: str, op: str) -> int:
    """In optimized HLO text: how many fusions of the entry computation compute ``op`` in their body."""
    bodies = dict(re.findall(r"^(?:ENTRY )?%?(\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    entry = hlo[hlo.index("\nENTRY") :]
    called = re.findall(r"^\s*%\S+ = \S+ fusion\(.*calls=%(\S+?)[,\s]", entry, re.M)
    return sum(f" {op}(" in bodies.get(name, "") for name in called)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts XLA:CPU's fusions")
def test_popcount_sums_are_computed_once_per_conv_in_the_train_step():
    """With the barriers kept (the trainer's CPU compile option) a popcount conv's sums are computed in
    one fusion of the gradient and stored: the forward's consumers (BatchNorm statistics, its output,
    the backward's recomputations) read them instead of each repeating the tap merge and popcounts."""
    model = models.create_model(
        "resnet20",
        input_shape=(32, 32, 3),
        num_classes=10,
        rngs=nnx.Rngs(0),
        materialize_residuals=True,
        binary_conv_products="popcount",
    )
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, BinaryConv) and m.products == "popcount"]
    graphdef, state = nnx.split(model)

    def loss(s, x):
        return jnp.mean(jnp.square(nnx.merge(graphdef, s)(x)))

    grad = jax.jit(jax.grad(loss), compiler_options=runtime.KEEP_BARRIERS)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    hlo = grad.lower(state, x).compile().as_text()
    assert len(convs) == 18 and _fusions_computing(hlo, "popcnt") == len(convs)


@pytest.mark.parametrize("products", ["int8", "popcount"])
@pytest.mark.parametrize("name", ["resnet20", "vgg_small", "mnistnet"])
def test_binary_conv_products_change_no_number(name, products):
    """``binary_conv_products`` (the trainer's CPU default "popcount", via the config field of that
    name): every 1w1a conv computes its sums that way, and the loss, every gradient and the eval logits
    are the float model's, bit for bit."""
    shape = SHAPES["mnist" if name == "mnistnet" else "cifar10"]
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    results = []
    for choice in ("float", products):
        model = models.create_model(
            name, input_shape=shape, num_classes=10, rngs=nnx.Rngs(0), binary_conv_products=choice
        )
        convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, BinaryConv) and m.is_binary]
        assert len(convs) >= 2 and {m.products for m in convs} == {choice}
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.sin(m(x))))(model)  # noqa: B023
        model.eval()
        results.append((loss, nnx.state(grads, nnx.Param), model(x)))
    (loss_f, grads_f, logits_f), (loss_i, grads_i, logits_i) = results
    assert float(loss_f) == float(loss_i)
    np.testing.assert_array_equal(np.asarray(logits_f), np.asarray(logits_i))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), grads_f, grads_i)


STATS = dict(pixel_mean=(0.49, 0.48, 0.45), pixel_std=(0.25, 0.24, 0.26))


def _fixed_point_resnet20(frac_bits: int = 16, **options):
    return models.create_model(
        "resnet20",
        input_shape=(32, 32, 3),
        num_classes=10,
        rngs=nnx.Rngs(0),
        residual_frac_bits=frac_bits,
        **STATS,
        **options,
    )


def test_fixed_point_stream_follows_the_float_model_and_trains():
    """``residual_frac_bits``: training rounds the stream to 2**-F (straight through: gradients flow),
    eval mode computes it in int32; the stem's integer output is within a few units of the float
    model's on the same parameters, and each block's integer step within rounding of the float one."""
    from irnet_jax import fixed_stream
    from irnet_jax.layers import hardtanh

    model = _fixed_point_resnet20()
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.mean(m(pixels) ** 2))(model)
    assert float(jnp.abs(grads["stem"]["kernel"][...]).sum()) > 0
    model.eval()
    stream = model.fixed_point_stream(pixels)
    assert all(s.dtype == jnp.int32 and int(jnp.abs(s).max()) <= 2**16 for s in stream)
    assert len(stream) == 1 + 2 * len(model.blocks)
    float_stem = hardtanh(model.stem_bn(model.stem(model.normalize_pixels(pixels))))
    assert float(jnp.abs(stream[0] / 2**16 - float_stem).max()) < 2e-4
    x = stream[0] / 2**16
    blk = model.blocks[0]
    float_step = hardtanh(blk.bn1(blk.conv1(x)) + blk.shortcut(x))
    assert float(jnp.abs(stream[1] / 2**16 - float_step).max()) < 2e-4
    assert model(pixels).shape == (8, 10)
    # The straight-through rounding itself: forward on the grid, gradient 1.
    v = jnp.asarray([0.1, -0.3337, 0.99999])
    assert np.allclose(fixed_stream.ste_round(v, 4) * 16, np.round(np.asarray(v) * 16))
    assert np.allclose(jax.grad(lambda u: fixed_stream.ste_round(u, 4).sum())(v), 1.0)


@pytest.mark.parametrize("name", ["vgg_small", "mnistnet", "alexnet"])
def test_integer_first_layer_follows_the_float_first_layer_and_trains(name):
    """``integer_first_layer``: pixels in; training normalizes them and runs the float first layer
    (gradients flow), eval mode computes its signs in int32, jitted through the host callback equal to
    the host-derived integers, and equal to the float first layer's signs but where the float value is
    within rounding of 0."""
    from irnet_jax import integer_first_layer as int_first

    shape = (28, 28, 1) if name == "mnistnet" else (32, 32, 3)
    stats = {k: v[: shape[-1]] for k, v in STATS.items()}
    kw = {"widths": (16, 16, 32, 32, 32, 32)} if name == "vgg_small" else {}
    model = models.create_model(
        name, input_shape=shape, num_classes=10, rngs=nnx.Rngs(0), integer_first_layer=True, **stats, **kw
    )
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, *shape)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.mean(m(pixels) ** 2))(model)
    assert float(jnp.abs(grads["convs"][0]["kernel"][...]).sum()) > 0
    model.eval()
    jitted = nnx.jit(lambda m, x: m.enter(x, None))(model, pixels)
    host = model.enter(pixels, models.eval_integers(model))
    assert jitted[1] == host[1] == 1
    np.testing.assert_array_equal(np.asarray(jitted[0]), np.asarray(host[0]))
    np.testing.assert_array_equal(
        nnx.jit(lambda m, x: m(x))(model, pixels), model(pixels, integers=models.eval_integers(model))
    )
    conv, bn, spec = model.convs[0], model.bns[0], model.export_stages()[0][0]
    y = conv(models.normalize_pixels(pixels, stats["pixel_mean"], stats["pixel_std"], jnp.float32))
    if spec.pool == "sums":
        y = max_pool(y, ceil_mode=spec.ceil_mode)
    z = bn(y)
    if spec.pool == "bits":
        z = max_pool(z, ceil_mode=True)
    float_signs, int_signs = np.where(np.asarray(z) >= 0, 1.0, -1.0), np.asarray(host[0])
    assert int_signs.shape == float_signs.shape and set(np.unique(int_signs)) == {-1.0, 1.0}
    differ = float_signs != int_signs
    assert np.all(np.abs(np.asarray(z))[differ] < 1e-4)
    ints = models.eval_integers(model)
    assert isinstance(ints, int_first.FirstLayerIntegers) and ints.weights.dtype == np.int32


def test_integer_first_layer_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="applies to the sequential nets .* not 'resnet20'.*residual_frac_bits"):
        models.create_model(
            "resnet20", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), integer_first_layer=True, **STATS
        )
    with pytest.raises(ValueError, match="does not apply to a binary first layer, pixel_mean/pixel_std of 3"):
        models.create_model(
            "vgg_small", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0),
            integer_first_layer=True, binary_first_layer=True, widths=(8, 8, 8, 8, 8, 8),
        )  # fmt: skip


def test_fixed_point_requantizer_stays_inside_int32():
    """Extreme scales and biases (huge, tiny, zero, negative): every int32 intermediate of the
    requantization equals the same formula in int64, for every D in [-K, K]."""
    from irnet_jax import fixed_stream

    fan_in = 576
    scale = np.asarray([1e6, 1e-9, 0.0, -0.04, 0.04, 3.0, -250.0])
    bias = np.asarray([5.0, -1e9, 0.3, 7.5, -0.01, 1e4, 0.0])
    r = fixed_stream.requantizer(scale, bias, fan_in, 22)
    m, c, s = (np.asarray(v, np.int64) for v in r)
    assert np.all(np.abs(m) * fan_in < 2**30) and np.all(np.abs(c) < 2**29) and np.all((s >= 1) & (s <= 28))
    d = np.arange(-fan_in, fan_in + 1)[:, None] * np.ones((1, len(m)), np.int64)
    exact = np.clip((d * m + c + (1 << (s - 1))) >> s, -(2 << 22), 2 << 22)
    r32 = fixed_stream.Requantizer(*(jnp.asarray(v) for v in r))
    np.testing.assert_array_equal(np.asarray(fixed_stream.requantize(jnp.asarray(d, jnp.int32), r32, 2 << 22)), exact)
    # Where no bound binds, q is within one unit of 2**F clamp(scale D + bias) at F = 16 (|M| K < 2**30
    # leaves M about 21 bits: a larger F adds no precision, see fixed_stream).
    m, c, s = (np.asarray(v, np.int64) for v in fixed_stream.requantizer(scale[3:5], bias[3:5], fan_in, 16))
    q = np.clip((d[:, :2] * m + c + (1 << (s - 1))) >> s, -(2 << 16), 2 << 16)
    ideal = np.clip(scale[3:5] * d[:, :2] + bias[3:5], -2, 2)
    assert np.abs(q - ideal * 2**16).max() <= 1.0


def test_fixed_point_integers_are_the_same_under_jit_and_eagerly():
    """The eval-mode integers are derived on the host (float64 NumPy): inside ``jit`` (as in the
    eval step) they equal the eager ones and ``derive_integers`` called directly (as the export does),
    and the weight signs are Libra-PB's (``sign(W - mean W)``)."""
    from irnet_jax import fixed_stream

    model = _fixed_point_resnet20()
    model.eval()
    eager = model.stream_integers()
    jitted = nnx.jit(lambda m: m.stream_integers())(model)
    direct = fixed_stream.derive_integers(model.stream_params(), model.stream_layout())
    host = model.host_stream_integers()  # what the eval step and the export use
    for a, *others in zip(*(jax.tree.leaves(i) for i in (eager, jitted, direct, host))):
        for b in others:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    conv = model.blocks[4].conv2
    latent = np.asarray(conv.kernel[...])
    expected = np.where(latent - latent.mean(axis=(0, 1, 2)) >= 0, 1.0, -1.0)
    assert np.mean(np.asarray(eager.conv_signs[9]) == expected) == 1.0
    np.testing.assert_array_equal(np.sign(np.asarray(conv.quantized_kernel(EstimatorParams.constant()))), expected)
    pixels = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)), jnp.float32)
    for a, b in zip(model.fixed_point_stream(pixels), nnx.jit(lambda m, x: m.fixed_point_stream(x))(model, pixels)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"block": "basic"}, "block='basic'"),
        ({"binary_first_layer": True}, "a binary first or last layer"),
        ({"norm": "offset"}, "norm='offset'"),
        ({"frac_bits": 30}, "must be 0 (off) or in [1, 22]"),
    ],
)
def test_fixed_point_stream_refuses_what_it_cannot_compute(options, message):
    frac_bits = options.pop("frac_bits", 16)
    with pytest.raises(ValueError, match=re.escape(message)):
        _fixed_point_resnet20(frac_bits, **options)


def test_fixed_point_resnet18_computes_its_option_b_shortcuts_in_int32():
    """ResNet-18's option-B shortcut (float 1x1 conv + BN) in eval mode with ``residual_frac_bits``: int32
    products of the stream's halves, within a few units of 2**-F of the float shortcut on the same
    stream, the same under ``jit``; the blocks around it still train."""
    from irnet_jax import fixed_stream
    from irnet_jax.layers import hardtanh

    model = models.create_model(
        "resnet18", input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), residual_frac_bits=16, **STATS
    )
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.mean(m(pixels) ** 2))(model)
    assert float(jnp.abs(grads["blocks"][2]["shortcut"]["conv"]["kernel"][...]).sum()) > 0
    model.eval()
    ints = model.host_stream_integers()
    assert [p is not None for p in ints.projections] == [False, False, True, False, True, False, True, False]
    stream = model.fixed_point_stream(pixels, ints)
    blk, q = model.blocks[2], stream[4]
    short = fixed_stream.project(q, ints.projections[2], 2, 16)
    float_short = blk.shortcut(q / 2**16)
    assert float(jnp.abs(short / 2**16 - float_short).max()) < 4e-4
    float_step = hardtanh(blk.bn1(blk.conv1(q / 2**16)) + float_short)
    assert float(jnp.abs(stream[5] / 2**16 - float_step).max()) < 4e-4
    jitted = nnx.jit(lambda m, x: m.fixed_point_stream(x))(model, pixels)
    for a, b in zip(stream, jitted):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fixed_point_projection_stays_inside_int32():
    """Extreme stream values (+-2**F, the split's edges) and extreme norms (huge, tiny, zero, negative
    scales and biases): the option-B shortcut's int32 arithmetic equals the same formula in int64, and
    its integers respect their bounds."""
    from irnet_jax import fixed_stream

    rng = np.random.default_rng(1)
    c_in, c_out, f = 64, 6, 16
    kernel = rng.normal(0, 0.2, (1, 1, c_in, c_out))
    scale = np.asarray([1e6, 1e-9, 0.0, -3.0, 0.5, 40.0])
    bias = np.asarray([5.0, -1e9, 0.3, 7.5, -0.01, 1e4])
    p = fixed_stream.projection_integers(kernel, scale, bias, f)
    w, e, r, g = (np.asarray(v, np.int64) for v in p)
    part = fixed_stream.projection_part_bits(f)
    assert np.all(np.abs(w).sum(0) < 2 ** (29 - part)) and np.all((g >= part) & (g <= 28))
    assert np.all((r >= 0) & (r < (1 << g)))
    edges = np.asarray([-(2**f), 2**f, 0, -1, 1, 255, 256, -256, -257])
    q = np.concatenate([edges, rng.integers(-(2**f), 2**f + 1, 4 * 4 * c_in - len(edges))]).reshape(1, 4, 4, c_in)
    got = np.asarray(fixed_stream.project(jnp.asarray(q, jnp.int32), p, 1, f))
    exact = np.clip(e + ((q @ w + r + (1 << (g - 1))) >> g), -(2**29), 2**29)
    np.testing.assert_array_equal(got, exact)
