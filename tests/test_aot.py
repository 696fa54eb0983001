"""Ahead-of-time compiles for TPU slices that are not attached (libtpu, the ``tpu`` extra):
topology names, the compile report, fitting, remat, the estimate, multi-slice, saved steps.

Every compile here is of a tiny model (seconds); the full-size figures are in docs/tpu.md.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, tiny_fields

from uniformerv2_jax import aot, executable, sharding, topology, train
from uniformerv2_jax import config as config_lib
from uniformerv2_jax.experiment import build

pytest.importorskip("libtpu", reason="compiling for TPUs needs the tpu extra")


def tiny_config(**model):
    c = config_lib.base_config()
    c.model = config_lib.model_config("B/16", **tiny_fields(**model))
    c.model.dtype = "bfloat16"
    return c


def demo_config():
    """The demo's model (4 layers of width 96, 8 frames of 64x64), whose activations, unlike
    the tiny model's, dominate its memory."""
    sys.path.insert(0, str(ROOT))
    from configs import synthetic

    config = synthetic.get_config("temporal")
    config.model.dtype = "bfloat16"
    return config


@pytest.mark.parametrize("name, kind, chips, hosts", [
    ("v5e-4", "TPU v5 lite", 4, 1), ("v5e-16", "TPU v5 lite", 16, 4), ("v5p-8", "TPU v5", 4, 1),
    ("v6e-8", "TPU v6 lite", 8, 1), ("v4-32", "TPU v4", 16, 4)])
def test_described_slices_have_one_device_a_chip_and_libtpus_hosts(name, kind, chips, hosts):
    t = topology.describe(name)
    assert (t.device_kind, t.chips, len(t.devices), t.hosts) == (kind, chips, chips, hosts)
    assert len({d.process_index for d in t.devices}) == hosts  # libtpu's own host split


@pytest.mark.parametrize("name, message", [
    ("v5p-4", "TensorCores"), ("v5e-2", "chips: 1, 4, 8"), ("v5p-12", "powers of two"),
    ("tpu-8", "expected GENERATION-SIZE"), ("2xv5p-8", "--num_slices")])
def test_unrentable_names_are_refused_with_the_rule(name, message):
    with pytest.raises(ValueError, match=message):
        topology.describe(name)


@pytest.fixture(scope="module")
def v5e_reports():
    """The tiny train step on one v5e chip and on four, 2 clips a chip."""
    config = tiny_config()
    return {chips: aot.compile_step(config, topology.describe(f"v5e-{chips}"), 2).report
            for chips in (1, 4)}


def test_report_per_chip_is_consistent(v5e_reports):
    one, four = v5e_reports[1], v5e_reports[4]
    assert one["fits"] and four["fits"]
    assert (four["chips"], four["global_batch"], four["mesh"]["data"]) == (4, 8, 4)
    # Data parallel: each chip runs one chip's share; the 4-chip program adds its reductions.
    assert one["gflop_per_chip"] <= four["gflop_per_chip"] <= 1.05 * one["gflop_per_chip"]
    assert one["collectives"]["all-reduce"] == 0 < four["collectives"]["all-reduce"]
    r = four
    assert r["estimated_clips_per_second"] == pytest.approx(8 / r["estimated_step_seconds"])
    assert r["peak_tflops"] == 197.0  # v5e's datasheet bfloat16 peak
    assert r["estimated_mfu"] == pytest.approx(
        r["gflop_per_chip"] * 1e9 / r["estimated_step_seconds"] / 197e12)
    assert 0 < r["estimated_mfu"] < 1
    assert r["peak_gib"] >= r["temporaries_gib"] > 0 and r["hbm_gib"] == 15.75
    assert r["libtpu"] and r["jax"] == jax.__version__


def test_the_estimate_splits_by_operation_kind(v5e_reports):
    r = v5e_reports[4]
    parts = r["estimate_by_kind"]
    assert list(parts) == list(aot.KINDS)
    assert sum(p["seconds"] for p in parts.values()) == pytest.approx(r["estimated_step_seconds"])
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)
    # The tiny model's step has matmuls, LayerNorms, a softmax per cross-attention, the
    # depthwise convolutions, the Pallas attention and an AdamW update, each somewhere.
    for kind in ("matmuls", "normalisation", "attention softmax", "depthwise convolutions",
                 "optimiser update", "Pallas kernels"):
        assert parts[kind]["operations"] > 0 and parts[kind]["seconds"] > 0, kind


