"""Building blocks shared by the backbone and the global path.

Every parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``,
``reduced``, ``classes``, ``conv``) so that ``uniformerv2_jax`` can be sharded by rules
alone. Matmuls go through :func:`matmul`, which keeps float32 accumulation when the
compute dtype is bfloat16: on CPUs with AMX and on every accelerator that is both the
fast path and the accurate one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift
from jax import lax

from uniformerv2_jax.frame_attention import frame_attention

Dtype = Any
Array = jax.Array

LN_EPS = 1e-5  # PyTorch's default; Flax's 1e-6 alone breaks 1e-5 parity.

xavier_uniform = nn.initializers.xavier_uniform
zeros = nn.initializers.zeros
ones = nn.initializers.ones


def torch_default_uniform(fan_in: int):
    """PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def quick_gelu(x: Array) -> Array:
    """CLIP's activation, x * sigmoid(1.702 x), used in every MLP of the model."""
    return x * jax.nn.sigmoid(1.702 * x)


def matmul(x: Array, kernel: Array, dtype: Dtype) -> Array:
    """Contracts the last axis of ``x`` with the first of ``kernel`` in ``dtype``.

    The result is float32 whatever ``dtype`` is: bf16 x bf16 -> f32 runs at full AMX /
    tensor-core speed, while bf16 x bf16 -> bf16 is both slower on CPU and less accurate.
    On TPU ``x`` keeps its leading axes, so that the compiler lays out (frames, tokens) as
    suits the neighbouring operations (odd token counts outermost), where a flattened
    ``x`` fixes a frame-major layout and costs relayout copies around every matmul
    (docs/tpu.md); elsewhere ``x`` is flattened, which XLA:CPU runs with fewer copies.
    """
    x = x.astype(dtype)
    kernel_2d = kernel.reshape(kernel.shape[0], -1).astype(dtype)
    contract_last = (((x.ndim - 1,), (0,)), ((), ()))

    def leading_axes_kept(x, k):
        return lax.dot_general(x, k, contract_last, preferred_element_type=jnp.float32)

    def flattened(x, k):
        out = lax.dot_general(x.reshape(-1, x.shape[-1]), k, (((1,), (0,)), ((), ())),
                              preferred_element_type=jnp.float32)
        return out.reshape(*x.shape[:-1], k.shape[1])

    out = lax.platform_dependent(x, kernel_2d, tpu=leading_axes_kept, default=flattened)
    return out.reshape(*x.shape[:-1], *kernel.shape[1:])


def add_to_patches(x: Array, branch: Callable[[Array], Array]) -> Array:
    """Adds ``branch(patch tokens as a video)`` to the patch tokens; class tokens untouched.

    x: (N, T, L, C) with L = 1 + g*g; branch maps (N, T, g, g, C) -> (N, T, g, g, C).
    """
    video = einops.rearrange(x[:, :, 1:], "n t (h w) c -> n t h w c", h=math.isqrt(x.shape[2] - 1))
    return x.at[:, :, 1:].add(einops.rearrange(branch(video), "n t h w c -> n t (h w) c"))


class Dense(nn.Module):
    """Linear layer ``(..., in) -> (..., *features)`` with named kernel axes.

    ``axes`` names the kernel axes, input axis first. The bias takes the output names.
    """

    features: Sequence[int]
    axes: Sequence[str | None]
    dtype: Dtype = jnp.float32
    kernel_init: Any = xavier_uniform()
    bias_init: Any = zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = tuple(self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
            (x.shape[-1], *features),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(self.bias_init, tuple(self.axes[1:])),
            features,
        )
        return matmul(x, kernel, self.dtype) + bias


