"""The train or eval step of a config, compiled ahead of time for devices that need not be
present, and what the compiler says of it.

:func:`compile_step` builds the experiment of a config over a described
:class:`topology.Topology` (a TPU slice, several slices, or GPU hosts), lowers the exact
step training or evaluation runs (``train.jit_train_step`` / ``evaluate.jit_eval_step``)
for abstract state and batch, compiles it and reports per chip: the memory plan against
the chip's memory, the FLOPs, the collectives, and on TPU the compiler's roofline estimate
of the step time with the MFU it implies. :func:`find_batch` finds the largest per-chip
batch that fits (:mod:`executable` keeps a compiled step for ``train --compiled``).

The estimate (TPU only) is ``cost_analysis()["optimal_seconds"]``: for every operation of
the optimized program the larger of its FLOPs at the chip's matmul rate and its bytes at
the HBM bandwidth, summed, with no overlap between operations and collectives costed as
HBM traffic only (no ICI/DCN time). A Pallas kernel (``tpu_custom_call``) is costed the
same way from the ``pl.CostEstimate`` it declares: the largest of its FLOPs, bytes and
transcendentals each at the cost model's own rate (:func:`kernel_rates`). Custom calls
the cost model does not know (libtpu's ``ConcatBitcast`` in bfloat16 steps,
linear-algebra kernels) each count -1 second there; :func:`estimated_seconds` adds them
back. GPUs get no estimate (no autotuning without a GPU) and their FLOPs come from the
program before optimisation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from uniformerv2_jax import evaluate, executable, perf, sharding, storage, train
from uniformerv2_jax.experiment import Experiment, build
from uniformerv2_jax.topology import GIB, Topology

STEPS = ("train", "eval")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# A custom call the TPU cost model cannot cost counts -1 second (and -1 byte) there; these
# targets it does cost (top-k; Pallas kernels, from their cost estimate).
UNCOSTED_CUSTOM_CALL = -1.0
COSTED_CUSTOM_CALLS = ("TopK", "tpu_custom_call")


def train_batch_spec(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
                     ) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch the pipeline delivers for ``config`` (sharded over ``mesh``
    as training places it, if given): video (B, T, H, W, 3) float32, label (B,), and soft
    targets (B, classes) when mixup, cutmix or label smoothing make them."""
    m, b = config.model, config.batch_size
    spec = {"video": ((b, m.t_size, m.input_resolution, m.input_resolution, 3), jnp.float32),
            "label": ((b,), jnp.int32)}
    d = config.data
    if d.mixup_alpha > 0 or d.cutmix_alpha > 0 or d.label_smoothing > 0:
        spec["targets"] = ((b, m.num_classes), jnp.float32)
    return _structs(spec, mesh)


def eval_batch_spec(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
                    ) -> dict[str, jax.ShapeDtypeStruct]:
    """The global evaluation batch: every video with its clips x crops views,
    (B, views, T, H, W, 3), its label, mask and bad-record count."""
    m, b = config.model, config.eval_batch_size
    views = config.data.num_clips * config.data.num_crops
    spec = {"video": ((b, views, m.t_size, m.input_resolution, m.input_resolution, 3), jnp.float32),
            "label": ((b,), jnp.int32), "mask": ((b,), jnp.bool_), "bad": ((b,), jnp.int32)}
    return _structs(spec, mesh)


def _structs(spec: dict, mesh: jax.sharding.Mesh | None) -> dict[str, jax.ShapeDtypeStruct]:
    placed = sharding.batch_sharding(mesh) if mesh is not None else None
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=placed) for k, (shape, dtype) in spec.items()}


def step_config(config: ml_collections.ConfigDict, topology: Topology, batch_per_device: int,
                step: str = "train") -> ml_collections.ConfigDict:
    """``config`` for ``topology``: the global batch of ``step`` is ``batch_per_device``
    times the batch-sharded devices (data x fsdp), the data axis spans the slices, and
    nothing is read (random initialisation; no validation data)."""
    if step not in STEPS:
        raise ValueError(f"--step={step!r}: expected one of {STEPS}")
    if batch_per_device < 1:
        raise ValueError(f"--batch_per_device={batch_per_device}: must be >= 1")
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.dcn_data = topology.num_slices
    global_batch = batch_per_device * batch_shards(config, topology)
    if step == "train":
        config.batch_size = global_batch
    else:
        config.eval_batch_size = global_batch
    config.init_from = "scratch"
    config.data.val = ""
    return config


