"""What several commands share: --config, the multi-host and CPU-guard flags, the start-up line."""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the demo's data, parity's fixtures


def define_config(values: flags.FlagValues, argv: list[str], help_text: str) -> None:
    """``--config=configs/<exp>.py[:arg]``, locked. ml_collections reads its
    ``--config.FIELD=VALUE`` overrides from ``argv`` itself, not from the parsed list."""
    config_flags.DEFINE_config_file("config", None, help_text, flag_values=values, lock_config=True,
                                    sys_argv=argv)


def define_devices(values: flags.FlagValues) -> None:
    """The flags of a command that runs on JAX's devices: many hosts, the CPU guard."""
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (automatic on Cloud "
                      "TPU and SLURM; else give --coordinator_address, --num_processes and --process_id).",
                      flag_values=values)
    flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0.",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes.", flag_values=values)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index.", flag_values=values)
    flags.DEFINE_bool("allow_cpu", False, "run a full-size model (B/16 and up) on the CPU backend "
                      "instead of stopping (JAX found no TPU or GPU).", flag_values=values)


def initialize_distributed(args: flags.FlagValues) -> None:
    import jax

    if args.distributed:
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)


def announce_devices(args: flags.FlagValues, width: int) -> None:
    """The start-up line (backend, devices, processes); stops a full-size model on the CPU
    backend unless --allow_cpu."""
    from uniformerv2_jax import topology

    print(topology.local_summary(), flush=True)
    try:
        topology.check_backend(width, args.allow_cpu)
    except RuntimeError as error:
        sys.exit(f"error: {error}")
