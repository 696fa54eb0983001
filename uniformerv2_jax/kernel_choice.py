"""How the backbone's attention and the depthwise convolutions are computed, per backend.

``UniFormerV2.kernels`` is "auto" or "ATTENTION+CONV"; :func:`choose_kernels` resolves it
when the model is traced (:func:`layers.attention` and :class:`layers.DepthwiseConv3D`
take the result).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from uniformerv2_jax import frame_attention

Dtype = Any

# The kernels of ``UniFormerV2.kernels``: "auto", or "ATTENTION+CONV" with
# ATTENTION the backbone self-attention's form and CONV the depthwise convolutions' one.
# two batched matmuls (ours); jax.nn.dot_product_attention's two; frame_attention's kernel
ATTENTION_KERNELS = ("matmul", "xla", "cudnn", "pallas")
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
# * tpu: pallas+grouped, with the matmul attention where frame_attention's kernel does
#   not apply (it needs 16-bit compute and frames whose logits fit its VMEM budget:
#   every zoo model's, up to L/14@336's 577 tokens). The kernel keeps each frame's logits
#   in VMEM, where XLA writes float32 logits and probabilities of every head to HBM and
#   back; the TPU compiler runs the grouped depthwise convolution as one operation, where
#   the shifted sums' backward is a chain of memory-bound passes. The compiler's
#   estimates for each form are in docs/tpu.md.
# * any other: matmul+shifted.
AUTO_KERNELS = {"cpu": "matmul+shifted", "gpu": "cudnn+shifted", "tpu": "pallas+grouped"}


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


def pallas_attention_problem(dtype: Dtype, head_dim: int, backend: str,
                             tokens: int | None = None) -> str | None:
    """Why "auto" does not pick frame_attention's kernel here, or None when it does (it
    runs anywhere when named: on TPU compiled, elsewhere interpreted)."""
    if backend != "tpu":
        return f"the Pallas attention kernel is compiled only for TPU, and the backend is {backend!r}"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"the Pallas attention kernel is for 16-bit compute, and dtype is {jnp.dtype(dtype).name}"
    return frame_attention.layout_problem(tokens or 1, max(frame_attention.LANES, head_dim),
                                          jnp.dtype(dtype).itemsize)


def choose_kernels(value: str, dtype: Dtype, head_dim: int, backend: str | None = None,
                   tokens: int | None = None) -> Kernels:
    """``UniFormerV2.kernels`` resolved for ``backend`` (default: JAX's default backend):
    "auto" per :data:`AUTO_KERNELS` (cuDNN and Pallas only where they apply to sequences of
    ``tokens``), an explicit choice as given. An explicit cuDNN attention that cannot run,
    or a Pallas one whose layout the kernel cannot take, raises ValueError naming the field."""
    backend = backend or jax.default_backend()
    kernels = parse_kernels(value)
    if kernels is None:
        kernels = parse_kernels(AUTO_KERNELS.get(backend, "matmul+shifted"))
        if kernels.attention == "cudnn" and cudnn_attention_problem(dtype, head_dim, backend, tokens):
            kernels = kernels._replace(attention="matmul")
        if kernels.attention == "pallas" and pallas_attention_problem(dtype, head_dim, backend, tokens):
            kernels = kernels._replace(attention="matmul")
    elif kernels.attention == "cudnn" and (problem := cudnn_attention_problem(dtype, head_dim, backend)):
        raise ValueError(f"UniFormerV2.kernels={value!r}: {problem}; 'auto' picks "
                         f"{AUTO_KERNELS.get(backend, 'matmul+shifted')!r} on this backend")
    elif kernels.attention == "pallas" and (problem := frame_attention.layout_problem(
            tokens or 1, max(frame_attention.LANES, head_dim), jnp.dtype(dtype).itemsize)):
        raise ValueError(f"UniFormerV2.kernels={value!r}: {problem}")
    return kernels
