"""Forward time per clip of UniFormerV2-B/16 8x224 on this machine's default backend.

    python benchmarks/forward_speed.py [--batch 1] [--repeats 5] [--kernels auto]

Prints three tables:
1. per setting (K400: no local MHRA; SSv2-style: local MHRA x2) and compute dtype
   (float32; bfloat16 with float32 weights; bfloat16 with bfloat16-stored weights):
   compile time, seconds per clip, GFLOP per clip (XLA's count of the compiled
   program), achieved GFLOP/s, and for bfloat16 the largest logit deviation from float32;
2. per component of one clip (one backbone layer, one global block, attention alone;
   ``benchmarks/kernels.py`` compares the attention and convolution forms);
3. compile time of the L/14 forward, plain loop vs ``scan`` (abstract inputs, no memory).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax import create_model
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


def components(repeats):
    """Milliseconds per clip of the parts of B/16 8x224, float32 and bfloat16."""
    tokens = jnp.ones((1, 8, 197, 768))
    query = jnp.ones((1, 1, 768))
    parts = {
        "backbone layer": (LocalUniBlock(12, False, True, 1.5), (tokens,)),
        "backbone layer + local MHRA x2": (LocalUniBlock(12, True, True, 1.5), (tokens,)),
        "global block (DPE + cross-attention)": (GlobalUniBlock(12, 4.0), (query, tokens)),
    }
    print(f"\n{'component (B/16, 8 frames)':<38} {'f32 ms':>8} {'bf16 ms':>8}")
    for name, (module, args) in parts.items():
        variables = module.init(jax.random.key(0), *args)
        row = []
        for dtype in (jnp.float32, jnp.bfloat16):
            row.append(seconds(jax.jit(module.clone(dtype=dtype).apply), (variables, *args), repeats))
        print(f"{name:<38} {row[0] * 1e3:8.1f} {row[1] * 1e3:8.1f}")
    q = jnp.ones((8, 197, 12, 64))
    row = [seconds(jax.jit(lambda x, d=d: attention(x, x, x, d)), (q,), repeats)
           for d in (jnp.float32, jnp.bfloat16)]
    print(f"{'  of which self-attention (softmax)':<38} {row[0] * 1e3:8.1f} {row[1] * 1e3:8.1f}")


def compile_times():
    """Compile time of the L/14 8x224 forward, loop vs scan, from abstract shapes."""
    print(f"\n{'L/14 8x224 forward':<38} {'compile s':>9}")
    video = jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32)
    for scan in (False, True):
        model = create_model("L/14", scan=scan)
        variables = jax.eval_shape(model.init, jax.random.key(0), video)
        start = time.perf_counter()
        jax.jit(model.apply).lower(variables, video).compile()
        print(f"{'scan' if scan else 'plain loop':<38} {time.perf_counter() - start:9.1f}")


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
    args = parser.parse_args()

    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"batch {args.batch}, median of {args.repeats}, kernels={args.kernels}")
    header = (f"{'setting':<22} {'compute':<12} {'compile s':>9} {'s/clip':>8} "
              f"{'GFLOP/clip':>10} {'GFLOP/s':>8} {'max|dlogit|':>11}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    video = rng.standard_normal((args.batch, 8, 224, 224, 3)).astype(np.float32)
    for name, fields in SETTINGS.items():
        model = create_model("B/16", kernels=args.kernels, **fields)
        variables = jax.jit(model.init)(jax.random.key(0), video[:1])
        # Perturb every variable (zero-initialised outputs too) so that every path is live.
        noise = jax.random.split(jax.random.key(1), len(jax.tree.leaves(variables)))
        variables = jax.tree.map(
            lambda x, k: x + 0.01 * jax.random.normal(k, x.shape), variables,
            jax.tree.unflatten(jax.tree.structure(variables), list(noise)))
        # Inference may also store the weights in bfloat16, which saves casting them on
        # every call (float32 parameters stay the default, as training needs them).
        bf16_weights = {**variables, "params": jax.tree.map(
            lambda x: x.astype(jnp.bfloat16), variables["params"])}
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
    components(args.repeats)
    compile_times()


if __name__ == "__main__":
    main()