def test_the_tiny_steps_attention_is_the_pallas_kernel_costed_from_its_declaration(v5e_reports):
    """bfloat16 on TPU: "auto" picks the Pallas attention; each of the 3 layers calls its
    forward and backward kernel, and the breakdown gives them their declared cost."""
    r = v5e_reports[4]
    assert r["custom_calls"]["tpu_custom_call"] == 6
    kernels = r["estimate_by_kind"]["Pallas kernels"]
    assert kernels["operations"] == 6 and 0 < kernels["seconds"] < r["estimated_step_seconds"]


def test_a_pallas_kernel_is_costed_at_the_rates_of_xlas_own_operations():
    """The rates the TPU cost model applies to a kernel's declared FLOPs and bytes are the
    ones it applies to a compute-bound matmul and a memory-bound copy of XLA's own."""
    t = topology.describe("v5p-8")
    rates = aot.kernel_rates(t.devices[0])
    mesh = jax.sharding.Mesh(np.asarray(t.devices[:1]), ("d",))

    def estimate(fn, shape, dtype):
        x = jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))
        return aot._cost(jax.jit(fn).lower(x).compile())["optimal_seconds"]

    n = 8192  # bfloat16 n x n x n: 2 n^3 FLOPs over 3 n^2 * 2 bytes, compute-bound
    assert estimate(lambda x: x @ x, (n, n), jnp.bfloat16) == pytest.approx(2 * n**3 / rates.flops, rel=1e-3)
    # x + 1 in float32 reads and writes 4 bytes an element: memory-bound
    assert estimate(lambda x: x + 1, (n, n), jnp.float32) == pytest.approx(8 * n * n / rates.bytes, rel=1e-3)
    assert rates.transcendentals > 0


def test_operations_are_sorted_into_kinds_by_opcode_fusion_and_module():
    fwd = "jit(train_step)/jvp(UniFormerV2)/layer_0"
    bwd = "jit(train_step)/transpose(jvp(UniFormerV2))/layer_0"
    cases = {("fusion", "kOutput", f"{fwd}/block/attn/dot_general"): "matmuls",
             ("fusion", "kLoop", f"{bwd}/block/attn/reduce_max"): "attention softmax",
             ("fusion", "kLoop", f"{fwd}/block/ln_1/reduce_sum"): "normalisation",
             ("fusion", "kLoop", f"{bwd}/global/dpe/add_any"): "depthwise convolutions",
             ("fusion", "kOutput", f"{fwd}/block/lmhra1/conv_dw/conv_general_dilated"):
                 "depthwise convolutions",
             ("fusion", "kLoop", f"{fwd}/block/mlp/convert_element_type"): "casts",
             ("copy", "", f"{bwd}/block/attn/transpose"): "copies and transposes",
             ("fusion", "kLoop", f"{fwd}/block/mlp/mul"): "elementwise and other",
             ("fusion", "kLoop", "jit(train_step)/sqrt"): "optimiser update",
             ("all-reduce-start", "", "jit(train_step)/transpose(jvp(UniFormerV2))/x"): "collectives"}
    for (opcode, fusion, name), kind in cases.items():
        assert aot.operation_kind(opcode, fusion, name) == kind, name


@pytest.mark.parametrize("name", ["v5p-8", "v6e-4", "v4-8"])
def test_the_step_compiles_for_every_generation(name):
    r = aot.compile_step(tiny_config(), topology.describe(name), 2).report
    assert r["fits"] and r["gflop_per_chip"] > 0 and r["estimated_step_seconds"] > 0
    assert r["peak_tflops"] == {"v5p-8": 459.0, "v6e-4": 918.0, "v4-8": 275.0}[name]


def test_two_slices_split_the_data_axis_over_the_slices():
    t = topology.describe("v5e-4", num_slices=2)
    config = aot.step_config(tiny_config(), t, 2)
    exp = build(config, config.batch_size, devices=list(t.devices))
    assert exp.mesh.shape["data"] == 8 and config.mesh.dcn_data == 2
    slices = np.vectorize(topology.slice_index)(exp.mesh.devices)[:, 0, 0]
    assert list(slices) == [0] * 4 + [1] * 4  # slowest axis first: one slice, then the other
    r = aot.compile_step(tiny_config(), t, 2).report
    assert r["fits"] and r["slices"] == 2 and r["hosts"] == 2 and r["global_batch"] == 16
    one_slice = tiny_config()
    with pytest.raises(ValueError, match="config.mesh.dcn_data=1.*2 slice"):
        sharding.make_mesh(one_slice.mesh, list(t.devices))


