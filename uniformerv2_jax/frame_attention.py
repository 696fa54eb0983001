"""Self-attention over one frame's tokens as a Pallas TPU kernel, forward and backward.

A frame holds few tokens (197 for B/16 at 224, 257 for L/14, 577 for L/14 at 336), so
a whole frame's logits fit in the TPU's vector memory (:func:`layout_problem` says where
they do not): the kernel computes ``softmax(q k^T) v`` of a block of frames and heads in
one go, and the backward kernel recomputes the probabilities instead of reading them. Neither ever writes the
``(L, L)`` logits or probabilities to HBM, which XLA's two matmuls and softmax do for
every head, in float32, forward and backward.

Layout: q, k, v and the output are ``(B, L, H * D)``, heads side by side in the lane
axis, as the projections produce them. The kernel reads them token-major, as
``(L, B, H * D)``: XLA lays a ``(B, L, C)`` activation out with its odd ``L = 1 + grid**2``
outermost (as the tile's rows it would be padded), so this view costs no copy, while a
frame-major kernel costs a relayout of q, k, v and the output in every layer. A grid step
takes an ``(L, 8, 128)`` block: 8 frames (one per tile row) and ``128 // D`` heads
(:func:`block_width`); each head is picked by zeroing the other heads' lanes, which costs
no extra MXU passes on a 128-wide MXU (a ``D = 64`` contraction fills half of it either
way).

Numbers: logits and softmax in float32, probabilities cast to the input dtype before
the second matmul, float32 accumulation, as :func:`layers.attention`'s "matmul" form.
The backward keeps the probabilities' cotangent in float32 (XLA's form rounds it to the
input dtype). The caller scales q.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

Array = jax.Array

LANES = 128  # the lane width of a TPU vector register and of its MXU
# VMEM a grid step may use: its double-buffered blocks plus the float32 (L, L) logits,
# probabilities and their cotangents (six at once in the backward); the scoped limit the
# kernel asks for leaves room above it.
VMEM_BUDGET = 24 * 2**20
VMEM_LIMIT = 32 * 2**20
_ARRAYS = 7  # arrays of the backward kernel: q, k, v, d_out in; dq, dk, dv out
FRAMES = 8  # frames of one grid step: whole (8, 128) tiles of the token-major layout


def block_width(width: int, head_dim: int) -> int:
    """Lanes of one head block: 128 (``128 // D`` heads) where the heads tile them, one
    head where ``D`` is a multiple of 128, else the whole width (every head at once)."""
    if LANES % head_dim == 0 and width % LANES == 0:
        return LANES
    return head_dim if head_dim % LANES == 0 else width


def _step_bytes(tokens: int, frames: int, lanes: int, itemsize: int) -> int:
    return 2 * _ARRAYS * tokens * frames * lanes * itemsize + 6 * 4 * tokens * tokens


def layout_problem(tokens: int, lanes: int = LANES, itemsize: int = 2) -> str | None:
    """Why the kernel cannot take frames of ``tokens`` tokens in head blocks of ``lanes``
    lanes (:func:`block_width`) and ``itemsize``-byte elements, or None."""
    need = _step_bytes(tokens, FRAMES, lanes, itemsize)
    if need > VMEM_BUDGET:
        return (f"{tokens} tokens: a grid step of {FRAMES} frames needs {need} bytes of the "
                f"kernel's {VMEM_BUDGET}-byte VMEM budget")
    return None


def _head_masks(head_dim: int, shape: tuple[int, int]) -> list[Array]:
    """One (L, lanes) mask per head of a block: its lanes. Built at full shape (Mosaic has
    no sublane broadcast for some layouts)."""
    lane = lax.broadcasted_iota(jnp.int32, shape, 1)
    return [lax.div(lane, head_dim) == h for h in range(shape[1] // head_dim)]


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
    """A 2D matmul contracting axis ``contract[0]`` of ``a`` with ``contract[1]`` of ``b``,
    accumulated in float32: full precision for float32 operands, the MXU's native pass
    for 16-bit ones (exact products; Mosaic takes no other precision for them, whatever
    ``jax_default_matmul_precision`` says)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _softmax(logits: Array) -> Array:
    e = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, *, head_dim: int, lanes: int):
    masks = _head_masks(head_dim, (q_ref.shape[0], lanes))
    for f in range(q_ref.shape[1]):
        cols = (slice(None), f, slice(None))
        q, k, v = q_ref[cols], k_ref[cols], v_ref[cols]
        out = jnp.zeros(q.shape, jnp.float32)
        for mask in masks:
            probs = _softmax(_dot(q, jnp.where(mask, k, 0), (1, 1)))
            out += _dot(probs.astype(v.dtype), jnp.where(mask, v, 0), (1, 0))
        o_ref[cols] = out.astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, head_dim: int,
                     lanes: int):
    masks = _head_masks(head_dim, (q_ref.shape[0], lanes))
    for f in range(q_ref.shape[1]):
        cols = (slice(None), f, slice(None))
        q, k, v, do = q_ref[cols], k_ref[cols], v_ref[cols], do_ref[cols]
        dq = jnp.zeros(q.shape, jnp.float32)
        dk = jnp.zeros(k.shape, jnp.float32)
        dv = jnp.zeros(v.shape, jnp.float32)
        for mask in masks:
            k_h, q_h = jnp.where(mask, k, 0), jnp.where(mask, q, 0)
            probs = _softmax(_dot(q, k_h, (1, 1)))  # (L, L), float32
            dv += _dot(probs.astype(do.dtype), jnp.where(mask, do, 0), (0, 0))
            dprobs = _dot(do, jnp.where(mask, v, 0), (1, 1))
            dlogits = (probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))).astype(q.dtype)
            dq += _dot(dlogits, k_h, (1, 0))
            dk += _dot(dlogits, q_h, (0, 0))
        for ref, grad in ((dq_ref, dq), (dk_ref, dk), (dv_ref, dv)):
            ref[cols] = grad.astype(ref.dtype)


