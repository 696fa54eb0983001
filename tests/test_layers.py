"""Kernel forms (``UniFormerV2.kernels``): every XLA form gives today's numbers; the choice
per backend; cuDNN requested where it cannot run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import GRADIENT_FLOOR, LOGITS_ATOL, assert_close_to_max, random_video, tiny_fields

from uniformerv2_jax import UniFormerV2, from_official
from uniformerv2_jax.kernel_choice import Kernels, choose_kernels
from uniformerv2_jax.layers import DepthwiseConv3D, attention

# Every value that runs on XLA:CPU.
CPU_KERNELS = ["auto", "matmul+shifted", "xla+shifted", "matmul+grouped", "xla+grouped"]


def assert_float32_close(actual, expected):
    """Two kernels of one layer agree within the whole model's float32 gradient floor (one
    layer rounds less than the four of the model the floor was measured on)."""
    assert_close_to_max(actual, expected, GRADIENT_FLOOR)


def value_and_grads(fn, *args):
    """``fn(*args)`` and the gradients of every argument against a fixed random cotangent."""
    out = fn(*args)
    cotangent = np.random.default_rng(9).standard_normal(out.shape).astype(np.float32)
    grads = jax.grad(lambda *a: jnp.vdot(fn(*a).astype(jnp.float32), cotangent),
                     argnums=tuple(range(len(args))))(*args)
    return [out, *grads]


def test_dot_product_attention_xla_gives_the_numbers_of_our_matmuls():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((3, 20, 4, 16)).astype(np.float32) for _ in range(3))
    ours = jax.jit(lambda q, k, v: value_and_grads(
        lambda *a: attention(*a, jnp.float32, "matmul"), q, k, v))(q, k, v)
    xla = jax.jit(lambda q, k, v: value_and_grads(
        lambda *a: attention(*a, jnp.float32, "xla"), q, k, v))(q, k, v)
    for a, b in zip(xla, ours):  # output, d/dq, d/dk, d/dv
        assert_float32_close(a, b)


@pytest.mark.parametrize("kernel_size", [(3, 1, 1), (3, 3, 3)])
def test_grouped_convolution_gives_the_numbers_of_the_shifted_sums(kernel_size):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 5, 6, 8)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 8)).astype(np.float32)
    bias = rng.standard_normal((8,)).astype(np.float32)

    def run(form):
        module = DepthwiseConv3D(kernel_size, implementation=form)
        fn = lambda x, kernel, bias: module.apply(  # noqa: E731
            {"params": {"kernel": kernel, "bias": bias}}, x)
        return jax.jit(lambda *a: value_and_grads(fn, *a))(x, kernel, bias)

    for a, b in zip(run("grouped"), run("shifted")):  # output, d/dx, d/dkernel, d/dbias
        assert_float32_close(a, b)


@pytest.mark.parametrize("kernels", CPU_KERNELS)
def test_every_kernel_choice_reproduces_the_official_logits(golden, tiny_a_config, kernels):
    data = np.load(golden / "tiny_a.npz")
    model, variables = from_official(golden / "tiny_a.safetensors", config=tiny_a_config,
                                     kernels=kernels)
    assert model.kernels == kernels
    video = np.transpose(data["input"], (0, 2, 3, 4, 1))  # official NCTHW -> ours NTHWC
    logits = jax.jit(model.apply)(variables, video)
    np.testing.assert_allclose(logits, data["logits"], rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("kernels, present, absent", [
    ("auto", [], ["conv_general_dilated", "dot_product_attention", "cudnn"]),
    ("matmul+grouped", ["conv_general_dilated"], ["cudnn"]),
])
def test_the_switch_reaches_every_layer_and_auto_is_xla_on_cpu(kernels, present, absent):
    assert jax.default_backend() == "cpu"
    assert choose_kernels("auto", jnp.bfloat16, 64) == Kernels("matmul", "shifted")
    model = UniFormerV2(**tiny_fields(kernels=kernels))
    video = random_video(model)
    variables = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), video))
    program = str(jax.make_jaxpr(model.apply)(variables, video))
    assert all(name in program for name in present)
    assert not any(name in program for name in absent)
    if present:  # both depthwise convolutions: the local MHRA's and the DPE's
        assert "feature_group_count=21" in program and "feature_group_count=32" in program


@pytest.mark.parametrize("value, dtype, head_dim, backend, tokens, expected", [
    ("auto", jnp.float32, 64, "cpu", 50, Kernels("matmul", "shifted")),
    ("auto", jnp.bfloat16, 64, "gpu", 50, Kernels("cudnn", "shifted")),
    ("auto", jnp.float16, 128, "gpu", None, Kernels("cudnn", "shifted")),
    ("auto", jnp.float32, 64, "gpu", 50, Kernels("matmul", "shifted")),  # cuDNN needs 16 bits
    ("auto", jnp.bfloat16, 100, "gpu", 50, Kernels("matmul", "shifted")),  # not a multiple of 8
    ("auto", jnp.bfloat16, 64, "gpu", 197, Kernels("matmul", "shifted")),  # B/16: odd tokens
    ("auto", jnp.bfloat16, 64, "tpu", 50, Kernels("matmul", "shifted")),
    ("xla+grouped", jnp.float32, 64, "cpu", 50, Kernels("xla", "grouped")),
    ("cudnn+grouped", jnp.bfloat16, 64, "gpu", 50, Kernels("cudnn", "grouped")),
])
def test_kernels_are_chosen_per_backend(value, dtype, head_dim, backend, tokens, expected):
    assert choose_kernels(value, dtype, head_dim, backend, tokens) == expected


@pytest.mark.parametrize("dtype, backend, match", [
    (jnp.bfloat16, "cpu", "needs a GPU, and the backend is 'cpu'"),
    (jnp.bfloat16, "tpu", "needs a GPU"),
    (jnp.float32, "gpu", "16-bit compute"),
])
def test_cudnn_where_it_cannot_run_names_the_field(dtype, backend, match):
    with pytest.raises(ValueError, match=f"UniFormerV2.kernels='cudnn\\+shifted': .*{match}"):
        choose_kernels("cudnn+shifted", dtype, 64, backend)


def test_cudnn_on_this_cpu_fails_when_traced_naming_the_field():
    model = UniFormerV2(**tiny_fields(kernels="cudnn+shifted", dtype=jnp.bfloat16))
    video = random_video(model)
    with pytest.raises(ValueError, match="UniFormerV2.kernels='cudnn\\+shifted'.*GPU.*'auto' picks"):
        jax.eval_shape(model.init, jax.random.key(0), video)


@pytest.mark.parametrize("value", ["cudnn", "matmul+conv", "fast", "xla+shifted+grouped", ""])
def test_unknown_kernels_are_rejected_when_the_model_is_built(value):
    with pytest.raises(ValueError, match="UniFormerV2.kernels=.*expected 'auto' or ATTENTION\\+CONV"):
        UniFormerV2(**tiny_fields(kernels=value))
