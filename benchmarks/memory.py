"""Per-device memory of the compiled train step, from XLA's own accounting.

    python benchmarks/memory.py [--fsdp 1 8 64] [--quick | --tiny]
    python benchmarks/memory.py --one-device [--tiny]

Compile only: abstract state and batch (no arrays are allocated). By default: under FSDP,
one clip per device, bfloat16 compute, scanned layers, on simulated CPU devices.
``arguments`` is the sharded state plus the batch, ``temporaries`` the activations and
workspace XLA plans for; the sum is what one chip holds during a step (XLA:TPU and
XLA:GPU plan similarly, not identically).

``--one-device``: what ``model.remat`` saves in the real step on one device, B/16 8x224,
batch 2, float32 (the K400 recipe): loop and ``scan``, without remat, with the remat
``model.remat`` used before (``nn.remat``, whose recomputation XLA:CPU schedules into the
forward pass: see ``layers.remat``) and with today's. Temporaries in bytes, and XLA's
FLOPs of the step (the recomputed forward included; not given with ``scan``, whose loop
body XLA counts once).

``--tiny``: the same tables for ``benchmarks/train_speed.py``'s ``--tiny`` model (and its
recipe, ``config.base_config``) instead of the zoo's: seconds a compile, not minutes, a
check that the script works. The first table then gives bytes, not GiB.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.train_speed import tiny_config
from uniformerv2_jax import experiment as experiment_lib
from uniformerv2_jax import model as model_lib
from uniformerv2_jax import perf, sharding, train
from uniformerv2_jax.zoo import Row, experiment

CASES = [  # label, zoo row (only the architecture and frames matter here), remat
    ("B/16 8x224", Row("B/16", 8, "clip", 1, 1e-5, 1, 0, (1, 1)), False),
    ("L/14 32x224", Row("L/14", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), False),
    ("L/14 32x224 remat", Row("L/14", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), True),
    ("L/14@336 32x336 remat", Row("L/14@336", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), True),
]
TINY_CASE = ("tiny", None, False)  # row None: train_speed.py's --tiny model
GIB = 2**30


def compiled_step(row: Row | None, remat: bool, fsdp: int, scan: bool = True, dtype: str = "bfloat16",
                  batch_size: int | None = None) -> tuple[jax.stages.Compiled, model_lib.UniFormerV2]:
    """The train step compiled for abstract inputs (default: one clip per device); ``row``
    None: the tiny model."""
    config = experiment("k400", row) if row else tiny_config()
    config.model.scan, config.model.remat, config.model.dtype = scan, remat, dtype
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, fsdp, 1
    config.batch_size = batch_size or fsdp
    exp = experiment_lib.build(config, 1, jax.devices()[:fsdp])
    m, batch_sharding = exp.model, sharding.batch_sharding(exp.mesh)
    n = config.batch_size
    batch = {"video": jax.ShapeDtypeStruct((n, m.t_size, m.input_resolution, m.input_resolution, 3),
                                           jnp.float32, sharding=batch_sharding),
             "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sharding)}
    return train.compile_train_step(exp, batch), m


def step_memory(row: Row | None, remat: bool, fsdp: int) -> tuple[int, int]:
    """Bytes per device of the arguments and of the temporaries."""
    m = compiled_step(row, remat, fsdp)[0].memory_analysis()
    return m.argument_size_in_bytes, m.temp_size_in_bytes


def flax_remat(module_class, static_argnums):
    """What ``model.remat`` used before for the loop: ``nn.remat`` with its CSE barrier."""
    return nn.remat(module_class, prevent_cse=True, static_argnums=static_argnums)


def one_device(tiny: bool) -> None:
    """Temporaries of the B/16 8x224 (or tiny) batch-2 float32 step on one device, remat off and on."""
    label, row, _ = TINY_CASE if tiny else CASES[0]
    cases = [("loop", False, False, "no"), ("loop", True, True, "`nn.remat` (before)"),
             ("loop", False, True, "`layers.remat` (now)"), ("scan", False, False, "no"),
             ("scan", False, True, "`nn.remat` in `nn.scan`")]
    recipe = "the base recipe" if tiny else "the K400 recipe"
    print(f"jax {jax.__version__}, one {jax.devices()[0].device_kind} device; {label}, batch 2, "
          f"float32, {recipe}; XLA's plan of the compiled train step\n")
    print("| layers | remat | temporaries (bytes) | GiB | vs no remat | arguments GiB | GFLOP/step |")
    print("|---|---|---|---|---|---|---|")
    baseline = {}
    for layers, old, remat, how in cases:
        scan = layers == "scan"
        with mock.patch.object(model_lib, "remat", flax_remat if old else model_lib.remat):
            compiled, model = compiled_step(row, remat, 1, scan=scan, dtype="float32", batch_size=2)
        m = compiled.memory_analysis()
        temp = m.temp_size_in_bytes
        baseline.setdefault(layers, temp)
        flops = perf.step_flops(compiled, model)
        print(f"| {layers} | {how} | {temp:,} | {temp / GIB:.2f} | {temp / baseline[layers]:.2f}x | "
              f"{m.argument_size_in_bytes / GIB:.2f} | {f'{flops / 1e9:,.0f}' if flops else 'n/a'} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fsdp", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--quick", action="store_true", help="B/16 only")
    parser.add_argument("--tiny", action="store_true", help="train_speed.py's tiny model only (seconds)")
    parser.add_argument("--one-device", action="store_true",
                        help="remat's saving in the B/16 float32 batch-2 step on one device")
    args = parser.parse_args()
    if args.one_device:
        return one_device(args.tiny)
    cases = [TINY_CASE] if args.tiny else CASES[:1] if args.quick else CASES
    # The tiny model's state is a few MiB, which GiB would print as 0.00.
    unit, scale, spec = ("bytes", 1, ",.0f") if args.tiny else ("GiB", GIB, ".2f")
    print(f"jax {jax.__version__}, {jax.device_count()} simulated devices; {unit} per device, "
          "one clip per device, bfloat16 compute, float32 parameters and AdamW state\n")
    print("| model | fsdp | arguments (state + batch) | temporaries | total |")
    print("|---|---|---|---|---|")
    for label, row, remat in cases:
        for fsdp in args.fsdp:
            arguments, temporaries = (b / scale for b in step_memory(row, remat, fsdp))
            print(f"| {label} | {fsdp} | {arguments:{spec}} | {temporaries:{spec}} | "
                  f"{arguments + temporaries:{spec}} |", flush=True)


if __name__ == "__main__":
    main()
