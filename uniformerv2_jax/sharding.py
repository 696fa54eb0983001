"""The device mesh, logical-axis shardings, and global batches from per-host data.

One mesh with axes ``("data", "fsdp", "tensor")``: slowest links first (data parallelism
can cross hosts and slices), fastest last (tensor parallelism stays inside a host).
Parameters carry logical axis names (``embed``, ``heads``, ``mlp``, ...); the config's
rules map them to mesh axes, and the same rules place the activations the model pins
with ``nn.with_logical_constraint``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from uniformerv2_jax.topology import slice_index

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes. Parameters: ``embed`` is sharded over ``fsdp`` (FSDP), the
# heads and MLP hidden units over ``tensor``. Activations: the batch over ``data`` and
# ``fsdp``; frames, tokens and the per-head size stay whole.
AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("reduced", None),  # local MHRA channels (width / 1.5: often not divisible)
    ("classes", None),
    ("frames", None),
    ("tokens", None),
    ("layers", None),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes with the one -1 resolved to "the rest"; checks that they fit the devices."""
    shape = [int(sizes[a]) for a in AXES]
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"config.mesh {dict(zip(AXES, shape))}: {num_devices} devices are "
                             f"not divisible by the fixed axes' product {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} "
                         f"devices, there are {num_devices}")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh, laid out over the physical topology (TPU torus, GPU NVLink islands).

    With ``sizes["dcn_data"]`` > 1 (several TPU slices) the data axis is split into that
    many slices (over the data-centre network) times the data parallelism inside each.
    Axis types are Auto: Linen's logical constraints need them (``jax.make_mesh`` would
    default to Explicit).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    dcn = int(sizes.get("dcn_data", 1))
    slices = len({slice_index(d) for d in devices})
    if dcn != slices:
        raise ValueError(f"config.mesh.dcn_data={dcn}, but the {len(devices)} devices form "
                         f"{slices} slice(s): set config.mesh.dcn_data={slices}")
    if shape[0] % dcn:
        raise ValueError(f"config.mesh.data={shape[0]} must be a multiple of "
                         f"config.mesh.dcn_data={dcn} (the slices)")
    if dcn > 1:
        grid = mesh_utils.create_hybrid_device_mesh((shape[0] // dcn, *shape[1:]), (dcn, 1, 1),
                                                    devices, allow_split_physical_axes=True)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):  # no topology information
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """The mesh and the logical rules, for tracing the model's sharding constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        yield


def logical_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree whose leaves may be logically annotated (boxed); leaves
    without annotations (steps, RNG keys, counters) are replicated."""
    specs = nn.get_partition_spec(boxed_abstract)
    return nn.logical_to_mesh_sharding(specs, mesh, tuple(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over the data and fsdp axes (leading dimension)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """One global array per field from this process's share (its rows of the batch)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def check_batch(global_size: int, mesh_sizes: Mapping[str, int],
                what: str = "config.batch_size") -> None:
    """A global batch must split evenly over the batch axes' devices and over the hosts.

    ``mesh_sizes``: axis -> size (``Mesh.shape``)."""
    shards = math.prod(mesh_sizes[a] for a in BATCH_AXES)
    if global_size % shards or global_size % jax.process_count():
        split = " x ".join(f"config.mesh.{a}={mesh_sizes[a]}" for a in BATCH_AXES)
        raise ValueError(f"{what}={global_size} must be divisible by the data x fsdp mesh "
                         f"size {shards} ({split}) and by the {jax.process_count()} processes")


def local_batch_size(global_size: int, mesh: Mesh, what: str = "config.batch_size") -> int:
    """This process's share of a global batch; it must split evenly over hosts and devices."""
    check_batch(global_size, mesh.shape, what)
    return global_size // jax.process_count()
