"""A config's step compiled ahead of time for TPU slices or GPU hosts.

  uniformerv2 compile --config=configs/kinetics.py:k400/b16_8x224 --topology=v5p-64
      [--num_slices=2] [--batch_per_device=N | --find_batch] [--step=train|eval]
      [--config.x=y ...] [--json=PATH] [--save=PATH]
      The exact step compiled for a TPU slice (v4-32, v5e-256, v5p-128, v6e-64) or GPU
      hosts (h100-8, 2xh200-8) that need not be present (the tpu / cuda extra): memory a
      chip against its HBM, FLOPs, collectives, and on TPU the compiler's step-time
      estimate and MFU. Exit status 1 when it does not fit. --save keeps the executable
      for train --compiled=PATH.
"""

from __future__ import annotations

import sys

from absl import app, flags

from uniformerv2_jax.cli import common


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    common.define_config(values, argv, "configs/<exp>.py[:arg]; --config.<field>=<value> sets a field.")
    flags.DEFINE_string("topology", None, "v4-32, v5e-256, v5p-128, v6e-64 (Cloud TPU names), "
                        "h100-8, 2xh200-8 (GPU hosts), local (this host's devices).", flag_values=values)
    flags.DEFINE_integer("num_slices", 1, "TPU slices (data parallel across them, "
                         "config.mesh.dcn_data).", flag_values=values)
    flags.DEFINE_integer("batch_per_device", None, "clips (train) or videos (eval) a chip (default: "
                         "config.batch_size over the batch-sharded chips).", flag_values=values)
    flags.DEFINE_bool("find_batch", False, "find the largest batch a chip that fits.", flag_values=values)
    flags.DEFINE_enum("step", "train", ["train", "eval"], "which step.", flag_values=values)
    flags.DEFINE_string("json", None, "write the report (one JSON object) here.", flag_values=values)
    flags.DEFINE_string("save", None, "write the compiled step here (PATH and PATH.json).",
                        flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import topology

    if topology.needs_deviceless(args.topology or ""):
        topology.deviceless_environment()  # before JAX starts a backend: compile-only devices
    from uniformerv2_jax import aot, executable

    if args.config is None or not args.topology:
        raise app.UsageError("compile needs --config=configs/<exp>.py[:arg] and --topology=NAME "
                             "(e.g. v5p-64, v5e-256, v6e-64, h100-8)")
    if args.find_batch and args.batch_per_device:
        raise app.UsageError("give --batch_per_device=N or --find_batch, not both")
    try:
        target = topology.describe(args.topology, args.num_slices)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    config = args.config
    if args.find_batch:
        result = aot.find_batch(config, target, args.step, progress=lambda r: print(
            f"  {r['batch_per_device']} a chip: " + (f"fits, peak {r['peak_gib']:.2f} GiB"
                                                     if r["fits"] else "does not fit"), flush=True))
    else:
        batch = args.batch_per_device
        if batch is None:
            total = config.batch_size if args.step == "train" else config.eval_batch_size
            shards = aot.batch_shards(config, target)
            if total % shards:
                raise app.UsageError(f"config batch {total} does not split over {shards} chips: "
                                     "give --batch_per_device")
            batch = max(1, total // shards)
        result = aot.compile_step(config, target, batch, args.step)
    print(aot.format_report(result.report))
    if args.json:
        aot.dump(result.report, args.json)
    if args.save and result.compiled is not None:
        executable.save(result.compiled, result.report, args.save)
        print(f"wrote {args.save} (and {args.save}.json): train --compiled={args.save}")
    if not result.report["fits"]:
        sys.exit(1)
