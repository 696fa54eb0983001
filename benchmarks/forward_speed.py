"""Forward time per clip of UniFormerV2-B/16 8x224 on this machine's default backend.

    python benchmarks/forward_speed.py [--batch 1] [--repeats 5] [--kernels auto] [--tiny]

Prints three tables:
1. per setting (K400: no local MHRA; SSv2-style: local MHRA x2) and compute dtype
   (float32; bfloat16 with float32 weights; bfloat16 with bfloat16-stored weights):
   compile time, seconds per clip, GFLOP per clip (XLA's count of the compiled
   program), achieved GFLOP/s, and for bfloat16 the largest logit deviation from float32;
2. per component of one clip (one backbone layer, one global block, attention alone;
   ``benchmarks/kernels.py`` compares the attention and convolution forms);
3. compile time of the L/14 forward, plain loop vs ``scan`` (abstract inputs, no memory).

``--tiny``: all three for ``benchmarks/train_speed.py``'s ``--tiny`` model (4 frames of
32x32) instead of B/16 and L/14: under a minute in all, a check that the script works.
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

from benchmarks.train_speed import TINY
from uniformerv2_jax import UniFormerV2, create_model
from uniformerv2_jax.layers import attention
from uniformerv2_jax.model import GlobalUniBlock, LocalUniBlock

SETTINGS = {
    "K400 (no local MHRA)": dict(),
    "local MHRA x2": dict(no_lmhra=False, double_lmhra=True),
}


def seconds(fn, args, repeats):
    """Median wall time of a compiled call."""
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def create(tiny: bool, variant: str = "B/16", **fields) -> UniFormerV2:
    """The ``variant`` preset (8 frames of its resolution), or with ``tiny`` the tiny model."""
    return create_model("B/16", **TINY, **fields) if tiny else create_model(variant, **fields)


def describe(m: UniFormerV2, tiny: bool, variant: str = "B/16") -> str:
    """The model and its input: "B/16 8x224", "tiny 4x32"."""
    return f"{'tiny' if tiny else variant} {m.t_size}x{m.input_resolution}"


def video_shape(m: UniFormerV2, batch: int) -> tuple[int, ...]:
    return (batch, m.t_size, m.input_resolution, m.input_resolution, 3)


def components(m: UniFormerV2, label: str, repeats):
    """Milliseconds per clip of the parts of model ``m``, float32 and bfloat16."""
    tokens = jnp.ones((1, m.t_size, 1 + (m.input_resolution // m.patch_size) ** 2, m.width))
    query = jnp.ones((1, 1, m.n_dim))
    parts = {
        "backbone layer": (LocalUniBlock(m.heads, False, True, m.dw_reduction), (tokens,)),
        "backbone layer + local MHRA x2": (LocalUniBlock(m.heads, True, True, m.dw_reduction), (tokens,)),
        "global block (DPE + cross-attention)": (GlobalUniBlock(m.n_head, m.mlp_factor), (query, tokens)),
    }
    print(f"\n{f'component ({label})':<38} {'f32 ms':>8} {'bf16 ms':>8}")
    for name, (module, args) in parts.items():
        variables = jax.jit(module.init)(jax.random.key(0), *args)
        row = []
        for dtype in (jnp.float32, jnp.bfloat16):
            row.append(seconds(jax.jit(module.clone(dtype=dtype).apply), (variables, *args), repeats))
        print(f"{name:<38} {row[0] * 1e3:8.1f} {row[1] * 1e3:8.1f}")
    q = jnp.ones((m.t_size, tokens.shape[2], m.heads, m.width // m.heads))
    row = [seconds(jax.jit(lambda x, d=d: attention(x, x, x, d)), (q,), repeats)
           for d in (jnp.float32, jnp.bfloat16)]
    print(f"{'  of which self-attention (softmax)':<38} {row[0] * 1e3:8.1f} {row[1] * 1e3:8.1f}")


def compile_times(tiny: bool):
    """Compile time of the L/14 8x224 (or tiny) forward, loop vs scan, from abstract shapes."""
    model = create(tiny, "L/14")
    title = f"{describe(model, tiny, 'L/14')} forward"
    print(f"\n{title:<38} {'compile s':>9}")
    video = jax.ShapeDtypeStruct(video_shape(model, 1), jnp.float32)
    for scan in (False, True):
        model = model.clone(scan=scan)
        variables = jax.eval_shape(model.init, jax.random.key(0), video)
        start = time.perf_counter()
        jax.jit(model.apply).lower(variables, video).compile()
        print(f"{'scan' if scan else 'plain loop':<38} {time.perf_counter() - start:9.1f}")


# In NumPy, which compiles nothing: op by op JAX compiles a kernel for each shape of the
# variables, jitted whole one large program (either about 10 s even for the tiny model).
def perturbed(variables, seed: int = 1):
    """Every variable plus noise (zero-initialised outputs too), so that every path is live."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + 0.01 * rng.standard_normal(x.shape, np.float32)), variables)


def bfloat16(tree):
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x).astype(jnp.bfloat16)), tree)


def bench(model, variables, video, repeats):
    apply = jax.jit(model.apply)
    start = time.perf_counter()
    compiled = apply.lower(variables, video).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    logits = compiled(variables, video)
    elapsed = seconds(compiled, (variables, video), repeats)
    return compile_s, elapsed, float(cost.get("flops", float("nan"))), logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernels", default="auto", help="UniFormerV2.kernels of the whole model")
    parser.add_argument("--tiny", action="store_true", help="train_speed.py's tiny model instead (seconds)")
    args = parser.parse_args()

    title = describe(create(args.tiny), args.tiny)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), {title}, "
          f"batch {args.batch}, median of {args.repeats}, kernels={args.kernels}")
    header = (f"{'setting':<22} {'compute':<12} {'compile s':>9} {'s/clip':>8} "
              f"{'GFLOP/clip':>10} {'GFLOP/s':>8} {'max|dlogit|':>11}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    video = rng.standard_normal(video_shape(create(args.tiny), args.batch)).astype(np.float32)
    for name, fields in SETTINGS.items():
        model = create(args.tiny, kernels=args.kernels, **fields)
        variables = perturbed(jax.jit(model.init)(jax.random.key(0), video[:1]))
        # Inference may also store the weights in bfloat16, which saves casting them on
        # every call (float32 parameters stay the default, as training needs them).
        bf16_weights = {**variables, "params": bfloat16(variables["params"])}
        runs = {"float32": (jnp.float32, variables), "bfloat16": (jnp.bfloat16, variables),
                "bf16+bf16 w": (jnp.bfloat16, bf16_weights)}
        reference = None
        for label, (dtype, weights) in runs.items():
            compile_s, elapsed, flops, logits = bench(
                model.clone(dtype=dtype), weights, video, args.repeats)
            per_clip = elapsed / args.batch
            gflop = flops / 1e9 / args.batch
            deviation = "" if reference is None else f"{float(jnp.abs(logits - reference).max()):.2e}"
            reference = logits if reference is None else reference
            print(f"{name:<22} {label:<12} {compile_s:9.1f} {per_clip:8.3f} "
                  f"{gflop:10.1f} {gflop / per_clip:8.0f} {deviation:>11}")
    components(create(args.tiny), title, args.repeats)
    compile_times(args.tiny)


if __name__ == "__main__":
    main()
