"""Forward time per clip of UniFormerV2-B/16 8x224 on this machine's default backend.

    python benchmarks/forward_speed.py [--batch 1] [--repeats 5]

Prints, per setting (K400: no local MHRA; SSv2-style: local MHRA x2) and compute dtype:
compile time, seconds per clip, GFLOP per clip (XLA's count of the compiled program),
achieved GFLOP/s, and for bfloat16 the largest logit deviation from float32.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax import create_model

SETTINGS = {
    "K400 (no local MHRA)": dict(),
    "local MHRA x2": dict(no_lmhra=False, double_lmhra=True),
}


def bench(model, variables, video, repeats):
    apply = jax.jit(model.apply)
    start = time.perf_counter()
    compiled = apply.lower(variables, video).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    logits = compiled(variables, video).block_until_ready()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(variables, video).block_until_ready()
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times)), float(cost.get("flops", float("nan"))), logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"batch {args.batch}, median of {args.repeats}")
    header = (f"{'setting':<22} {'dtype':<9} {'compile s':>9} {'s/clip':>8} "
              f"{'GFLOP/clip':>10} {'GFLOP/s':>8} {'max|dlogit|':>11}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    video = rng.standard_normal((args.batch, 8, 224, 224, 3)).astype(np.float32)
    for name, fields in SETTINGS.items():
        model = create_model("B/16", **fields)
        variables = jax.jit(model.init)(jax.random.key(0), video[:1])
        # Perturb every variable (zero-initialised outputs too) so that every path is live.
        noise = jax.random.split(jax.random.key(1), len(jax.tree.leaves(variables)))
        variables = jax.tree.map(
            lambda x, k: x + 0.01 * jax.random.normal(k, x.shape), variables,
            jax.tree.unflatten(jax.tree.structure(variables), list(noise)))
        reference = None
        for dtype in (jnp.float32, jnp.bfloat16):
            compile_s, seconds, flops, logits = bench(
                model.clone(dtype=dtype), variables, video, args.repeats)
            per_clip = seconds / args.batch
            gflop = flops / 1e9 / args.batch
            deviation = "" if reference is None else f"{float(jnp.abs(logits - reference).max()):.2e}"
            reference = logits if reference is None else reference
            print(f"{name:<22} {jnp.dtype(dtype).name:<9} {compile_s:9.1f} {per_clip:8.3f} "
                  f"{gflop:10.1f} {gflop / per_clip:8.0f} {deviation:>11}")


if __name__ == "__main__":
    main()
