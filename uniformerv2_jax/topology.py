"""Accelerators by the names users rent, described without the hardware.

:func:`describe` turns ``v5p-64``, ``v5e-256``, ``v6e-64``, ``v4-32`` (a Cloud TPU slice),
``h100-8`` or ``2xh200-8`` (hosts of 8 GPUs) into the devices XLA compiles for, as if they
were attached: libtpu describes TPU slices (``jax.experimental.topologies``, with the
``tpu`` extra), XLA's GPU target descriptions (shipped in ``gpu_targets/``) describe GPUs
(with the ``cuda`` extra). Programs compiled for them can be inspected and serialized, not
run. The local backend should be the CPU (``JAX_PLATFORMS=cpu``):
:func:`deviceless_environment` is what such a process sets before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import jax

GIB = 2**30
GPU_TARGETS = Path(__file__).resolve().parent / "gpu_targets"


@dataclasses.dataclass(frozen=True)
class TPUGeneration:
    libtpu_name: str  # libtpu's prefix of topology names ("v5p:2x2x1")
    counts_cores: bool  # the rented name counts TensorCores, two a chip (v4-32 is 16 chips)
    torus_dims: int  # 3: a 3D torus of chips; 2: a 2D one
    hbm_gib: float  # HBM a chip, as XLA's out-of-memory message states it
    chip_config: str | None  # "megacore": one device a chip (v4 would show both cores)
    host_chips: int  # chips a host has in multi-host slices (single-host slices: all)
    single_host_max: int  # the largest slice that is one host


TPU_GENERATIONS = {
    "v4": TPUGeneration("v4", True, 3, 30.75, "megacore", 4, 4),
    "v5p": TPUGeneration("v5p", True, 3, 95.74, None, 4, 4),
    "v5e": TPUGeneration("v5e", False, 2, 15.75, None, 4, 8),
    "v6e": TPUGeneration("v6e", False, 2, 31.25, None, 4, 8),
}
# A host's chips as libtpu lays them out (chips_per_host_bounds).
HOST_BOUNDS = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}
# GPUs: the target description shipped for each (XLA's own, see gpu_targets/README.md).
GPU_MODELS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}

# libtpu reads these when it loads: without them it warns about the missing TPU, and a
# second process that loads it fails on its lockfile.
DEVICELESS_ENVIRONMENT = {
    "JAX_PLATFORMS": "cpu",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_ACCELERATOR_TYPE": "v5p-8",  # only silences libtpu; the topology asked for decides
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_LOG_DIR": "disabled",
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """Devices to compile for: ``num_slices`` slices (TPU) or hosts (GPU) of
    ``chips_per_slice`` chips each (one JAX device a chip)."""

    name: str  # as given: "v5p-64", "2xh100-8"
    platform: str  # "tpu" | "gpu"
    device_kind: str
    chips_per_slice: int
    hosts_per_slice: int
    num_slices: int
    hbm_gib: float  # memory a chip
    devices: tuple[Any, ...]

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def hosts(self) -> int:
        return self.hosts_per_slice * self.num_slices


def deviceless_environment() -> None:
    """Sets :data:`DEVICELESS_ENVIRONMENT` where unset, and JAX's platforms to the CPU;
    call it before JAX initialises a backend (importing it is fine)."""
    for key, value in DEVICELESS_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    jax.config.update("jax_platforms", "cpu")


def needs_deviceless(name: str) -> bool:
    """Whether compiling for ``name`` uses described devices (all but ``local``)."""
    return name != "local"


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud TPU builds for ``chips`` (a power of two): start from one chip
    (3D: a 2x2x1 host) and double the smallest axis, the last of equals, until it holds
    them all: 8 -> 2x2x2, 32 -> 2x4x4, 128 -> 4x4x8; 2D: 8 -> 2x4, 128 -> 8x16."""
    shape = [2, 2, 1] if dims == 3 else [1] * dims
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, n in enumerate(shape) if n == smallest)
        shape[last] *= 2
    return tuple(shape)


def parse_name(name: str) -> tuple[str, int, int]:
    """``"v5p-64"`` -> ("v5p", 64, 1); ``"2xh100-8"`` -> ("h100", 8, 2). Raises ValueError
    naming ``--topology`` and what is accepted."""
    match = re.fullmatch(r"(?:(\d+)x)?([a-z0-9]+)-(\d+)", name.strip().lower())
    kinds = sorted(TPU_GENERATIONS) + sorted(GPU_MODELS)
    if not match or match.group(2) not in kinds:
        raise ValueError(f"--topology={name!r}: expected GENERATION-SIZE as Cloud TPU names "
                         f"slices (v4-32, v5p-128, v5e-256, v6e-64) or [HOSTSx]GPU-8 "
                         f"(h100-8, 2xh200-8); generations: {', '.join(kinds)}")
    hosts, kind, size = match.group(1), match.group(2), int(match.group(3))
    if hosts and kind in TPU_GENERATIONS:
        raise ValueError(f"--topology={name!r}: several TPU slices are --num_slices=N")
    return kind, size, int(hosts or 1)


