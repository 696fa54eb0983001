"""Per-device memory of the compiled train step under FSDP, from XLA's own accounting.

    python benchmarks/memory.py [--fsdp 1 8 64] [--quick]

Compile only: abstract state and batch (no arrays are allocated), one clip per device,
bfloat16 compute, scanned layers, on simulated CPU devices. ``arguments`` is the sharded
state plus the batch, ``temporaries`` the activations and workspace XLA plans for; the
sum is what one chip holds during a step (XLA:TPU and XLA:GPU plan similarly, not
identically).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from uniformerv2_jax import experiment as experiment_lib  # noqa: E402
from uniformerv2_jax import sharding, train  # noqa: E402
from uniformerv2_jax.config import Row, experiment  # noqa: E402

CASES = [  # label, zoo row (only the architecture and frames matter here), remat
    ("B/16 8x224", Row("B/16", 8, "clip", 1, 1e-5, 1, 0, (1, 1)), False),
    ("L/14 32x224", Row("L/14", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), False),
    ("L/14 32x224 remat", Row("L/14", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), True),
    ("L/14@336 32x336 remat", Row("L/14@336", 32, "clip", 1, 1e-5, 1, 0, (1, 1)), True),
]
GIB = 2**30


def step_memory(row: Row, remat: bool, fsdp: int) -> tuple[float, float]:
    config = experiment("k400", row)
    config.model.scan, config.model.remat, config.model.dtype = True, remat, "bfloat16"
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, fsdp, 1
    config.batch_size = fsdp  # one clip per device
    exp = experiment_lib.build(config, 1, jax.devices()[:fsdp])
    m, batch_sharding = exp.model, sharding.batch_sharding(exp.mesh)
    batch = {"video": jax.ShapeDtypeStruct((fsdp, m.t_size, m.input_resolution, m.input_resolution, 3),
                                           jnp.float32, sharding=batch_sharding),
             "label": jax.ShapeDtypeStruct((fsdp,), jnp.int32, sharding=batch_sharding)}
    with sharding.activate(exp.mesh, exp.rules):
        compiled = train.jit_train_step(exp).lower(exp.abstract_state, batch).compile()
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes / GIB, m.temp_size_in_bytes / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fsdp", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--quick", action="store_true", help="B/16 only")
    args = parser.parse_args()
    cases = CASES[:1] if args.quick else CASES
    print(f"jax {jax.__version__}, {jax.device_count()} simulated devices; GiB per device, "
          "one clip per device, bfloat16 compute, float32 parameters and AdamW state\n")
    print("| model | fsdp | arguments (state + batch) | temporaries | total |")
    print("|---|---|---|---|---|")
    for label, row, remat in cases:
        for fsdp in args.fsdp:
            arguments, temporaries = step_memory(row, remat, fsdp)
            print(f"| {label} | {fsdp} | {arguments:.2f} | {temporaries:.2f} | "
                  f"{arguments + temporaries:.2f} |", flush=True)


if __name__ == "__main__":
    main()
