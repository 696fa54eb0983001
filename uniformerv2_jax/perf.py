"""Training throughput: FLOPs of the compiled step, peak rates, MFU, profiler traces.

Shared by the training loop (``perf/*`` rows of ``metrics.jsonl`` and TensorBoard) and
``benchmarks/train_speed.py``, so that both count the same way.

FLOPs are XLA's cost analysis of the compiled train step (:func:`step_flops`). On a
sharded mesh the compiled executable is the per-device SPMD program, so the count is
per device: a matmul whose rows (or columns) are split over 8 devices counts 1/8 of the
single-device figure, and a step with 8 clips on 8 devices counts about what one device
with 1 clip counts (the sharded program adds its cross-device reductions; figures in
docs/performance.md). The *lowered* program's ``cost_analysis()``, before partitioning,
would count the whole global step instead. The count covers everything the step
executes: forward, backward, optimiser update, and with ``model.remat`` the recomputed
forward too, which makes it a hardware-FLOPs utilisation in that case. A ``while`` loop's
body is counted once whatever its trip count, so with ``model.scan`` (each run of
identical layers one loop) the count would miss all but one layer per run:
:func:`step_flops` gives None then, and no TFLOP/s or MFU is logged.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense (no sparsity) peak TFLOP/s of one JAX device, keyed by ``Device.device_kind``:
# (16-bit compute, float32 compute). float32 matmuls at JAX's default precision run as
# TF32 on NVIDIA Ampere and later and as one bfloat16 pass on TPU
# (https://github.com/jax-ml/jax/issues/18934), so the float32 column is the dense TF32
# figure on NVIDIA and the bfloat16 one on TPU; with
# ``jax_default_matmul_precision="highest"`` the true ceiling is far lower.
# NVIDIA datasheets list "with sparsity" figures: the dense ones are half of them.
_H100_SXM = (989.0, 494.5)  # H100/H200 SXM datasheets: BF16 1,979 / TF32 989 (sparse)
_A100 = (312.0, 156.0)  # A100 datasheet: BF16 312 / TF32 156 dense (624 / 312 sparse)
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H200": _H100_SXM,
    "NVIDIA H100 PCIe": (756.5, 378.0),  # H100 PCIe datasheet: BF16 1,513 / TF32 756 (sparse)
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    # Per chip, bfloat16 (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e "system architecture").
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),  # v5e
    "TPU v5": (459.0, 459.0),  # v5p
    "TPU v5p": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),  # v6e (Trillium)
}


def peak_tflops(device: jax.Device, dtype: Any) -> float | None:
    """The table's dense peak of ``device`` for compute in ``dtype`` (16-bit types use the
    bfloat16 column), or None for a device it does not list (every CPU)."""
    peaks = PEAK_TFLOPS.get(device.device_kind)
    if peaks is None:
        return None
    return peaks[0] if jnp.dtype(dtype).itemsize == 2 else peaks[1]


def step_flops(compiled: jax.stages.Compiled, model: Any) -> float | None:
    """FLOPs per device of one call of the compiled train step (see the module notes),
    or None when XLA's count would be wrong (``model.scan``) or is missing."""
    if model.scan:
        return None
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    return flops if flops > 0 else None


def speed_values(seconds_per_step: float, clips_per_step: int, flops: float | None = None,
                 peak: float | None = None, input_wait: float | None = None) -> dict[str, float]:
    """The ``perf/*`` values of a logged row or a benchmark: step time, clips/s, model
    TFLOP/s per device (with ``flops`` per device and step), MFU (with ``peak`` TFLOP/s),
    and the seconds per step spent waiting for input and their fraction of the step."""
    seconds = max(seconds_per_step, 1e-9)
    values = {"perf/step_seconds": seconds_per_step,
              "perf/clips_per_second": clips_per_step / seconds}
    if flops:
        values["perf/tflops_per_device"] = flops / seconds / 1e12
        if peak:
            values["perf/mfu"] = values["perf/tflops_per_device"] / peak
    if input_wait is not None:
        values["perf/input_wait_seconds"] = input_wait
        values["perf/input_wait_fraction"] = input_wait / seconds
    return values


def speed_line(values: dict[str, float]) -> str:
    """The console's speed fields: clips/s, step time, TFLOP/s and MFU per device (when
    known), and the share of the step spent waiting for input."""
    line = (f"{values['perf/clips_per_second']:.1f} clips/s  "
            f"{values['perf/step_seconds']:.2f} s/step  ")
    if "perf/tflops_per_device" in values:
        line += f"{values['perf/tflops_per_device']:.3g} TFLOP/s/device  "
    if "perf/mfu" in values:
        line += f"MFU {values['perf/mfu']:.1%}  "
    return line + f"input wait {values['perf/input_wait_fraction']:.0%}"


class StepMeter:
    """The metrics of the steps since the last log line, kept on device until the log
    fetches them all at once (one host sync), the clock that times those steps, and the
    time they waited for their input."""

    def __init__(self, step: int):
        self.pending: list[tuple[int, dict]] = []
        self.restart_clock(step)

    def restart_clock(self, step: int) -> None:
        self.clock, self.clock_step, self.input_wait = time.perf_counter(), step, 0.0

    def exclude(self, seconds: float) -> None:
        """Leaves ``seconds`` that were not training (the compilation) out of the clock."""
        self.clock += seconds

    def add(self, step: int, metrics: dict, input_wait: float) -> None:
        self.pending.append((step, metrics))
        self.input_wait += input_wait

    def fetch(self, step: int) -> tuple[list[tuple[int, dict]], float, float]:
        """The pending metrics as numbers, and the seconds per step since the clock
        started, in all and waiting for input."""
        fetched = [(s, jax.device_get(m)) for s, m in self.pending]
        self.pending.clear()
        steps = max(step - self.clock_step, 1)
        seconds_per_step = (time.perf_counter() - self.clock) / steps
        input_wait = self.input_wait / steps
        self.restart_clock(step)
        return fetched, seconds_per_step, input_wait


def trace_options() -> jax.profiler.ProfileOptions:
    """The device and host (XLA, TraceMe) tracers without JAX's Python-function tracer:
    stopping that one sets every Python thread's profile hook, a race with the threads
    that end meanwhile (tf.data's, orbax's checkpoint writers) that crashed the process
    with a segmentation fault in 1 of 12 traced test runs (CPython gh-137400)."""
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    return options


class Profiler:
    """A JAX profiler trace (TensorBoard's profile plugin reads ``*.xplane.pb``, Perfetto
    ``perfetto_trace.json.gz``) of the steps during which :meth:`follow` is told to trace,
    written under ``directory/plugins/profile/<time>/``; every process traces its own."""

    def __init__(self, directory: str | os.PathLike):
        self.directory, self.active = str(directory), False

    def follow(self, tracing: bool, state: Any = None) -> float:
        """Starts a trace when ``tracing`` turns on; when it turns off, waits for the
        traced steps' device work (``state``, their output) and writes the trace.
        Returns the seconds spent starting or writing the trace (not training)."""
        if tracing and not self.active:
            start = time.perf_counter()
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True,
                                     profiler_options=trace_options())
            self.active = True
            return time.perf_counter() - start
        if not tracing and self.active:
            jax.block_until_ready(state)
            start = time.perf_counter()
            self.close()
            return time.perf_counter() - start
        return 0.0

    def close(self) -> None:
        """Writes an open trace as it is (after an error or a preemption)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
