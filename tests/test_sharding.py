"""One jit program over meshes of 8 simulated devices: same step, sharded state, portable
checkpoints."""

import jax
import numpy as np
import optax
import pytest
from helpers import tiny_fields, tiny_train_config

from uniformerv2_jax import experiment, sharding, train
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.config import model_config

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


def config_for(mesh, records):
    c = tiny_train_config(records)
    # 8 heads and a 128-wide MLP split over up to 8 tensor shards; width 32 over 4 fsdp.
    c.model = model_config("B/16", **tiny_fields(heads=8, n_head=8, layers=2, return_list=(1,),
                                                 num_classes=2, mlp_dropout=0.0, cls_dropout=0.0))
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    # Adam's first step is lr * sign(g) wherever |g| >> eps: for gradients near zero that
    # amplifies float32 summation-order noise to the full step. A large eps makes the
    # update proportional to the gradient there, so parameters compare at float32 precision.
    c.optim.eps = 1e-3
    return c


def fixed_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"video": rng.standard_normal((8, 4, 32, 32, 3)).astype(np.float32),
            "label": np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32)}


def one_step(config, devices=None):
    exp = experiment.build(config, 64, devices)
    state = train.initial_state(exp)
    with sharding.activate(exp.mesh, exp.rules):
        new_state, metrics = train.jit_train_step(exp)(state, sharding.global_batch(fixed_batch(), exp.mesh))
    return exp, new_state, metrics


@pytest.fixture(scope="module")
def single_device(synthetic_records):
    _, state, metrics = one_step(config_for((1, 1, 1), synthetic_records), jax.devices()[:1])
    return jax.device_get(state), jax.device_get(metrics)


def assert_equals_single_device(state, metrics, single_device):
    reference_state, reference_metrics = single_device
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], reference_metrics["grad_norm"], rtol=1e-4)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                            jax.tree.leaves(reference_state.params)):
        np.testing.assert_allclose(np.asarray(a), b, atol=2e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("mesh", MESHES, ids=[f"data{a}_fsdp{b}_tensor{c}" for a, b, c in MESHES])
def test_a_step_on_any_mesh_equals_the_single_device_step(mesh, single_device, synthetic_records):
    exp, state, metrics = one_step(config_for(mesh, synthetic_records))
    assert_equals_single_device(state, metrics, single_device)
    # The parameters really are split as the rules say.
    data, fsdp, tensor = mesh
    fc = state.params["layer_0"]["block"]["mlp"]["c_fc"]["kernel"]  # (embed, mlp) = (32, 128)
    assert fc.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert {s.data.shape for s in fc.addressable_shards} == {(32 // fsdp, 128 // tensor)}
    qkv = state.params["layer_1"]["global"]["attn"]["in_proj_kernel"]  # (embed, 3, heads, kv)
    assert {s.data.shape for s in qkv.addressable_shards} == {(32 // fsdp, 3, 8 // tensor, 4)}
    mu = optax.tree_utils.tree_get(state.opt_state, "mu")["layer_0"]["block"]["mlp"]["c_fc"]["kernel"]
    assert mu.sharding == fc.sharding  # the optimiser state is sharded like its parameter


def test_the_pallas_attention_on_a_mesh_gives_the_single_device_step(single_device,
                                                                    synthetic_records):
    """The kernel runs once per shard (frames over data x fsdp, heads over tensor): the step
    equals the single-device step of the matmul form within the same bounds."""
    config = config_for((2, 2, 2), synthetic_records)
    config.model.kernels = "pallas+shifted"
    exp, state, metrics = one_step(config)
    assert exp.model.kernels == "pallas+shifted"
    assert_equals_single_device(state, metrics, single_device)


def test_a_checkpoint_saved_on_one_mesh_restores_on_another(synthetic_records, tmp_path):
    exp, state, _ = one_step(config_for((2, 2, 2), synthetic_records))
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save(1, state, {"data": [[0, 8, 0]]})
    checkpoints.wait()
    for mesh in ((8, 1, 1), (1, 1, 8)):
        target = experiment.build(config_for(mesh, synthetic_records), 64)
        step, restored, meta = checkpoints.restore(target.abstract_state)
        assert step == 1 and meta["data"] == [[0, 8, 0]]
        for a, b, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                              jax.tree.leaves(target.state_shardings)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert a.sharding == want
    checkpoints.close()


def test_mesh_sizes_are_checked_against_the_devices():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="needs 16 devices, there are 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 8, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
