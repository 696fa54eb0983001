"""The kernel forms ``UniFormerV2.kernels`` chooses between, side by side on this backend.

    python benchmarks/kernels.py [--batch 1] [--repeats 5]

B/16 8x224 shapes per clip: the backbone self-attention (8 frames x 197 tokens, 12 heads
of 64) as our two batched matmuls vs ``jax.nn.dot_product_attention`` (its XLA form; its
cuDNN form too on a GPU with bfloat16), and the depthwise convolutions of the local MHRA
((3,1,1) over 512 channels) and of the DPE ((3,3,3) over 768) as fused shifted sums vs
``lax.conv_general_dilated`` with one group per channel. Milliseconds (median) of the
forward and of forward + backward (gradients of every input and of the conv kernel), the
speed relative to our form, and the largest deviation from it (of the output and of each
gradient, relative to that array's largest magnitude). What ``"auto"`` picks here is
printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax.kernel_choice import choose_kernels
from uniformerv2_jax.layers import DepthwiseConv3D, attention


def milliseconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def forward_and_backward(fn):
    """(forward, forward + backward) of ``fn(*args) -> array``, jitted; the backward
    takes the gradient of every argument against a fixed random cotangent."""
    def loss(*args):
        out = fn(*args).astype(jnp.float32)
        return jnp.vdot(out, jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape))

    def both(*args):
        return jax.grad(loss, argnums=tuple(range(len(args))))(*args)

    return jax.jit(fn), jax.jit(both)


def cases(batch: int, dtype):
    """(operation, {form: fn}, args) at B/16 8x224 sizes."""
    rng = np.random.default_rng(0)
    qkv = [jnp.asarray(rng.standard_normal((8 * batch, 197, 12, 64)), jnp.float32) for _ in range(3)]
    forms = {"two matmuls (ours)": lambda q, k, v: attention(q, k, v, dtype, "matmul"),
             "dot_product_attention xla": lambda q, k, v: attention(q, k, v, dtype, "xla")}
    if jax.default_backend() == "gpu" and jnp.dtype(dtype).itemsize == 2:
        forms["dot_product_attention cudnn"] = lambda q, k, v: attention(q, k, v, dtype, "cudnn")
    yield "self-attention", forms, qkv
    for label, size, channels in (("local MHRA conv (3,1,1)", (3, 1, 1), 512),
                                  ("DPE conv (3,3,3)", (3, 3, 3), 768)):
        x = jnp.asarray(rng.standard_normal((batch, 8, 14, 14, channels)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((*size, channels)), jnp.float32)
        bias = jnp.zeros((channels,), jnp.float32)

        def conv(form, size=size, bias=bias):
            module = DepthwiseConv3D(size, implementation=form)
            return lambda inputs, weights: module.apply({"params": {"kernel": weights, "bias": bias}}, inputs)

        yield label, {"shifted sums (ours)": conv("shifted"), "grouped conv": conv("grouped")}, [x, kernel]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="clips")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the attention's compute dtype (the convolutions are float32)")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), B/16 8x224, "
          f"batch {args.batch}, {args.dtype} attention, median of {args.repeats}\n")
    print("| operation | form | forward ms | speed vs ours | fwd+bwd ms | speed vs ours | max rel dev |")
    print("|---|---|---|---|---|---|---|")
    for label, forms, inputs in cases(args.batch, dtype):
        reference = None
        for form, fn in forms.items():
            forward, both = forward_and_backward(fn)
            fwd, fb = milliseconds(forward, inputs, args.repeats), milliseconds(both, inputs, args.repeats)
            outputs = [forward(*inputs), *both(*inputs)]
            if reference is None:
                reference, base = outputs, (fwd, fb)
            deviation = max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()
                                  / jnp.abs(b.astype(jnp.float32)).max())
                            for a, b in zip(outputs, reference))
            print(f"| {label} | {form} | {fwd:.1f} | {base[0] / fwd:.2g}x | {fb:.1f} | "
                  f"{base[1] / fb:.2g}x | {deviation:.1e} |", flush=True)
    chosen = choose_kernels("auto", dtype, 64)
    print(f"\nkernels='auto' here ({args.dtype}, head_dim 64): {chosen.attention}+{chosen.conv}")


if __name__ == "__main__":
    main()
