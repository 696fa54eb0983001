"""Train-step speed of a zoo config on this machine's devices, with MFU.

    python benchmarks/train_speed.py --config=b16_8x224 [--batch_per_device=1]
        [--dtype=bfloat16|float32] [--remat] [--mesh=-1,1,1] [--steps=5] [--json=PATH]
    python benchmarks/train_speed.py --tiny          # a seconds-long check on CPU

``--config`` is a shorthand of :data:`SHORTHANDS` (B/16 8x224, L/14 16x224 and 32x224,
L/14@336 32x336, all Kinetics-400 rows) or any zoo row as ``FILE.py:ARG`` of configs/
(``kinetics.py:k400/l14_32x224_k710``); only its architecture and frames matter. The
same command runs on CPU, GPU and TPU. The global batch is ``--batch_per_device`` times
the batch-sharded devices (``data x fsdp`` of ``--mesh``); the video is random, the
state randomly initialised (``init_from=scratch``).

It AOT-compiles ``train.jit_train_step`` for the abstract state and batch, runs
``--warmup`` steps, then times ``--steps`` steps (each to ``block_until_ready``) and
prints one table row: compile time, median step time, clips/s, XLA's FLOPs of the
compiled step per device (``perf.step_flops``: per device on a sharded mesh; not
available with ``model.scan``), the model TFLOP/s per device, the peak it is compared
with and the MFU, and memory per device (XLA's plan: state and batch arguments plus
temporaries; on GPU/TPU also the allocator's peak). The peak is the dense datasheet
figure of ``perf.PEAK_TFLOPS`` for the device kind and compute dtype; on CPU it is the
ceiling measured in the same run: the fastest of a few 2048x2048 ``jnp.dot``s in the
compute dtype, divided by the number of devices (simulated CPU devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, share the cores).
``--peak_tflops`` overrides it for a device the table does not list.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from uniformerv2_jax import aot, experiment, perf, sharding, train  # noqa: E402
from uniformerv2_jax import config as config_lib  # noqa: E402

SHORTHANDS = {
    "b16_8x224": "kinetics.py:k400/b16_8x224",
    "l14_16x224": "kinetics.py:k400/l14_16x224_k710",
    "l14_32x224": "kinetics.py:k400/l14_32x224_k710",
    "l14_336_32x336": "kinetics.py:k400/l14_336_32x336_k710",
}
# --tiny: a 2-layer model on 4 frames of 32x32 (seconds on a CPU).
TINY = dict(input_resolution=32, patch_size=8, width=64, layers=2, heads=2, t_size=4,
            return_list=(1,), n_dim=64, n_head=2, num_classes=10)
GIB = 2**30


def zoo_config(spec: str):
    """The config of a shorthand or of FILE.py:ARG in configs/ (its get_config(ARG))."""
    spec = SHORTHANDS.get(spec, spec)
    file, _, arg = spec.partition(":")
    path = ROOT / "configs" / Path(file).name
    if path.suffix != ".py" or not path.exists():
        raise SystemExit(f"--config={spec}: expected one of {sorted(SHORTHANDS)} or FILE.py:ARG "
                         f"of {ROOT / 'configs'}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def tiny_config():
    """The base config with the :data:`TINY` model (also what ``tpu_plan.py --models=tiny`` plans)."""
    config = config_lib.base_config()
    config.model = config_lib.model_config("B/16", **TINY)
    return config


def make_config(args):
    config = tiny_config() if args.tiny else zoo_config(args.config)
    config.init_from = config_lib.SCRATCH
    config.model.dtype = args.dtype
    config.model.remat = args.remat or config.model.remat
    sizes = [int(s) for s in args.mesh.split(",")]
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = sizes
    shape = dict(zip(sharding.AXES, sharding.mesh_shape(config.mesh, jax.device_count())))
    config.batch_size = args.batch_per_device * shape["data"] * shape["fsdp"]
    config.data.val = ""
    config_lib.validate(config)
    return config


def random_batch(exp: experiment.Experiment) -> dict[str, jax.Array]:
    """This process's rows of a random global batch, placed as training places it."""
    spec = aot.train_batch_spec(exp.config)  # the fields and shapes the pipeline delivers
    rows = exp.config.batch_size // jax.process_count()
    rng = np.random.default_rng(jax.process_index())
    local = {"video": rng.standard_normal((rows, *spec["video"].shape[1:]), np.float32),
             "label": rng.integers(0, exp.model.num_classes, rows).astype(np.int32)}
    if "targets" in spec:  # soft targets (mixup, cutmix, label smoothing)
        local["targets"] = np.eye(exp.model.num_classes, dtype=np.float32)[local["label"]]
    return sharding.global_batch(local, exp.mesh)


