"""Kernel forms (``UniFormerV2.kernels``): every XLA form and the Pallas attention kernel
(interpreted here) give today's numbers; the choice per backend; cuDNN and Pallas requested
where they cannot run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import GRADIENT_FLOOR, LOGITS_ATOL, assert_close_to_max, random_video, tiny_fields

from uniformerv2_jax import UniFormerV2, from_official
from uniformerv2_jax.frame_attention import block_width, frame_attention
from uniformerv2_jax.kernel_choice import Kernels, choose_kernels
from uniformerv2_jax.layers import DepthwiseConv3D, attention

# Every value that runs on a CPU (the Pallas kernel in Pallas' interpreter).
CPU_KERNELS = ["auto", "matmul+shifted", "xla+shifted", "matmul+grouped", "xla+grouped",
               "pallas+shifted"]


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


def pallas_form(q, k, v):
    """frame_attention on (B, L, H, D) arrays, as :func:`attention` takes them."""
    b, length, h, d = q.shape
    width = lambda x: x.reshape(b, length, h * d)  # noqa: E731
    return frame_attention(width(q * d**-0.5), width(k), width(v), d).reshape(b, length, h, d)


@pytest.mark.parametrize("heads, head_dim, lanes", [
    (4, 32, 128),  # four heads a 128-lane block
    (4, 64, 128),  # two blocks of two heads (B/16's and L/14's head size)
    (3, 16, 48),  # heads that do not fill 128 lanes: the whole width at once
])
def test_the_pallas_kernel_gives_the_numbers_of_our_matmuls(heads, head_dim, lanes):
    assert block_width(heads * head_dim, head_dim) == lanes
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((6, 21, heads, head_dim)).astype(np.float32) for _ in range(3))
    ours = jax.jit(lambda *a: value_and_grads(lambda *b: attention(*b, jnp.float32), *a))(q, k, v)
    pallas = jax.jit(lambda *a: value_and_grads(pallas_form, *a))(q, k, v)
    for a, b in zip(pallas, ours):  # output, d/dq, d/dk, d/dv
        assert_float32_close(a, b)


def test_the_pallas_kernel_in_bfloat16_is_as_close_to_float32_as_the_matmuls():
    """Both forms round q, k, v, the probabilities and the outputs to bfloat16; the kernel
    keeps the probabilities' cotangent in float32 where XLA's form rounds it, so its
    gradients are no further from the float32 ones (within a tenth of their bfloat16 error)."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((4, 33, 4, 64)).astype(np.float32) for _ in range(3))
    exact = jax.jit(lambda *a: value_and_grads(lambda *b: attention(*b, jnp.float32), *a))(q, k, v)
    bf16 = lambda fn: lambda *a: fn(*(x.astype(jnp.bfloat16) for x in a))  # noqa: E731
    # The model casts the matmuls' float32 output to bfloat16 for the output projection.
    ours = jax.jit(lambda *a: value_and_grads(
        bf16(lambda *b: attention(*b, jnp.bfloat16).astype(jnp.bfloat16)), *a))(q, k, v)
    pallas = jax.jit(lambda *a: value_and_grads(bf16(pallas_form), *a))(q, k, v)

    def error(x, truth):
        return float(np.abs(np.asarray(x, np.float32) - truth).max() / np.abs(truth).max())

    for p, o, e in zip(pallas, ours, exact):
        assert 0 < error(p, e) <= 1.1 * error(o, e)


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
    ("auto", jnp.bfloat16, 64, "tpu", 197, Kernels("pallas", "grouped")),
    ("auto", jnp.float32, 64, "tpu", 197, Kernels("matmul", "grouped")),  # Pallas: 16 bits
    ("auto", jnp.bfloat16, 64, "tpu", 1025, Kernels("matmul", "grouped")),  # over its VMEM budget
    ("pallas+grouped", jnp.float32, 64, "cpu", 50, Kernels("pallas", "grouped")),  # interpreted
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


def test_pallas_over_its_vmem_budget_names_the_field():
    with pytest.raises(ValueError, match="UniFormerV2.kernels='pallas\\+shifted': 1025 tokens"):
        choose_kernels("pallas+shifted", jnp.bfloat16, 64, "tpu", 1025)


def test_cudnn_on_this_cpu_fails_when_traced_naming_the_field():
    model = UniFormerV2(**tiny_fields(kernels="cudnn+shifted", dtype=jnp.bfloat16))
    video = random_video(model)
    with pytest.raises(ValueError, match="UniFormerV2.kernels='cudnn\\+shifted'.*GPU.*'auto' picks"):
        jax.eval_shape(model.init, jax.random.key(0), video)


@pytest.mark.parametrize("value", ["cudnn", "matmul+conv", "fast", "xla+shifted+grouped", ""])
def test_unknown_kernels_are_rejected_when_the_model_is_built(value):
    with pytest.raises(ValueError, match="UniFormerV2.kernels=.*expected 'auto' or ATTENTION\\+CONV"):
        UniFormerV2(**tiny_fields(kernels=value))
