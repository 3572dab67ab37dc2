"""Every topology x dataset: shapes, finite forward/backward in float32 and bfloat16, gradients
reach every parameter, parameter counts derived by hand, and the summary's accounting."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irnet_jax import models
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
            compiler_options={"xla_disable_hlo_passes": "cse_barrier_expander"},
        )
        compiled = forward.lower(state, x).compile()
        worst[on] = _max_convs_read_by_one_fusion(compiled.as_text())
        outputs[on] = np.asarray(compiled(state, x))
    assert worst[True] == 1, worst
    if jax.default_backend() == "cpu":
        assert worst[False] >= 3, worst
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)