def matmul_tflops(dtype, size: int = 2048, repeats: int = 5) -> float:
    """The fastest of ``repeats`` ``size`` x ``size`` matmuls in ``dtype``, TFLOP/s."""
    x = jax.random.normal(jax.random.key(0), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    dot(x, x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        dot(x, x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak(args, exp) -> tuple[float | None, str]:
    """Peak TFLOP/s per device, and where it comes from."""
    device = exp.mesh.devices.flat[0]
    if args.peak_tflops:
        return args.peak_tflops, "--peak_tflops"
    table = perf.peak_tflops(device, exp.model.dtype)
    if table:
        return table, f"dense {jnp.dtype(exp.model.dtype).name} datasheet figure of {device.device_kind}"
    if device.platform == "cpu":
        measured = matmul_tflops(exp.model.dtype) / exp.mesh.devices.size
        return measured, (f"measured: 2048x2048 {jnp.dtype(exp.model.dtype).name} jnp.dot"
                          f" / {exp.mesh.devices.size} device(s)")
    return None, f"{device.device_kind!r} is not in perf.PEAK_TFLOPS"


@dataclasses.dataclass
class Result:
    model: str
    dtype: str
    remat: bool
    mesh: str
    batch: int
    batch_per_device: int
    compile_seconds: float
    step_seconds: float
    step_seconds_all: list[float]
    clips_per_second: float
    gflop_per_step_per_device: float | None
    tflops_per_device: float | None
    peak_tflops_per_device: float | None
    peak_source: str
    mfu: float | None
    arguments_gib: float | None
    temporaries_gib: float | None
    allocator_peak_gib: float | None
    devices: int
    device_kind: str
    backend: str
    jax_version: str
    host: str


def host_cpu() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else None
    return found[1].strip() if found else platform.processor() or platform.machine()


def allocator_peak_gib() -> float | None:
    """The largest ``peak_bytes_in_use`` of this process's devices (GPU/TPU; not on CPU)."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) / GIB if peaks else None


def run(args) -> Result:
    config = make_config(args)
    exp = experiment.build(config, config.batch_size * (args.warmup + args.steps))
    state = train.initial_state(exp)
    batch = random_batch(exp)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                  batch)
    start = time.perf_counter()
    compiled = train.compile_train_step(exp, abstract_batch)
    compile_seconds = time.perf_counter() - start
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))
    flops = perf.step_flops(compiled, exp.model)
    peak_tflops, peak_source = peak(args, exp)
    speed = perf.speed_values(step_seconds, config.batch_size, flops, peak_tflops)
    memory = compiled.memory_analysis()
    m = exp.model
    return Result(
        model=("tiny" if args.tiny else SHORTHANDS.get(args.config, args.config))
        + f" ({m.width}w x {m.layers}, {m.t_size}x{m.input_resolution})",
        dtype=jnp.dtype(m.dtype).name, remat=m.remat,
        mesh="x".join(str(s) for s in exp.mesh.devices.shape), batch=config.batch_size,
        batch_per_device=args.batch_per_device, compile_seconds=compile_seconds,
        step_seconds=step_seconds, step_seconds_all=times,
        clips_per_second=speed["perf/clips_per_second"],
        gflop_per_step_per_device=flops / 1e9 if flops else None,
        tflops_per_device=speed.get("perf/tflops_per_device"),
        peak_tflops_per_device=peak_tflops, peak_source=peak_source, mfu=speed.get("perf/mfu"),
        arguments_gib=memory.argument_size_in_bytes / GIB if memory else None,
        temporaries_gib=memory.temp_size_in_bytes / GIB if memory else None,
        allocator_peak_gib=allocator_peak_gib(), devices=exp.mesh.devices.size,
        device_kind=exp.mesh.devices.flat[0].device_kind, backend=jax.default_backend(),
        jax_version=jax.__version__, host=host_cpu())


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(r: Result) -> None:
    print(f"jax {r.jax_version}, {r.backend}: {r.devices} x {r.device_kind} (host: {r.host}); median of "
          f"{len(r.step_seconds_all)} steps; peak: {r.peak_source}\n")
    print("| model | compute | remat | mesh | batch (per device) | compile s | step s | clips/s "
          "| GFLOP/step/device | TFLOP/s/device | peak TFLOP/s | MFU | memory GiB (args + temp) "
          "| allocator peak GiB |")
    print("|---" * 14 + "|")
    memory = (f"{r.arguments_gib:.3f} + {r.temporaries_gib:.3f}" if r.arguments_gib is not None
              else "n/a")
    print(f"| {r.model} | {r.dtype} | {'yes' if r.remat else 'no'} | {r.mesh} | {r.batch} "
          f"({r.batch_per_device}) | {r.compile_seconds:.1f} | {r.step_seconds:.3f} | "
          f"{r.clips_per_second:.2f} | {fmt(r.gflop_per_step_per_device, '.4g')} | "
          f"{fmt(r.tflops_per_device, '.4g')} | {fmt(r.peak_tflops_per_device, '.4g')} | "
          f"{'n/a' if r.mfu is None else f'{r.mfu:.1%}'} | {memory} | "
          f"{fmt(r.allocator_peak_gib, '.2f')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="b16_8x224",
                        help=f"one of {sorted(SHORTHANDS)} or FILE.py:ARG of configs/")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of --config")
    parser.add_argument("--batch_per_device", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="compute dtype (parameters and optimiser state stay float32)")
    parser.add_argument("--remat", action="store_true", help="rematerialise each layer")
    parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1: the rest)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="peak TFLOP/s per device for MFU (default: perf.PEAK_TFLOPS / CPU dot)")
    parser.add_argument("--json", default="", help="also write the result as JSON here")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch_per_device < 1:
        parser.error("--steps and --batch_per_device must be >= 1, --warmup >= 0")
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n")


if __name__ == "__main__":
    main()