def layer_norm(name: str) -> nn.LayerNorm:
    """LayerNorm with eps 1e-5, computed in float32 as the official CLIP code does."""
    return nn.LayerNorm(
        epsilon=LN_EPS,
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(zeros, ("embed",)),
        name=name,
    )


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm3d`` over every axis but the last: (..., C) -> float32 (..., C).

    Training normalises with the batch mean and biased variance and moves the running
    statistics by ``momentum`` towards the batch mean and the *unbiased* variance
    (n / (n - 1)), as PyTorch does, so statistics exported to PyTorch are the ones the
    official code would have. Under a mesh the batch statistics span the global batch.
    """

    momentum: float = 0.1  # PyTorch's convention: the weight of the new batch
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(ones, ("embed",)), (channels,))
        bias = self.param("bias", nn.with_logical_partitioning(zeros, ("embed",)), (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // channels
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (n / max(n - 1, 1))
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


class MLP(nn.Module):
    """c_fc -> QuickGELU -> (dropout) -> c_proj, as in CLIP and the official Extractor."""

    hidden: int
    dtype: Dtype = jnp.float32
    zero_init_out: bool = False

    @nn.compact
    def __call__(self, x: Array, dropout_rate: float | Array = 0.0,
                 train: bool = False) -> Array:
        width = x.shape[-1]
        h = Dense((self.hidden,), ("embed", "mlp"), self.dtype,
                  kernel_init=xavier_uniform(), name="c_fc")(x)
        h = quick_gelu(h)
        h = drop(self, h, dropout_rate, train)
        out_init = zeros if self.zero_init_out else xavier_uniform()
        return Dense((width,), ("mlp", "embed"), self.dtype,
                     kernel_init=out_init, name="c_proj")(h)


def attention(q: Array, k: Array, v: Array, dtype: Dtype, kernel: str = "matmul") -> Array:
    """softmax(q k^T / sqrt(head_dim)) v: q (B, Lq, H, D), k and v (B, Lk, H, D) -> (B, Lq, H, D).

    ``kernel`` "matmul": two batched matmuls over B*H with float32 logits and softmax; on
    XLA's CPU backend faster than ``jax.nn.dot_product_attention`` (``benchmarks/kernels.py``,
    figures in docs/performance.md) and what its XLA form lowers to elsewhere anyway.
    "xla" and "cudnn": ``jax.nn.dot_product_attention`` with that implementation, on
    q, k, v in ``dtype`` (float32 softmax in both; the result is in ``dtype``).
    """
    if kernel != "matmul":
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        return jax.nn.dot_product_attention(q, k, v, implementation=kernel)
    b, lq, h, d = q.shape

    def heads_first(x):  # (B, L, H, D) -> (B*H, L, D)
        return x.astype(dtype).transpose(0, 2, 1, 3).reshape(b * h, x.shape[1], d)

    q, k, v = heads_first(q * d**-0.5), heads_first(k), heads_first(v)
    logits = jnp.matmul(q, k.transpose(0, 2, 1), preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.matmul(probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, h, lq, d).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Multi-head attention with PyTorch's packed q/k/v projection.

    ``in_proj`` kernel ``(C, 3, heads, head_dim)`` holds the q, k, v projections (the rows
    of ``nn.MultiheadAttention.in_proj_weight``); ``out_proj`` kernel is
    ``(heads, head_dim, C)``. Self-attention uses one fused matmul; cross-attention
    projects the query with slice 0 and the keys/values with slices 1 and 2, exactly as
    the official Extractor does. ``query_dtype`` sets the dtype of the query-side
    projections (q and out) when they differ from the key side's. ``implementation`` is
    :func:`attention`'s ``kernel``.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    zero_init_out: bool = False
    query_dtype: Dtype | None = None
    implementation: str = "matmul"

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        """x: (B, Lq, C); context: (B, Lk, C) or None for self-attention -> (B, Lq, C)."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        shape = (width, 3, self.num_heads, head_dim)
        in_kernel = self.param(
            "in_proj_kernel",
            nn.with_logical_partitioning(
                xavier_uniform(in_axis=0, out_axis=(1, 2, 3)), ("embed", None, "heads", "kv")),
            shape,
        )
        in_bias = self.param(
            "in_proj_bias",
            nn.with_logical_partitioning(zeros, (None, "heads", "kv")),
            shape[1:],
        )
        query_dtype = self.query_dtype or self.dtype
        if self.implementation == "pallas" and context is None:
            # One projection each: the kernel reads q, k, v as separate (B, L, H*D) arrays.
            q, k, v = (matmul(x, in_kernel[:, i].reshape(width, width), self.dtype)
                       + in_bias[i].reshape(width) for i in range(3))
            q, k, v = (y.astype(self.dtype) for y in (q * head_dim**-0.5, k, v))
            out = frame_attention(q, k, v, head_dim)
        else:
            if context is None:
                q, k, v = jnp.moveaxis(matmul(x, in_kernel, self.dtype) + in_bias, -3, 0)
            else:
                q = matmul(x, in_kernel[:, 0], query_dtype) + in_bias[0]
                k, v = jnp.moveaxis(matmul(context, in_kernel[:, 1:], self.dtype) + in_bias[1:], -3, 0)
            out = attention(q, k, v, self.dtype, self.implementation)
            out = out.reshape(*out.shape[:-2], width)
        out_init = zeros if self.zero_init_out else xavier_uniform(in_axis=(0, 1), out_axis=2)
        out_kernel = self.param(
            "out_proj_kernel",
            nn.with_logical_partitioning(out_init, ("heads", "kv", "embed")),
            (self.num_heads, head_dim, width),
        )
        out_bias = self.param(
            "out_proj_bias", nn.with_logical_partitioning(zeros, ("embed",)), (width,))
        return matmul(out, out_kernel.reshape(width, width), query_dtype) + out_bias