def _call(kernel, inputs: list[Array], outputs: int, head_dim: int, matmuls: int) -> list[Array]:
    """Runs ``kernel`` on (B, L, W) arrays, seen as (L, B, W), over (frame, head) blocks;
    ``matmuls`` (L, L, D) products per head and frame for the cost estimate. B is padded
    with zero frames to a multiple of :data:`FRAMES` (Mosaic reads one frame of a block
    only where the block spans whole tile rows)."""
    frames, tokens, width = inputs[0].shape
    dtype = inputs[0].dtype
    lanes = block_width(width, head_dim)
    if problem := layout_problem(tokens, lanes, dtype.itemsize):
        raise ValueError(f"frame_attention: {problem}")
    padded = -(-frames // FRAMES) * FRAMES
    spec = pl.BlockSpec((tokens, FRAMES, lanes), lambda i, j: (0, i, j))
    heads = width // head_dim
    # The attention's own FLOPs, as XLA counts its matmul form (the zeroed lanes of the
    # other heads are not work; on a 128-wide MXU they take no extra passes).
    cost = pl.CostEstimate(
        flops=2 * matmuls * padded * heads * tokens * tokens * head_dim,
        transcendentals=padded * heads * tokens * tokens,
        bytes_accessed=(len(inputs) + outputs) * padded * tokens * width * dtype.itemsize)

    def run(interpret: bool, *arrays: Array) -> list[Array]:
        return pl.pallas_call(
            functools.partial(kernel, head_dim=head_dim, lanes=lanes),
            out_shape=[jax.ShapeDtypeStruct((tokens, padded, width), dtype)] * outputs,
            grid=(padded // FRAMES, width // lanes), in_specs=[spec] * len(inputs),
            out_specs=[spec] * outputs,
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"),
                                                 vmem_limit_bytes=VMEM_LIMIT),
            cost_estimate=cost, interpret=interpret)(*arrays)

    token_major = [jnp.pad(x, ((0, padded - frames), (0, 0), (0, 0))).transpose(1, 0, 2)
                   for x in inputs]
    # Mosaic on TPU; elsewhere (tests, CPU runs) Pallas' interpreter runs the same kernel.
    results = lax.platform_dependent(*token_major, tpu=functools.partial(run, False),
                                     default=functools.partial(run, True))
    return [y.transpose(1, 0, 2)[:frames] for y in results]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q: Array, k: Array, v: Array, head_dim: int) -> Array:
    return _call(_forward_kernel, [q, k, v], 1, head_dim, matmuls=2)[0]


def _attention_forward(q, k, v, head_dim):
    return _attention(q, k, v, head_dim), (q, k, v)


def _attention_backward(head_dim, residuals, d_out):
    q, k, v = residuals
    return tuple(_call(_backward_kernel, [q, k, v, d_out.astype(q.dtype)], 3, head_dim, matmuls=5))


_attention.defvjp(_attention_forward, _attention_backward)


def frame_attention(q: Array, k: Array, v: Array, head_dim: int) -> Array:
    """softmax(q k^T) v per head: q, k, v (B, L, H * D), heads side by side -> (B, L, H * D)
    in their dtype. q comes scaled. Under a mesh the frames split as the logical axis
    ``batch`` and the heads as ``heads`` (one kernel call per shard)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _attention(q, k, v, head_dim)
    # Frames as the logical axis "batch", heads as "heads"; an axis its shards do not divide
    # (a model initialised on a small example batch) stays whole.
    axes = [_dividing(mesh, names, size) for names, size in zip(
        nn.logical_to_mesh_axes(("batch", None, "heads")), (q.shape[0], 1, q.shape[-1] // head_dim))]
    spec = P(*axes)
    return jax.shard_map(lambda q, k, v: _attention(q, k, v, head_dim), mesh=mesh,
                         in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _dividing(mesh, names, size: int):
    """``names`` (mesh axes of one array axis) where their shards divide ``size``, else None."""
    if names is None:
        return None
    shards = math.prod(mesh.shape[n] for n in ((names,) if isinstance(names, str) else names))
    return names if size % shards == 0 else None