def test_remat_halves_the_temporaries_on_a_tpu():
    """nn.remat on TPU (its barriers hold there); the XLA:CPU form only on the CPU."""
    t = topology.describe("v5e-1")
    reports = {}
    for remat in (False, True):
        config = demo_config()
        config.model.remat = remat
        result = aot.compile_step(config, t, 16)
        assert result.experiment.model.platform == "tpu"
        reports[remat] = result.report
    assert reports[True]["temporaries_gib"] < 0.5 * reports[False]["temporaries_gib"]
    assert reports[True]["gflop_per_chip"] > reports[False]["gflop_per_chip"]  # the recomputed forward


@pytest.mark.e2e
def test_a_step_that_does_not_fit_is_reported_with_xlas_message(tmp_path):
    report_path = tmp_path / "report.json"
    process = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "compile", "--config=configs/synthetic.py:temporal",
         "--topology=v5e-1", "--batch_per_device=200000", f"--json={report_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 1, process.stderr[-2000:]
    assert "DOES NOT FIT" in process.stdout
    report = json.loads(report_path.read_text())
    assert report["fits"] is False and "RESOURCE_EXHAUSTED" in report["error"]
    assert "exceeds available HBM (15.75G)" in report["error"]


def test_find_batch_returns_the_largest_batch_that_fits():
    """Judged against a memory of exactly what 5 clips a chip of the demo's model need (as
    on GPUs, where fitting is judged here): doubling, then bisection, ends on a batch that
    fits next to one that does not. (At 1-3 clips XLA's plan does not grow with the batch.)"""
    t = topology.describe("v5e-1")
    config = demo_config()
    small = dataclasses.replace(t, hbm_gib=aot.compile_step(config, t, 5).report["peak_gib"])
    found = aot.find_batch(config, small)
    batch, tried = found.report["batch_per_device"], dict(found.report["tried"])
    assert found.report["fits"] and batch >= 5
    assert tried[batch + 1] is False  # compiled, and did not fit
    assert all(fits == (b <= batch) for b, fits in tried.items())
    assert list(tried)[:3] == [1, 2, 4] and len(tried) <= 7


def test_the_estimate_adds_back_custom_calls_the_cost_model_counts_as_minus_one():
    t = topology.describe("v5e-1")
    mesh = jax.sharding.Mesh(np.asarray(t.devices), ("d",))
    x = jax.ShapeDtypeStruct((512, 512), jnp.float32,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    matmul = jax.jit(lambda x: x @ x).lower(x).compile()
    with_cholesky = jax.jit(lambda x: (x @ x, jnp.linalg.cholesky(x))).lower(x).compile()
    raw = aot._cost(with_cholesky)["optimal_seconds"]
    calls = aot.custom_calls(with_cholesky.as_text())
    assert "Cholesky" in calls and raw < -1  # uncorrected, the estimate is meaningless
    corrected = aot.estimated_seconds(with_cholesky)
    assert aot.estimated_seconds(matmul) <= corrected < aot.estimated_seconds(matmul) + 1e-3


def test_the_eval_step_compiles_with_its_views():
    r = aot.compile_step(tiny_config(), topology.describe("v5p-8"), 2, step="eval").report
    assert r["fits"] and r["step"] == "eval" and r["global_batch"] == 8


def test_a_saved_step_trains_and_is_refused_for_another_program(tmp_path):
    """Compiled for this host's devices (the CPU here), saved, loaded by training: the same
    step as a fresh compile; a changed learning rate is another program."""
    config = tiny_config(dtype="float32")
    config.data.train_examples = 64
    local = topology.describe("local")
    result = aot.compile_step(config, local, 1)
    executable.save(result.compiled, result.report, str(tmp_path / "step"))
    run_config = aot.step_config(config, local, 1)
    exp = build(run_config, 64)
    spec = aot.train_batch_spec(run_config, exp.mesh)
    rng = np.random.default_rng(0)
    batch = sharding.global_batch({"video": rng.standard_normal(spec["video"].shape, np.float32),
                                   "label": rng.integers(0, 5, spec["label"].shape).astype(np.int32)},
                                  exp.mesh)
    losses = []
    for saved in (str(tmp_path / "step"), None):
        step = train.compile_train_step(exp, spec, saved)
        losses.append(float(step(train.initial_state(exp), batch)[1]["loss"]))
    assert losses[0] == losses[1]
    run_config.optim.lr *= 2
    with pytest.raises(ValueError, match="--compiled=.*program_sha256"):
        train.compile_train_step(build(run_config, 64), spec, str(tmp_path / "step"))