def describe(name: str, num_slices: int = 1) -> Topology:
    """The devices of ``num_slices`` slices of ``name`` (see the module notes); ``local``:
    this process's own devices (on a TPU VM or GPU host, or the CPU)."""
    if name == "local":
        return _describe_local()
    kind, size, hosts = parse_name(name)
    if kind in GPU_MODELS:
        if num_slices > 1:
            raise ValueError(f"--topology={name!r}: several GPU hosts are HOSTSx{kind}-{size}, "
                             "not --num_slices")
        return _describe_gpus(name, kind, size, hosts)
    return _describe_tpu(name, kind, size, num_slices)


def _describe_tpu(name: str, kind: str, size: int, num_slices: int) -> Topology:
    from jax.experimental import topologies

    gen = TPU_GENERATIONS[kind]
    chips = size // 2 if gen.counts_cores else size
    rentable = chips >= 4 and not chips & (chips - 1) and not size % 2 or chips == 1 and not gen.counts_cores
    if not rentable:
        unit = "TensorCores (2 a chip): 8, 16, 32, ..." if gen.counts_cores else "chips: 1, 4, 8, 16, ..."
        raise ValueError(f"--topology={name!r}: {kind} slices are named by their {unit} (powers "
                         f"of two, e.g. {kind}-{16 if gen.counts_cores else 8})")
    shape = torus_shape(chips, gen.torus_dims)
    single_host = chips <= gen.single_host_max
    host_chips = chips if single_host else gen.host_chips
    kwargs: dict[str, Any] = {"chips_per_host_bounds": HOST_BOUNDS[host_chips]}
    if gen.chip_config:
        kwargs["chip_config_name"] = gen.chip_config
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{gen.libtpu_name}:{'x'.join(map(str, shape))}", **kwargs)
    except Exception as error:  # libtpu missing or refusing the shape
        raise RuntimeError(f"--topology={name}: libtpu could not describe it ({error}); compiling "
                           "for TPUs needs the tpu extra: pip install -e '.[tpu]'") from error
    devices = tuple(desc.devices)
    if len(devices) != chips * num_slices:
        raise RuntimeError(f"--topology={name}: libtpu described {len(devices)} devices, "
                           f"expected {chips * num_slices} (one a chip)")
    return Topology(name, "tpu", devices[0].device_kind, chips, 1 if single_host else chips // gen.host_chips,
                    num_slices, gen.hbm_gib, devices)


def _describe_local() -> Topology:
    devices = tuple(jax.devices())
    stats = devices[0].memory_stats() or {}
    memory = stats.get("bytes_limit", math.nan) / GIB  # unknown on the CPU
    slices = len({slice_index(d) for d in devices})
    return Topology("local", platform_of(devices[0]), devices[0].device_kind, len(devices) // slices,
                    jax.process_count() // slices or 1, slices, memory, devices)


def gpu_target_config(kind: str) -> str:
    """XLA's description of GPU ``kind`` (``GpuTargetConfigProto`` text)."""
    return (GPU_TARGETS / GPU_MODELS[kind]).read_text()


def _describe_gpus(name: str, kind: str, per_host: int, hosts: int) -> Topology:
    from jax.experimental import topologies

    config = gpu_target_config(kind)
    memory = re.search(r"device_memory_size:\s*(\d+)", config)
    try:  # "PARTITIONSxHOSTSxDEVICES": one partition of hosts over the network
        desc = topologies.get_topology_desc(platform="cuda", target_config=config,
                                            topology=f"1x{hosts}x{per_host}")
    except Exception as error:
        raise RuntimeError(f"--topology={name}: XLA could not describe the GPUs ({error}); "
                           "compiling for GPUs needs the cuda extra: pip install -e '.[cuda]'") from error
    devices = tuple(desc.devices)
    return Topology(name, "gpu", devices[0].device_kind, per_host * hosts, hosts, 1,
                    int(memory.group(1)) / GIB if memory else math.nan, devices)


def platform_of(device: Any) -> str:
    """``"cpu"``, ``"gpu"`` or ``"tpu"``: what the backend of ``device`` is called by
    ``jax.default_backend()`` (compile-only GPU devices say "cuda")."""
    return {"cuda": "gpu", "rocm": "gpu"}.get(device.platform, device.platform)


def slice_index(device: Any) -> int:
    """The slice of a device (0 where there is one slice: single-slice devices may have
    no such attribute)."""
    try:
        return int(device.slice_index)
    except AttributeError:
        return 0


def local_summary() -> str:
    """One start-up line: backend, device kind and count, processes."""
    devices = jax.devices()
    return (f"backend {jax.default_backend()}: {len(devices)} x {devices[0].device_kind} "
            f"({jax.local_device_count()} on this host), process {jax.process_index()} of "
            f"{jax.process_count()}")


# B/16 and up: a model no one trains on a CPU on purpose.
FULL_SIZE_WIDTH = 768


def check_backend(width: int, allow_cpu: bool, flag: str = "--allow_cpu") -> None:
    """Refuses a full-size model (``width`` >= 768) on the CPU backend unless ``allow_cpu``:
    on a TPU VM or GPU host it means JAX found no accelerator (RuntimeError saying why)."""
    if jax.default_backend() != "cpu" or width < FULL_SIZE_WIDTH or allow_cpu:
        return
    raise RuntimeError(
        f"a full-size model (width {width}) on the CPU backend: JAX found no TPU or GPU. On a "
        "TPU VM install libtpu (pip install -e '.[tpu]'), on a GPU host JAX's CUDA build "
        "(pip install -e '.[cuda]'), and check that JAX_PLATFORMS does not say cpu; "
        f"to run on the CPU anyway pass {flag}")
