"""CPU train step with and without jemalloc, and per compute dtype, side by side.

    python benchmarks/cpu_step.py [--config=b16_8x224] [--batch=2] [--steps=3] [--warmup=1]
        [--allocators=system,jemalloc] [--dtypes=float32] [--rounds=1] [--json=PATH]
    python benchmarks/cpu_step.py --tiny --dtypes=float32,bfloat16     # seconds

The allocator is fixed when a process starts (``LD_PRELOAD``), so each (allocator,
dtype) variant runs in a subprocess of its own: the same train step as training's
(``train.compile_train_step`` of ``benchmarks/train_speed.py``'s config: random
initialisation, a random batch, fwd + bwd + AdamW), ``--warmup`` untimed steps, then
``--steps`` timed ones. The variants take turns, ``--rounds`` times over, so that a
change in the machine's load hits all of them. Per variant it prints the median step
time and, per step, the minor page faults and the system and user CPU seconds
(``getrusage``), the allocator found in the process's memory map, and the speed relative
to the first variant (``--dtypes``, then ``--allocators``, give the order). ``jemalloc``
needs the library (``apt-get install libjemalloc2``; see ``uniformerv2_jax/cpu.py``); it
is skipped with a note where it is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from uniformerv2_jax import cpu  # noqa: E402

ALLOCATORS = ("system", "jemalloc")


@dataclasses.dataclass
class Row:
    allocator: str
    dtype: str
    loaded: str  # the malloc library in /proc/self/maps
    compile_seconds: float
    step_seconds: list[float]
    minor_faults: list[int]
    system_seconds: list[float]
    user_seconds: list[float]
    gflop: float | None


def allocator_env(allocator: str) -> dict[str, str] | None:
    """The environment of a child with ``allocator``, None where it is not installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    preload = " ".join(p for p in os.environ.get("LD_PRELOAD", "").split() if "jemalloc" not in p)
    if preload:
        env["LD_PRELOAD"] = preload
    if allocator == "system":
        return env | {cpu.SWITCH: "0"}
    return cpu.jemalloc_env({k: v for k, v in env.items() if k != cpu.SWITCH})


def loaded_malloc() -> str:
    maps = Path("/proc/self/maps")
    names = {line.split()[-1] for line in maps.read_text().splitlines()} if maps.exists() else set()
    found = sorted(Path(n).name for n in names if "jemalloc" in n or "tcmalloc" in n)
    return ", ".join(found) or "system (glibc)"


def child(args) -> Row:
    """One variant in this process: compile, warm up, time ``args.steps`` steps."""
    import jax
    import train_speed

    from uniformerv2_jax import experiment, perf, train

    config_args = argparse.Namespace(tiny=args.tiny, config=args.config, dtype=args.dtype,
                                     remat=False, mesh="-1,1,1", batch_per_device=args.batch)
    config = train_speed.make_config(config_args)
    exp = experiment.build(config, config.batch_size * (args.warmup + args.steps))
    state = train.initial_state(exp)
    batch = train_speed.random_batch(exp)
    start = time.perf_counter()
    compiled = train.compile_train_step(exp, batch)
    compile_seconds = time.perf_counter() - start
    row = Row(args.allocator, args.dtype, loaded_malloc(), compile_seconds, [], [], [], [],
              None)
    flops = perf.step_flops(compiled, exp.model)
    row.gflop = flops / 1e9 if flops else None
    for i in range(args.warmup + args.steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        if i >= args.warmup:
            row.step_seconds.append(seconds)
            row.minor_faults.append(after.ru_minflt - before.ru_minflt)
            row.system_seconds.append(after.ru_stime - before.ru_stime)
            row.user_seconds.append(after.ru_utime - before.ru_utime)
    return row


def run_variant(args, allocator: str, dtype: str) -> Row | None:
    env = allocator_env(allocator)
    if env is None:
        print(f"note: {allocator} skipped: no jemalloc library found (apt-get install libjemalloc2, "
              f"or {cpu.SWITCH}=PATH)", file=sys.stderr)
        return None
    command = [sys.executable, __file__, "--child", f"--allocator={allocator}", f"--dtype={dtype}",
               f"--config={args.config}", f"--batch={args.batch}", f"--steps={args.steps}",
               f"--warmup={args.warmup}"] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Row(**json.loads(out.strip().splitlines()[-1]))


def print_table(args, rows: dict[tuple[str, str], Row]) -> None:
    model = "tiny" if args.tiny else args.config
    flags = sorted(cpu.BFLOAT16_FLAGS & cpu.cpu_flags())
    bf16 = f"native bfloat16: {', '.join(flags)}" if flags else "no native bfloat16"
    print(f"\n{model}, batch {args.batch}, host {cpu_name()} ({os.cpu_count()} cores, {bf16}); per variant "
          f"the median of {args.steps * args.rounds} steps ({args.rounds} round(s) of {args.steps} "
          f"after {args.warmup} warm-up), per step:\n")
    print("| allocator | compute | loaded | compile s | step s | speed (first row = 1) | minor faults "
          "| system s | user s | GFLOP/s |")
    print("|---" * 10 + "|")
    first = None
    for row in rows.values():
        step = median(row.step_seconds)
        first = first or step
        rate = f"{row.gflop / step:.0f}" if row.gflop else "n/a"
        print(f"| {row.allocator} | {row.dtype} | {row.loaded} | {row.compile_seconds:.1f} | "
              f"{step:.3g} | {first / step:.2f}x | {median(row.minor_faults):,.0f} | "
              f"{median(row.system_seconds):.2f} | {median(row.user_seconds):.2f} | {rate} |")


def cpu_name() -> str:
    import train_speed

    return train_speed.host_cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="b16_8x224", help="as benchmarks/train_speed.py's")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of --config")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=1, help="turns of every variant")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--dtypes", default="float32", help="compute dtypes, comma-separated")
    parser.add_argument("--json", default="", help="also write the rows as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allocator", default="system", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(dataclasses.asdict(child(args))))
        return
    allocators = args.allocators.split(",")
    if unknown := set(allocators) - set(ALLOCATORS):
        parser.error(f"--allocators: unknown {sorted(unknown)}; expected some of {ALLOCATORS}")
    rows: dict[tuple[str, str], Row] = {}
    for round_ in range(args.rounds):
        for dtype in args.dtypes.split(","):
            for allocator in allocators:
                print(f"round {round_ + 1}/{args.rounds}: {allocator}, {dtype} ...", file=sys.stderr,
                      flush=True)
                row = run_variant(args, allocator, dtype)
                if row is None:
                    continue
                if (allocator, dtype) in rows:  # pool the rounds' steps
                    old = rows[(allocator, dtype)]
                    for name in ("step_seconds", "minor_faults", "system_seconds", "user_seconds"):
                        getattr(old, name).extend(getattr(row, name))
                else:
                    rows[(allocator, dtype)] = row
    print_table(args, rows)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows.values()],
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
