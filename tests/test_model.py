"""The Flax model: sizes, implementation switches, train/eval behaviour, validation."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    GRADIENT_RTOL,
    LOGITS_ATOL,
    TOKENS_ATOL,
    assert_close_to_max,
    random_video,
    randomize,
    tiny_fields,
)

from uniformerv2_jax import UniFormerV2, create_model
from uniformerv2_jax.convert.mapping import stack_layers
from uniformerv2_jax.model import layer_runs, per_layer_intermediates
from uniformerv2_jax.presets import model_fields, model_from_fields


def param_count(model: UniFormerV2, frames: int = 8) -> int:
    size = model.input_resolution
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, frames, size, size, 3)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))


@pytest.mark.parametrize("variant, fields, expected", [
    ("B/16", dict(), 114_552_208),  # official K400 B/16 8x224 (no local MHRA)
    ("B/16", dict(no_lmhra=False), 133_543_312),
    ("L/14", dict(no_lmhra=False, temporal_downsample=True), 422_658_288),
    ("L/14@336", dict(frozen=True), 354_426_256),
    ("B/16", dict(no_lmhra=False, temporal_downsample=True, return_list=tuple(range(4, 12)),
                  num_classes=174, scan=True), 162_992_814),  # SSv2 B/16
])
def test_parameter_counts_equal_the_official_ones(variant, fields, expected):
    assert param_count(create_model(variant, **fields)) == expected


def test_every_parameter_has_logical_axis_names():
    model = UniFormerV2(**tiny_fields(scan=True))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
    boxed = jax.tree.leaves(shapes["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
    for b in boxed:
        assert len(b.names) == b.value.ndim
    names = {n for b in boxed for n in b.names}
    assert {"embed", "mlp", "heads", "kv", "classes", "layers", "reduced"} <= names


def logits_and_grads(model, variables, video):
    """Eval logits and d(sum of logits)/d(params), jitted."""
    loss = lambda p: model.apply({**variables, "params": p}, video).sum()  # noqa: E731
    return jax.jit(model.apply)(variables, video), jax.jit(jax.grad(loss))(variables["params"])


@pytest.fixture(scope="module")
def tiny():
    model = UniFormerV2(**tiny_fields())
    video = random_video(model)
    variables = randomize(jax.eval_shape(model.init, jax.random.key(0), video))
    return model, nn.unbox(variables), video


@pytest.fixture(scope="module")
def tiny_reference(tiny):
    return logits_and_grads(*tiny)


def test_layer_runs_split_tapped_and_untapped_layers():
    assert layer_runs(12, (8, 9, 10, 11)) == [(0, 8, False), (8, 12, True)]
    assert layer_runs(5, (0, 2)) == [(0, 1, True), (1, 2, False), (2, 3, True), (3, 5, False)]


@pytest.mark.parametrize("scan, remat", [(True, False), (False, True), (True, True)])
def test_scan_and_remat_give_the_numbers_of_the_plain_loop(tiny, tiny_reference, scan, remat):
    model, variables, video = tiny
    other = model.clone(scan=scan, remat=remat)
    other_vars = stack_layers(model, variables) if scan else variables
    # The stacked tree is exactly what the scanned model creates.
    abstract = jax.eval_shape(other.init, jax.random.key(0), video)
    assert jax.tree.structure(nn.unbox(abstract)) == jax.tree.structure(other_vars)

    logits, grads = logits_and_grads(other, other_vars, video)
    expected_logits, expected_grads = tiny_reference
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=LOGITS_ATOL)
    if scan:
        expected_grads = stack_layers(model, {"params": expected_grads})["params"]
    jax.tree.map(lambda a, b: assert_close_to_max(a, b, GRADIENT_RTOL), grads, expected_grads)


def test_intermediates_have_the_same_names_and_values_with_and_without_scan(tiny):
    model, variables, video = tiny

    def apply(m, v):
        _, state = jax.jit(m.apply, static_argnames="mutable")(v, video, mutable=("intermediates",))
        return state["intermediates"]

    loop = per_layer_intermediates(model, apply(model, variables))
    scanned = model.clone(scan=True)
    raw = apply(scanned, stack_layers(model, variables))
    assert "layers_1_3" in raw and "layer_1" not in raw  # nn.scan's own layout
    scan = per_layer_intermediates(scanned, raw)
    assert set(loop) == {"embed", "head_input", *(f"layer_{i}" for i in range(model.layers))}
    assert loop["layer_1"]["query"][0].shape == (2, 1, model.n_dim)
    assert jax.tree.structure(scan) == jax.tree.structure(loop)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=TOKENS_ATOL), scan, loop)


def test_jit_matches_eager_and_gradients_are_finite(tiny, tiny_reference):
    model, variables, video = tiny
    logits, grads = tiny_reference
    assert logits.shape == (2, 5)
    with jax.disable_jit():  # eager, op by op
        eager = model.apply(variables, video[:1])
    np.testing.assert_allclose(logits[:1], eager, atol=LOGITS_ATOL)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)


@pytest.mark.parametrize("scan", [False, True])
def test_dropout_and_drop_path_act_only_in_training(tiny, scan):
    model, variables, video = tiny
    if scan:
        variables = stack_layers(model, variables)
    model = model.clone(backbone_drop_path_rate=0.3, drop_path_rate=0.3, scan=scan)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    np.testing.assert_array_equal(apply(variables, video), apply(variables, video))

    def train(seed):
        out, _ = apply(variables, video, train=True, rngs={"dropout": jax.random.key(seed)},
                       mutable=("batch_stats",))
        return np.asarray(out)

    assert not np.allclose(train(0), train(1))
    np.testing.assert_array_equal(train(2), train(2))


def test_batchnorm_uses_running_stats_in_eval_and_updates_them_in_training(tiny):
    model, variables, video = tiny
    _, updated = model.apply(variables, video, train=True, rngs={"dropout": jax.random.key(0)},
                             mutable=["batch_stats"])
    old = variables["batch_stats"]["layer_0"]["block"]["lmhra1"]["norm"]
    new = updated["batch_stats"]["layer_0"]["block"]["lmhra1"]["norm"]
    # momentum 0.9 in Flax == PyTorch's 0.1: new = 0.9 * old + 0.1 * batch mean.
    _, state = model.apply(variables, video, mutable=["intermediates"])
    tokens = state["intermediates"]["embed"][0]  # what layer 0's first local MHRA normalises
    patches = np.asarray(tokens[:, :, 1:]).reshape(-1, model.width)
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * patches.mean(0), atol=1e-5)
    # In eval, the output depends on the running statistics.
    stats = jax.tree.map(lambda x: x * 2.0, variables["batch_stats"])
    assert not np.allclose(model.apply({**variables, "batch_stats": stats}, video),
                           model.apply(variables, video))


def test_fresh_model_is_the_image_model_per_frame_plus_identity_global_blocks():
    model = UniFormerV2(**tiny_fields())
    video = random_video(model)
    variables = model.init(jax.random.key(0), video)
    logits, state = model.apply(variables, video, mutable=["intermediates"])
    inter = state["intermediates"]
    # Zero-initialised outputs: the query stays zero, the local MHRA adds nothing.
    np.testing.assert_array_equal(inter["layer_2"]["query"][0], 0.0)
    shuffled = video[:, ::-1]
    last = inter["layer_2"]["block_out"][0]
    _, state_rev = model.apply(variables, shuffled, mutable=["intermediates"])
    np.testing.assert_allclose(state_rev["intermediates"]["layer_2"]["block_out"][0][:, ::-1],
                               last, atol=TOKENS_ATOL)
    np.testing.assert_allclose(inter["head_input"][0], 0.5 * last[:, :, 0].mean(1), atol=1e-6)


def test_frozen_model_has_no_balance_and_no_backbone_gradient():
    model = UniFormerV2(**tiny_fields(frozen=True))
    video = random_video(model)
    variables = nn.unbox(randomize(jax.eval_shape(model.init, jax.random.key(0), video)))
    assert "balance" not in variables["params"]
    grads = jax.jit(jax.grad(lambda p: model.apply({**variables, "params": p}, video).sum()))(
        variables["params"])
    assert float(jnp.abs(grads["layer_0"]["block"]["attn"]["in_proj_kernel"]).max()) == 0.0
    assert float(jnp.abs(grads["conv1"]).max()) == 0.0
    assert float(jnp.abs(grads["layer_2"]["global"]["attn"]["in_proj_kernel"]).max()) > 0.0


def test_any_clip_length_runs_and_temporal_downsampling_halves_time():
    model = UniFormerV2(**tiny_fields(temporal_downsample=True))
    video = random_video(model, frames=8)
    variables = jax.jit(model.init)(jax.random.key(0), video)
    _, state = jax.jit(model.apply, static_argnames="mutable")(
        variables, video, mutable=("intermediates",))
    assert state["intermediates"]["embed"][0].shape == (2, 4, 17, 32)
    assert jax.jit(model.apply)(variables, random_video(model, frames=6)).shape == (2, 5)


def test_bfloat16_compute_stays_close_to_float32(tiny):
    model, variables, video = tiny
    f32 = jax.jit(model.apply)(variables, video)
    bf16 = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, video)
    assert bf16.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (rounding 2^-8 relative) at each of the ~a dozen
    # roundings in sequence from the input to the logits: 0.05 of their scale.
    assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max())
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32


@pytest.mark.parametrize("fields, match", [
    (dict(input_resolution=30), "input_resolution"),
    (dict(n_dim=64), "n_dim"),
    (dict(heads=3), "heads"),
    (dict(return_list=(2, 1)), "return_list"),
    (dict(return_list=(1, 3)), "return_list"),
    (dict(mlp_dropout=(0.5,)), "mlp_dropout"),
    (dict(temporal_downsample=True, t_size=5), "t_size"),
    (dict(cls_dropout=1.0), "cls_dropout"),
    (dict(num_classes=0), "num_classes"),
])
def test_impossible_settings_are_rejected_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        UniFormerV2(**tiny_fields(**fields))


def test_unknown_fields_and_variants_are_rejected():
    with pytest.raises(ValueError, match="unknown model field.*no_lmhr"):
        create_model("B/16", no_lmhr=True)
    with pytest.raises(ValueError, match="unknown variant"):
        create_model("B/32")


def test_model_fields_survive_json_and_name_a_bad_dtype():
    model = create_model("B/16", dtype="bfloat16", mlp_dropout=(0.5, 0.4, 0.3, 0.2), scan=True)
    assert model.dtype == jnp.bfloat16
    fields = json.loads(json.dumps(model_fields(model)))
    assert fields["dtype"] == "bfloat16" and fields["return_list"] == [8, 9, 10, 11]
    assert model_from_fields(fields) == model
    with pytest.raises(ValueError, match="dtype"):
        model_from_fields({**fields, "dtype": "float64"})


def test_wrong_input_size_names_the_resolution(tiny):
    model, variables, _ = tiny
    with pytest.raises(ValueError, match="input_resolution"):
        model.apply(variables, np.zeros((1, 4, 48, 48, 3), np.float32))


@pytest.mark.parametrize("scan", [False, True])
def test_logical_axes_shard_over_a_device_mesh(scan):
    """Rules alone place the model on a (data, fsdp, tensor) mesh; logits are unchanged."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    assert jax.device_count() == 8, "conftest asks XLA for 8 host devices"
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rules = [("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
             ("heads", "tensor"), ("kv", None), ("reduced", None), ("classes", None),
             ("layers", None), ("frames", None), ("tokens", None)]
    model = UniFormerV2(**tiny_fields(scan=scan))
    video = random_video(model, batch=4)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, jax.random.key(0), video)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        variables = nn.unbox(jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), video))
        batch = jax.device_put(video, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
        logits = jax.jit(model.apply)(variables, batch)
    c_fc = variables["params"]["layers_0_1" if scan else "layer_0"]["block"]["mlp"]["c_fc"]["kernel"]
    expected_spec = (None, "fsdp", "tensor") if scan else ("fsdp", "tensor")
    assert c_fc.sharding.spec == PartitionSpec(*expected_spec)
    assert len(c_fc.addressable_shards) == 8 and c_fc.addressable_shards[0].data.size == c_fc.size // 4
    reference = jax.jit(model.apply)(jax.device_get(variables), video)
    np.testing.assert_allclose(logits, reference, atol=LOGITS_ATOL)


def test_training_mode_batch_stats_agree_between_loop_and_scan_remat(tiny):
    """Train-mode logits and BatchNorm updates survive nn.scan + nn.remat unchanged."""
    model, variables, video = tiny
    model = model.clone(mlp_dropout=0.0, cls_dropout=0.0)  # deterministic training pass
    other = model.clone(scan=True, remat=True)

    def train_step(m, v):
        fn = jax.jit(lambda v: m.apply(v, video, train=True, mutable=["batch_stats"]))
        return fn(v)

    logits, updated = train_step(model, variables)
    other_logits, other_updated = train_step(other, stack_layers(model, variables))
    np.testing.assert_allclose(other_logits, logits, atol=LOGITS_ATOL)
    expected = stack_layers(model, {"batch_stats": updated["batch_stats"]})["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 other_updated["batch_stats"], expected)
    assert not np.allclose(updated["batch_stats"]["layer_0"]["block"]["lmhra1"]["norm"]["mean"],
                           variables["batch_stats"]["layer_0"]["block"]["lmhra1"]["norm"]["mean"])


@pytest.mark.parametrize("scan", [False, True])
def test_remat_lowers_the_compiled_temporaries_and_keeps_the_gradients(scan):
    """XLA's own plan of the training gradient (dropout, drop-path, batch statistics): remat
    needs under 60% of the temporaries, with the same gradients (the same dropout masks)."""
    model = UniFormerV2(**tiny_fields(input_resolution=64, width=64, n_dim=64, layers=4,
                                      return_list=(2, 3), backbone_drop_path_rate=0.3,
                                      drop_path_rate=0.3, mlp_dropout=0.3))
    video = random_video(model)
    variables = nn.unbox(randomize(jax.eval_shape(model.init, jax.random.key(0), video)))
    if scan:
        model, variables = model.clone(scan=True), stack_layers(model, variables)

    def gradient(m):
        def loss(params):
            logits, _ = m.apply({**variables, "params": params}, video, train=True,
                                rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
            return jnp.sum(logits * jnp.arange(1.0, 6.0))
        return jax.jit(jax.grad(loss)).lower(variables["params"]).compile()

    plain, rematted = gradient(model), gradient(model.clone(remat=True))
    temp = [c.memory_analysis().temp_size_in_bytes for c in (plain, rematted)]
    assert temp[1] < 0.6 * temp[0], temp
    expected = plain(variables["params"])
    jax.tree.map(lambda a, b: assert_close_to_max(a, b, GRADIENT_RTOL), rematted(variables["params"]),
                 expected)
    assert float(jnp.abs(expected["layer_2" if not scan else "layers_2_4"]["global"]["mlp"]["c_fc"]
                         ["kernel"]).max()) > 0
