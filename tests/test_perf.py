"""Throughput accounting of the training loop: FLOPs, MFU, input wait, profiler traces."""

import gzip
import json
import types

import jax
import jax.numpy as jnp
import pytest
from helpers import tiny_train_config

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import experiment, perf, sharding, train

FAKE_PEAK = 0.002  # TFLOP/s


@pytest.fixture(scope="module")
def profiled_run(synthetic_records, tmp_path_factory):
    """4 steps logged one by one, steps 2-3 profiled, with a fake peak for the CPU; the
    number of logged steps is recorded whenever a trace starts or stops."""
    workdir = tmp_path_factory.mktemp("perf_run")
    config = tiny_train_config(synthetic_records, log_every=1, train_steps=4, profile_steps="2-3",
                               **{"data.val": ""})
    logged = lambda: sum("train/loss" in r for r in map(json.loads, (  # noqa: E731
        workdir / "metrics.jsonl").read_text().splitlines()))
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(perf.PEAK_TFLOPS, jax.devices()[0].device_kind, (FAKE_PEAK, FAKE_PEAK))
        start, stop = jax.profiler.start_trace, jax.profiler.stop_trace
        mp.setattr(jax.profiler, "start_trace",
                   lambda *a, **k: (calls.append(("start", logged())), start(*a, **k)))
        mp.setattr(jax.profiler, "stop_trace", lambda: (calls.append(("stop", logged())), stop()))
        train.train(config, workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return config, workdir, [r for r in rows if "train/loss" in r], calls


def compiled_step_flops(config) -> float:
    """XLA's count for the compiled step of ``config``, compiled here independently."""
    exp = experiment.build(config, 16)
    m, batch_sharding = exp.model, sharding.batch_sharding(exp.mesh)
    batch = {"video": jax.ShapeDtypeStruct((config.batch_size, m.t_size, m.input_resolution,
                                            m.input_resolution, 3), jnp.float32, sharding=batch_sharding),
             "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding)}
    cost = train.compile_train_step(exp, batch).cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_logged_tflops_use_the_compiled_steps_flops_and_mfu_the_peak(profiled_run):
    config, _, rows, _ = profiled_run
    flops = compiled_step_flops(config)
    assert flops > 0
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["perf/tflops_per_device"] * r["perf/step_seconds"] * 1e12 == pytest.approx(flops, rel=1e-9)
        assert r["perf/mfu"] == pytest.approx(r["perf/tflops_per_device"] / FAKE_PEAK, rel=1e-12)


def test_input_wait_is_logged_as_part_of_the_step(profiled_run):
    _, _, rows, _ = profiled_run
    for r in rows:
        assert 0 <= r["perf/input_wait_seconds"] < r["perf/step_seconds"]
        assert r["perf/input_wait_fraction"] == pytest.approx(
            r["perf/input_wait_seconds"] / r["perf/step_seconds"])
        assert r["perf/clips_per_second"] == pytest.approx(8 / r["perf/step_seconds"])


def test_profile_steps_trace_exactly_that_window(profiled_run):
    _, workdir, _, calls = profiled_run
    # Started after step 1 was logged (before step 2 ran), stopped after step 3's log.
    assert calls == [("start", 1), ("stop", 3)]
    traces = [p for pattern in ("*.xplane.pb", "*trace.json.gz")
              for p in (workdir / "profile").rglob(pattern)]
    assert traces and all(p.stat().st_size > 0 for p in traces)
    # The compiled step's runs are in it; Python function calls ("$file:line name" events)
    # are not: JAX's Python tracer can crash the process when it stops (perf.trace_options).
    (perfetto,) = (workdir / "profile").rglob("perfetto_trace.json.gz")
    events = json.loads(gzip.decompress(perfetto.read_bytes()))["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any("train_step" in name for name in names)
    assert not [name for name in names if name.startswith("$")]


@pytest.mark.parametrize("value", ["5", "3-2", "0-2", "a-b", "1-2-3", "-1-2"])
def test_bad_profile_steps_are_refused_naming_the_field(synthetic_records, value):
    with pytest.raises(ValueError, match="config.profile_steps"):
        config_lib.validate(tiny_train_config(synthetic_records, profile_steps=value))


def test_profile_window_and_due():
    config = config_lib.base_config()
    assert config_lib.profile_window(config) == range(0)
    config.profile_steps = " 3 - 5"
    window = config_lib.profile_window(config)
    assert list(window) == [3, 4, 5]
    assert [s for s in range(1, 8) if train.due(s, window=window)] == [3, 4, 5]
    assert [s for s in range(1, 8) if train.due(s, 3, 7)] == [3, 6, 7]


def test_peak_table_and_speed_values():
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    assert perf.peak_tflops(h100, jnp.bfloat16) == 989.0
    assert perf.peak_tflops(h100, "float32") == 494.5
    assert perf.peak_tflops(types.SimpleNamespace(device_kind="TPU v5 lite"), "bfloat16") == 197.0
    assert perf.peak_tflops(jax.devices("cpu")[0], "float32") is None
    values = perf.speed_values(2.0, 16, flops=4e12, peak=4.0, input_wait=0.5)
    assert values == {"perf/step_seconds": 2.0, "perf/clips_per_second": 8.0,
                      "perf/tflops_per_device": 2.0, "perf/mfu": 0.5,
                      "perf/input_wait_seconds": 0.5, "perf/input_wait_fraction": 0.25}
    # No peak (CPU): TFLOP/s without MFU; no FLOPs (model.scan): neither.
    assert "perf/mfu" not in perf.speed_values(2.0, 16, flops=4e12)
    assert set(perf.speed_values(2.0, 16)) == {"perf/step_seconds", "perf/clips_per_second"}


def test_scanned_models_report_no_flops(synthetic_records):
    config = tiny_train_config(synthetic_records, **{"model.scan": True})
    exp = experiment.build(config, 16)
    assert perf.step_flops(None, exp.model) is None


def test_cost_analysis_counts_per_device_on_a_sharded_mesh():
    """What perf.step_flops relies on: the compiled SPMD program is one device's share."""
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    x, w = jax.ShapeDtypeStruct((64, 256), jnp.float32), jax.ShapeDtypeStruct((256, 512), jnp.float32)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    model = types.SimpleNamespace(scan=False)
    single = perf.step_flops(jax.jit(jnp.dot).lower(x, w).compile(), model)
    sharded = perf.step_flops(jax.jit(jnp.dot, in_shardings=(split, whole)).lower(x, w).compile(), model)
    assert single == 2 * 64 * 256 * 512
    assert sharded == single / 8