def batch_shards(config: ml_collections.ConfigDict, topology: Topology) -> int:
    """How many ways ``config.mesh`` splits a batch over the topology's chips (data x fsdp)."""
    shape = dict(zip(sharding.AXES, sharding.mesh_shape(config.mesh, topology.chips)))
    return shape["data"] * shape["fsdp"]


def lower_step(exp: Experiment, step: str) -> jax.stages.Lowered:
    """The step training (``train``) or evaluation (``eval``) runs, lowered for the
    experiment's abstract state and batch."""
    if step == "train":
        return train.lower_train_step(exp, train_batch_spec(exp.config, exp.mesh))
    with sharding.activate(exp.mesh, exp.rules):
        return evaluate.jit_eval_step(exp).lower(exp.abstract_state, eval_batch_spec(exp.config, exp.mesh))


def _cost(compiled_or_lowered: Any) -> dict[str, float]:
    cost = compiled_or_lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return dict(cost or {})


def program_flops(lowered: jax.stages.Lowered) -> float:
    """FLOPs of the whole program before partitioning and optimisation: XLA's HLO cost
    analysis on the CPU client (for GPUs compiled without one, whose compiler gives none)."""
    from jax._src.lib import xla_client

    module = lowered.compiler_ir("hlo").get_hlo_module()
    cost = xla_client._xla.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    return float(cost.get("flops", 0.0))


def custom_calls(hlo_text: str) -> dict[str, int]:
    """Custom-call instructions of an optimized HLO module's text, by target."""
    counts: dict[str, int] = {}
    for line in hlo_text.splitlines():
        if " custom-call(" in line:
            target = re.search(r'custom_call_target="([^"]+)"', line)
            name = target.group(1) if target else "?"
            counts[name] = counts.get(name, 0) + 1
    return counts


def estimated_seconds(compiled: jax.stages.Compiled) -> float | None:
    """The TPU compiler's roofline estimate of one call (see the module notes), corrected
    for the custom calls it could not cost; None where the backend gives none (GPU, CPU)."""
    seconds = _cost(compiled).get("optimal_seconds")
    if seconds is None:
        return None
    uncosted = sum(n for target, n in custom_calls(compiled.as_text()).items()
                   if target not in COSTED_CUSTOM_CALLS)
    return float(seconds) - UNCOSTED_CUSTOM_CALL * uncosted


# Operation kinds of :func:`time_by_kind`, in the order it reports them.
KINDS = ("matmuls", "attention softmax", "normalisation", "depthwise convolutions",
         "casts", "copies and transposes", "elementwise and other", "optimiser update",
         "collectives", "Pallas kernels")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OPCODE = re.compile(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][\w-]*)\((?:%|\))")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# A reduce_sum under attn is as often a bias gradient as a softmax sum: "elementwise".
_SOFTMAX = ("reduce_max", "exp", "sub", "div", "max")
_KERNEL_COST = re.compile(r'"cost_estimate":\{"flops":"(\d+)","transcendentals":"(\d+)",'
                          r'"bytes_accessed":"(\d+)"')


class KernelRates(NamedTuple):
    """The TPU cost model's rates for a custom call's declared cost, per second."""

    flops: float
    bytes: float
    transcendentals: float

    def seconds(self, flops: float, bytes_accessed: float, transcendentals: float) -> float:
        return max(flops / self.flops, bytes_accessed / self.bytes,
                   transcendentals / self.transcendentals)


def _copy_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]


