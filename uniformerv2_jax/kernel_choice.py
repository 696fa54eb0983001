"""How the backbone's attention and the depthwise convolutions are computed, per backend.

``UniFormerV2.kernels`` is "auto" or "ATTENTION+CONV"; :func:`choose_kernels` resolves it
when the model is traced (:func:`layers.attention` and :class:`layers.DepthwiseConv3D`
take the result).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Dtype = Any

# The kernels of ``UniFormerV2.kernels``: "auto", or "ATTENTION+CONV" with
# ATTENTION the backbone self-attention's form and CONV the depthwise convolutions' one.
ATTENTION_KERNELS = ("matmul", "xla", "cudnn")  # two batched matmuls (ours); jax.nn.dot_product_attention
CONV_KERNELS = ("shifted", "grouped")  # fused shifted sums (ours); lax.conv_general_dilated, grouped
# What "auto" picks, by jax.default_backend() when the model is traced:
# * cpu: matmul+shifted, the fastest forms in benchmarks/kernels.py (figures in
#   docs/performance.md): XLA:CPU runs the grouped convolution as a generic convolution,
#   while the shifted sums are one fused loop.
# * gpu: cudnn+shifted where cuDNN's flash attention applies (16-bit compute, head_dim a
#   multiple of 8 up to 128, an even number of tokens: JAX's cuDNN path trains only on even
#   sequence lengths, and a frame's 1 + grid**2 tokens are odd for every even grid, B/16's
#   197 and L/14's 257 among them), else matmul+shifted. Not measured on a GPU:
#   flash attention never writes the (L, L) probabilities to memory, and cuDNN has no fast
#   3D depthwise kernel (pytorch/pytorch#37406; XLA:GPU's grouped-convolution backward is
#   as slow as a dense one, jax-ml/jax#13800), while the shifted sums are one memory-bound
#   fused loop, as fast as a depthwise convolution with 3 or 27 taps can be.
# * tpu and any other: matmul+shifted, for the same reasons; not measured either. The
#   "xla" attention lowers to the same two matmuls and softmax. The TPU compiler's own
#   estimate prefers "grouped" for the B/16 step (docs/tpu.md); it stays off the default
#   until L/14, v5e and remat are compiled with it too.
AUTO_KERNELS = {"cpu": "matmul+shifted", "gpu": "cudnn+shifted"}


class Kernels(NamedTuple):
    """The resolved ``UniFormerV2.kernels``: :func:`attention`'s and
    :class:`DepthwiseConv3D`'s implementations."""

    attention: str = "matmul"
    conv: str = "shifted"


def parse_kernels(value: str) -> Kernels | None:
    """``"auto"`` -> None, ``"ATTENTION+CONV"`` -> :class:`Kernels`; otherwise a ValueError
    naming ``UniFormerV2.kernels``."""
    if value == "auto":
        return None
    attention_kernel, _, conv_kernel = str(value).partition("+")
    if attention_kernel not in ATTENTION_KERNELS or conv_kernel not in CONV_KERNELS:
        raise ValueError(f"UniFormerV2.kernels={value!r}: expected 'auto' or ATTENTION+CONV, "
                         f"ATTENTION one of {'|'.join(ATTENTION_KERNELS)} and CONV one of "
                         f"{'|'.join(CONV_KERNELS)}, e.g. 'matmul+shifted'")
    return Kernels(attention_kernel, conv_kernel)


def cudnn_attention_problem(dtype: Dtype, head_dim: int, backend: str,
                            tokens: int | None = None) -> str | None:
    """Why cuDNN's flash attention cannot run (or train, for ``tokens`` a sequence) here,
    or None when it can."""
    if backend != "gpu":
        return f"cuDNN attention needs a GPU, and the backend is {backend!r}"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN flash attention needs 16-bit compute, and dtype is {jnp.dtype(dtype).name}"
    if head_dim % 8 or head_dim > 128:
        return f"cuDNN flash attention needs head_dim a multiple of 8 up to 128, not {head_dim}"
    if tokens is not None and tokens % 2:
        return f"JAX's cuDNN attention trains only on an even number of tokens, not {tokens}"
    return None


def choose_kernels(value: str, dtype: Dtype, head_dim: int, backend: str | None = None,
                   tokens: int | None = None) -> Kernels:
    """``UniFormerV2.kernels`` resolved for ``backend`` (default: JAX's default backend):
    "auto" per :data:`AUTO_KERNELS` (cuDNN only where it applies to sequences of
    ``tokens``), an explicit choice as given. An explicit cuDNN attention that cannot run
    raises ValueError naming the field."""
    backend = backend or jax.default_backend()
    kernels = parse_kernels(value)
    if kernels is None:
        kernels = parse_kernels(AUTO_KERNELS.get(backend, "matmul+shifted"))
        if kernels.attention == "cudnn" and cudnn_attention_problem(dtype, head_dim, backend, tokens):
            kernels = kernels._replace(attention="matmul")
    elif kernels.attention == "cudnn" and (problem := cudnn_attention_problem(dtype, head_dim, backend)):
        raise ValueError(f"UniFormerV2.kernels={value!r}: {problem}; 'auto' picks "
                         f"{AUTO_KERNELS.get(backend, 'matmul+shifted')!r} on this backend")
    return kernels