class DepthwiseConv3D(nn.Module):
    """Depthwise 3D convolution over ``(N, T, H, W, C)`` with 'same' zero padding.

    ``implementation`` "shifted": a sum of shifted, per-channel scaled copies; for the
    small kernels used here ((3, 1, 1) in the local MHRA, (3, 3, 3) in the DPE) XLA fuses
    it into one loop, much faster on CPU than its grouped convolution
    (``benchmarks/kernels.py``, figures in docs/performance.md). "grouped":
    ``lax.conv_general_dilated`` with one group per channel, at full float32 precision.
    The same numbers either way. It runs in float32 whatever the compute dtype: it is
    memory-bound, and bfloat16 copies of the shifted windows would only add traffic. Kernel
    layout ``(kt, kh, kw, C)``.
    """

    kernel_size: Sequence[int]
    axis_name: str = "embed"
    implementation: str = "shifted"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kt, kh, kw = self.kernel_size
        channels = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                torch_default_uniform(kt * kh * kw), (None, None, None, self.axis_name)),
            (kt, kh, kw, channels),
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(zeros, (self.axis_name,)), (channels,))
        pad = ((0, 0), (kt // 2, kt // 2), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
        x = x.astype(jnp.float32)
        if self.implementation == "grouped":
            out = lax.conv_general_dilated(
                x, kernel[..., None, :], (1, 1, 1), pad[1:4],
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=channels,
                precision=lax.Precision.HIGHEST)
            return out + bias
        _, t, h, w, _ = x.shape
        padded = jnp.pad(x, pad)
        out = jnp.zeros(x.shape, jnp.float32)
        for i in range(kt):
            for j in range(kh):
                for k in range(kw):
                    window = padded[:, i:i + t, j:j + h, k:k + w]
                    out = out + window * kernel[i, j, k]
        return out + bias


def drop(module: nn.Module, x: Array, rate: float | Array, train: bool,
         broadcast_dims: Sequence[int] = ()) -> Array:
    """Dropout (``broadcast_dims=()``) or drop-path (all but the batch axis broadcast).

    ``rate`` may be a traced value (per-layer rates under ``nn.scan``). Inactive unless
    training; draws from the ``dropout`` RNG stream.
    """
    if not train or (isinstance(rate, (int, float)) and rate == 0.0):
        return x
    shape = [1 if i in broadcast_dims else n for i, n in enumerate(x.shape)]
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(module.make_rng("dropout"), keep_prob, shape)
    return jnp.where(keep, x / jnp.maximum(keep_prob, 1e-12), jnp.zeros_like(x))


def drop_path(module: nn.Module, x: Array, rate: float | Array, train: bool) -> Array:
    """Stochastic depth on a residual branch ``x`` (B, ...): one coin per sample."""
    return drop(module, x, rate, train, broadcast_dims=tuple(range(1, x.ndim)))


def _after(tree: Any, cotangent: Any) -> Any:
    """``tree``'s values, computed from ``cotangent``: each floating leaf plus a zero that
    only exists once ``cotangent`` does, ``0 * (its first element > 0)`` (finite whatever the
    cotangent; XLA never folds a floating-point product with zero, as NaN * 0 is NaN)."""
    first = next((x for x in jax.tree.leaves(cotangent)
                  if jnp.issubdtype(jnp.result_type(x), jnp.floating) and jnp.size(x)), None)
    if first is None:
        return tree
    zero = (jnp.ravel(first)[0] > 0).astype(jnp.float32) * 0.0
    return jax.tree.map(lambda x: x + zero.astype(jnp.result_type(x))
                        if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def _lifted_remat(fn: Callable, static_argnums: Sequence[int] = ()) -> Callable:
    """``flax.core.lift.checkpoint`` with the recomputation made to wait for the cotangent
    (see :func:`remat`)."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        static = {i: args[i] for i in static_argnums}
        dynamic = [a for i, a in enumerate(args) if i not in static]

        def body(variable_groups, rng_groups, *dynamic):
            values = iter(dynamic)
            scope = scope_fn(variable_groups, rng_groups)
            y = fn(scope, *[static[i] if i in static else next(values) for i in range(len(args))])
            return y, repack_fn(scope)

        # Traced once, as jax.checkpoint does: Flax's RNG counters advance once, so the
        # recomputation draws the forward's dropout masks.
        pure, consts = jax.closure_convert(body, variable_groups, rng_groups, *dynamic)
        tied = slice(2, 2 + len(dynamic))  # the module's arguments, not its variables

        @jax.custom_vjp
        def run(*inputs):
            return pure(*inputs)

        def forward(*inputs):
            return pure(*inputs), inputs  # saves the inputs only

        def backward(inputs, cotangent):
            inputs = list(inputs)
            inputs[tied] = _after(inputs[tied], cotangent)
            return jax.vjp(pure, *inputs)[1](cotangent)

        run.defvjp(forward, backward)
        return run(variable_groups, rng_groups, *dynamic, *consts)

    return lift.pack(inner, (True,), (True,), (True,), name="remat")


def remat(module_class: type[nn.Module], static_argnums: Sequence[int] = ()) -> type[nn.Module]:
    """``nn.remat(module_class, static_argnums=...)`` (``self`` is argument 0) for XLA:CPU:
    the backward pass recomputes the module from its saved arguments, and nothing else is
    kept from the forward.

    ``nn.remat`` (``jax.checkpoint``) keeps its recomputation apart from the forward with an
    optimization barrier over the saved values and the cotangent, but XLA:CPU removes
    optimization barriers before it schedules (``OptimizationBarrierExpander`` right after
    ``HloCSE``, XLA's ``cpu_compiler.cc``), and its scheduler then runs each layer's
    recomputation right after that layer's forward: every recomputed activation lives
    until the backward, and remat costs a forward and saves nothing. Here the
    recomputation reads its arguments through :func:`_after`, a data dependence on the
    cotangent that XLA:CPU cannot schedule ahead of the backward pass. Only for XLA:CPU:
    the TPU and GPU compilers keep ``nn.remat``'s barriers, and the TPU compiler sees
    through the added zero and merges this recomputation with the forward (docs/tpu.md).
    A custom VJP: forward-mode differentiation (``jax.jvp``) of the wrapped module is not
    supported.
    """
    return nn.transforms.lift_transform(_lifted_remat, module_class,
                                        static_argnums=tuple(i - 1 for i in static_argnums))