@functools.cache
def kernel_rates(device: jax.Device) -> KernelRates:
    """How the TPU compiler costs a Pallas kernel on ``device``'s chip: compiles a kernel
    that declares only FLOPs, only bytes, only transcendentals, and reads each rate off
    the estimate (libtpu 0.0.42: the largest of the three times counts)."""
    from jax.experimental import pallas as pl

    mesh = jax.sharding.Mesh([device], ("x",))
    block = jax.ShapeDtypeStruct((8, 128), jnp.float32,
                                 sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    amount = 1e12

    def rate(**declared) -> float:
        kernel = pl.pallas_call(_copy_kernel, out_shape=block,
                                cost_estimate=pl.CostEstimate(**{"flops": 0, "transcendentals": 0,
                                                                 "bytes_accessed": 0, **declared}))
        return amount / _cost(jax.jit(kernel).lower(block).compile())["optimal_seconds"]

    return KernelRates(rate(flops=int(amount)), rate(bytes_accessed=int(amount)),
                       rate(transcendentals=int(amount)))


def operation_kind(opcode: str, fusion_kind: str, op_name: str) -> str:
    """The :data:`KINDS` entry of one operation of an optimized program, from its opcode,
    fusion kind and JAX's ``op_name`` (which names the model's modules: ``attn``, ``ln_1``,
    ``dpe``, ...; the backward pass under ``transpose(jvp(...))``)."""
    last = op_name.rsplit("/", 1)[-1]
    if opcode.removesuffix("-start").removesuffix("-done") in COLLECTIVES:
        return "collectives"
    if "jvp(" not in op_name:  # after the gradients: clipping and the AdamW update
        return "optimiser update"
    if "/dpe" in op_name or "/conv_dw" in op_name:  # either form: shifted sums or grouped
        return "depthwise convolutions"
    if fusion_kind == "kOutput" and last in ("dot_general", "conv_general_dilated"):
        return "matmuls"
    if "/attn" in op_name and last in _SOFTMAX:
        return "attention softmax"
    if re.search(r"/(ln_\w+|head_norm|norm)(/|$)", op_name):
        return "normalisation"
    if last == "convert_element_type" or opcode == "convert":
        return "casts"
    if opcode in ("copy", "transpose") or last == "transpose":
        return "copies and transposes"
    return "elementwise and other"


def time_by_kind(hlo_text: str, step_seconds: float, rates: KernelRates | None = None
                 ) -> dict[str, dict[str, float]]:
    """The TPU compiler's estimate of a step split by operation kind. Pallas kernels take
    their cost-model time (their declared cost at ``rates``, :func:`kernel_rates`); the rest
    of ``step_seconds`` (:func:`estimated_seconds`) is split in proportion to each other
    top-level operation's ``estimated_cycles`` (the backend config of the optimized TPU
    program), grouped by :func:`operation_kind`. Returns kind -> ``seconds``, ``share``,
    ``operations``."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    cycles = dict.fromkeys(KINDS, 0)
    counts = dict.fromkeys(KINDS, 0)
    kernel_seconds = 0.0
    for line in entry[:entry.index("\n}")].splitlines()[1:]:
        if (declared := _KERNEL_COST.search(line)) and 'custom_call_target="tpu_custom_call"' in line:
            if rates is None:
                raise ValueError("the program has Pallas kernels: pass their rates (kernel_rates)")
            flops, transcendentals, bytes_accessed = map(float, declared.groups())
            kernel_seconds += rates.seconds(flops, bytes_accessed, transcendentals)
            counts["Pallas kernels"] += 1
            continue
        found, opcode = _CYCLES.search(line), _OPCODE.match(line)
        if not (found and opcode):
            continue
        fusion = re.search(r"kind=(k\w+)", line)
        name = _OP_NAME.search(line)
        kind = operation_kind(opcode[1], fusion[1] if fusion else "", name[1] if name else "")
        cycles[kind] += int(found[1])
        counts[kind] += 1
    total = sum(cycles.values())
    if not total:
        raise ValueError("no estimated_cycles in the program: a breakdown needs a TPU compile")
    seconds = {kind: (step_seconds - kernel_seconds) * cycles[kind] / total for kind in KINDS}
    seconds["Pallas kernels"] = kernel_seconds
    return {kind: {"seconds": seconds[kind], "share": seconds[kind] / step_seconds,
                   "operations": counts[kind]} for kind in KINDS}


def collectives(hlo_text: str) -> dict[str, int]:
    """Collective operations of an optimized HLO module, by kind (async pairs count once)."""
    return {kind: len(re.findall(rf"\s{kind}(?:-start)?\(", hlo_text)) for kind in COLLECTIVES}


@dataclasses.dataclass
class CompiledStep:
    report: dict[str, Any]  # what compile_step prints and writes (see compile_step)
    compiled: jax.stages.Compiled | None  # None when it did not fit
    experiment: Experiment


def compile_step(config: ml_collections.ConfigDict, topology: Topology, batch_per_device: int,
                 step: str = "train") -> CompiledStep:
    """Compiles ``step`` of ``config`` for ``topology`` with ``batch_per_device`` clips
    (train) or videos (eval) a chip. The report, per chip: ``device_kind``, ``chips``,
    ``hosts``, ``slices``, ``mesh``, ``batch_per_device``, ``global_batch``, the memory plan
    (``arguments_gib``, ``temporaries_gib``, ``peak_gib``) against ``hbm_gib``, ``fits``
    (with ``error``, XLA's out-of-memory message, when it does not), ``gflop_per_chip``,
    ``collectives`` by kind, ``custom_calls``, ``estimated_step_seconds``,
    ``estimated_clips_per_second`` (whole slice), ``estimated_mfu`` and
    ``estimate_by_kind`` (TPU; :func:`time_by_kind`), and the library versions. FLOPs and
    estimate are None with ``model.scan`` (XLA counts a loop body once)."""
    config = step_config(config, topology, batch_per_device, step)
    # The learning-rate schedule is part of the program: its epoch is what training counts
    # when config.data.train_examples says it (needed for train --compiled), else one step.
    d = config.data
    train_examples = (d.train_examples * d.repeated_augment or config.batch_size) if step == "train" else None
    exp = build(config, train_examples, devices=list(topology.devices))
    lowered = lower_step(exp, step)
    global_batch = config.batch_size if step == "train" else config.eval_batch_size
    report: dict[str, Any] = {
        **executable.identity(lowered, list(topology.devices)), "step": step,
        "topology": topology.name, "platform": topology.platform,
        "hosts": topology.hosts, "slices": topology.num_slices,
        "mesh": {**dict(exp.mesh.shape), "dcn_data": config.mesh.dcn_data},
        "model": {k: config.model[k] for k in ("width", "layers", "t_size", "input_resolution",
                                               "dtype", "remat", "scan", "kernels")},
        "batch_per_device": batch_per_device, "global_batch": global_batch,
        "hbm_gib": None if math.isnan(topology.hbm_gib) else topology.hbm_gib}
    try:
        compiled = lowered.compile()
    except Exception as error:  # XLA's out-of-memory error is a plain runtime error
        if "RESOURCE_EXHAUSTED" not in str(error) and "exceeds" not in str(error):
            raise
        report.update(fits=False, error=str(error).strip().splitlines()[0][:2000])
        return CompiledStep(report, None, exp)

    memory = compiled.memory_analysis()
    arguments = memory.argument_size_in_bytes
    temporaries = memory.temp_size_in_bytes
    # Everything live at once in XLA's plan: arguments, outputs not aliased to (donated)
    # arguments, temporaries. (memory_analysis' peak_memory_in_bytes can be below the
    # temporaries on TPU; the out-of-memory check compares the temporaries with the HBM.)
    peak = arguments + memory.output_size_in_bytes - memory.alias_size_in_bytes + temporaries
    text = compiled.as_text()
    if exp.model.scan:
        flops = None
    elif topology.platform == "tpu":
        flops = _cost(compiled).get("flops")
    else:  # the GPU compiler gives no cost analysis: the global program's, per chip
        flops = program_flops(lowered) / topology.chips or None
    seconds = estimated_seconds(compiled) if flops and topology.platform == "tpu" else None
    peak_tflops = perf.PEAK_TFLOPS.get(topology.device_kind)
    dtype_index = 0 if jnp.dtype(config.model.dtype).itemsize == 2 else 1
    fits = not peak / GIB > topology.hbm_gib  # an unknown memory (nan, the CPU's) limits nothing
    report.update(
        fits=fits, arguments_gib=arguments / GIB, temporaries_gib=temporaries / GIB,
        peak_gib=peak / GIB, gflop_per_chip=flops / 1e9 if flops else None,
        collectives=collectives(text), custom_calls=custom_calls(text),
        estimated_step_seconds=seconds,
        estimated_clips_per_second=global_batch / seconds if seconds else None,
        peak_tflops=peak_tflops[dtype_index] if peak_tflops else None,
        estimated_mfu=(flops / seconds / (peak_tflops[dtype_index] * 1e12)
                       if seconds and peak_tflops else None),
        estimate_by_kind=(time_by_kind(text, seconds, kernel_rates(topology.devices[0]))
                          if seconds else None))
    if not fits:
        report["error"] = (f"peak {peak / GIB:.2f} GiB a chip exceeds its {topology.hbm_gib:.2f} GiB "
                           "(the GPU compiler plans past the device's memory; judged here)")
    return CompiledStep(report, compiled if fits else None, exp)


def find_batch(config: ml_collections.ConfigDict, topology: Topology, step: str = "train",
               limit: int = 4096, progress=None) -> CompiledStep:
    """The largest per-chip batch that fits: doubling from 1, then bisecting between the
    last power of two that fits and the first that does not. Returns that compile (or the
    failing batch-1 compile when none fits); ``report["tried"]`` lists each batch tried."""
    tried: list[tuple[int, bool]] = []

    def attempt(batch: int) -> CompiledStep:
        result = compile_step(config, topology, batch, step)
        tried.append((batch, result.report["fits"]))
        if progress:
            progress(result.report)
        return result

    best = attempt(1)
    if not best.report["fits"]:
        best.report["tried"] = tried
        return best
    low, high = 1, None
    while high is None and low * 2 <= limit:
        result = attempt(low * 2)
        if result.report["fits"]:
            low, best = low * 2, result
        else:
            high = low * 2
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        result = attempt(middle)
        if result.report["fits"]:
            low, best = middle, result
        else:
            high = middle
    best.report["tried"] = tried
    return best


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for the console."""
    def gib(key):
        value = report.get(key)
        return "-" if value is None else f"{value:.2f}"

    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [f"{report['step']} step for {report['topology']} ({report['chips']} x "
             f"{report['device_kind']}, {report['hosts']} hosts, {report['slices']} slice(s)); "
             f"mesh {mesh}; {report['batch_per_device']} a chip, {report['global_batch']} in all",
             f"memory a chip: peak {gib('peak_gib')} GiB of {gib('hbm_gib')} "
             f"(arguments {gib('arguments_gib')}, temporaries {gib('temporaries_gib')}): "
             + ("fits" if report["fits"] else "DOES NOT FIT")]
    if not report["fits"]:
        lines.append(f"  {report['error']}")
        return "\n".join(lines)
    if report.get("gflop_per_chip"):
        lines.append(f"compute: {report['gflop_per_chip']:,.1f} GFLOP a chip a step")
    lines.append("collectives: " + ", ".join(f"{n} {k}" for k, n in report["collectives"].items() if n)
                 if any(report["collectives"].values()) else "collectives: none")
    if report.get("estimated_step_seconds"):
        mfu = report.get("estimated_mfu")
        lines.append(f"compiler's estimate (roofline, collectives as HBM traffic only): "
                     f"{report['estimated_step_seconds'] * 1e3:.1f} ms a step, "
                     f"{report['estimated_clips_per_second']:,.1f} "
                     f"{'clips' if report['step'] == 'train' else 'videos'}/s in all"
                     + (f", MFU {mfu:.1%} of {report['peak_tflops']:g} TFLOP/s" if mfu else ""))
    for kind, part in (report.get("estimate_by_kind") or {}).items():
        if part["operations"]:
            lines.append(f"  {kind:<30} {part['seconds'] * 1e3:8.2f} ms {part['share']:6.1%}  "
                         f"({part['operations']} operations)")
    versions = ", ".join(f"{k} {report[k]}" for k in ("jax", "libtpu", "jax_cuda12_plugin") if report.get(k))
    lines.append(f"({versions})")
    return "\n".join(lines)


def dump(report: dict[str, Any], path: str) -> None:
    """Writes ``report`` as one JSON object."""
    storage.write_atomic(storage.path(path), json.dumps(report, indent=1) + "\n")
