"""Ahead-of-time compiles for GPUs that are not attached (the ``cuda`` extra, about 5.6 GB:
not installed by ``make test``; these tests run where it is)."""

import dataclasses

import pytest
from helpers import tiny_fields

from uniformerv2_jax import aot, topology
from uniformerv2_jax import config as config_lib

pytest.importorskip("jax_cuda12_plugin", reason="compiling for GPUs needs the cuda extra")


def tiny_config():
    c = config_lib.base_config()
    c.model = config_lib.model_config("B/16", **tiny_fields())
    c.model.dtype = "bfloat16"
    return c


@pytest.mark.parametrize("name, kind, gpus, hosts, memory_gib", [
    ("h100-8", "NVIDIA H100 80GB HBM3", 8, 1, 79.1), ("2xh200-8", "NVIDIA H200 141GB HBM3e", 16, 2, 141.0)])
def test_gpu_hosts_compile_with_the_gpus_kernels_and_memory(name, kind, gpus, hosts, memory_gib):
    t = topology.describe(name)
    hosts_seen = len({d.process_index for d in t.devices})
    assert (t.device_kind, t.chips, t.hosts, hosts_seen) == (kind, gpus, hosts, hosts)
    assert t.hbm_gib == pytest.approx(memory_gib, abs=0.05)  # XLA's description of the GPU
    result = aot.compile_step(tiny_config(), t, 2)
    r = result.report
    assert result.experiment.model.platform == "gpu"  # kernels and remat follow the GPUs
    assert r["fits"] and r["global_batch"] == 2 * gpus and r["collectives"]["all-reduce"] > 0
    assert r["gflop_per_chip"] > 0 and r["estimated_step_seconds"] is None  # no estimate on GPU


def test_an_over_large_gpu_step_is_judged_against_the_gpus_memory():
    t = topology.describe("h100-8")
    small = dataclasses.replace(t, hbm_gib=1e-3)
    r = aot.compile_step(tiny_config(), small, 2).report
    assert r["fits"] is False and "exceeds its 0.00 GiB" in r["error"]
