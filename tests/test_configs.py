"""Every experiment config builds: valid, its model traced abstractly, its batch shapes."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from helpers import ROOT

from uniformerv2_jax import aot, experiment, train, zoo
from uniformerv2_jax import config as config_lib
from uniformerv2_jax.input import sources

CONFIG_FILES = sorted((ROOT / "configs").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_experiments():
    for path in CONFIG_FILES:
        if path.name == "folder.py":  # reads a records directory: tested on its own below
            continue
        module = load(path)
        rows = getattr(module, "ROWS", None)
        if rows is None:  # the demo config: its own arguments
            yield from ((path.name, arg) for arg in ("temporal", "order_blind"))
            continue
        default = module.get_config.__defaults__[0]
        datasets = [default.split("/")[0]] if "/" in default else [None]
        if path.stem == "kinetics":
            datasets = ["k400", "k600", "k700"]
        elif path.stem == "something":
            datasets = ["sthv1", "sthv2"]
        elif path.stem == "untrimmed":
            datasets = ["anet", "hacs"]
        for dataset in datasets:
            for name in rows:
                yield path.name, f"{dataset}/{name}" if dataset else name


EXPERIMENTS = list(all_experiments())


def test_the_zoo_is_complete():
    names = {f"{f}:{a}" for f, a in EXPERIMENTS}
    assert len(EXPERIMENTS) == 49 + 2  # the zoo, and the demo with its ablation
    for expected in ("kinetics.py:k400/l14_336_64x336_k710", "kinetics.py:k700/frozen_l14_336_32x336_k710",
                     "k710.py:frozen_l14_336_8x336", "mit.py:l14_336_8x336",
                     "something.py:sthv1/l14_32x224", "untrimmed.py:hacs/l14_32x224"):
        assert expected in names


@pytest.mark.parametrize("file, arg", EXPERIMENTS, ids=[f"{f}:{a}" for f, a in EXPERIMENTS])
def test_config_builds_its_model_and_batch_spec(file, arg):
    config = load(ROOT / "configs" / file).get_config(arg)
    if file != "synthetic.py":  # the zoo: what the row starts from must be said
        with pytest.raises(ValueError, match=r"config.init_from: is empty: this experiment starts from"):
            config_lib.validate(config)
        config.init_from = "scratch"
    config_lib.validate(config)
    model = config_lib.build_model(config)
    spec = aot.train_batch_spec(config)
    frames, crop = config.model.t_size, config.model.input_resolution
    assert spec["video"].shape == (config.batch_size, frames, crop, crop, 3)
    assert spec["label"].shape == (config.batch_size,)
    assert aot.eval_batch_spec(config)["video"].shape == (
        config.eval_batch_size, config.data.num_clips * config.data.num_crops, frames, crop, crop, 3)
    one = jax.ShapeDtypeStruct((1, *spec["video"].shape[1:]), jnp.float32)
    variables = jax.eval_shape(model.clone(scan=True).init, jax.random.key(0), one)
    logits = jax.eval_shape(model.clone(scan=True).apply, variables, one)
    assert logits.shape == (1, config.model.num_classes)
    if "sthv" in arg:
        assert model.temporal_downsample and not model.no_lmhra and not config.data.flip
    if "frozen" in arg:
        assert model.frozen and config.data.num_crops == 1


def test_batch_specs_match_what_the_pipelines_yield(synthetic_records):
    from helpers import tiny_train_config

    config = tiny_train_config(synthetic_records, **{"data.mixup_alpha": 0.8})
    source = sources.resolve(config.data.train, "data.train")
    exp = experiment.build(config, 16)
    batch = next(train.train_stream(exp, source, (0, 0)))
    for key, spec in aot.train_batch_spec(config).items():
        assert batch[key].shape == spec.shape and batch[key].dtype == spec.dtype, key


# --- What a run starts from (config.init_from) ----------------------------------------

# The released checkpoints the fine-tuning rows start from (reference 4.2, MODEL_ZOO).
RELEASED = {
    "k710_uniformerv2_b16_8x224.pyth", "k710_uniformerv2_l14_8x224.pyth",
    "k710_uniformerv2_l14_8x336.pyth", "frozen_k710_uniformerv2_l14_8x336.pyth",
    "k400_k710_uniformerv2_b16_8x224.pyth", "k400_k710_uniformerv2_l14_8x224.pyth",
    "k400_k710_uniformerv2_l14_16x224.pyth", "k400_k710_uniformerv2_l14_32x224.pyth",
    "k400_k710_uniformerv2_l14_32x336.pyth"}


def test_every_row_starts_from_clip_or_a_row_of_the_zoo_with_a_released_checkpoint():
    for path in CONFIG_FILES:
        for name, row in getattr(load(path), "ROWS", {}).items():
            if row.init == "clip":
                continue
            file, _, arg = row.init.partition(":")
            source = load(ROOT / "configs" / file)
            assert arg.split("/")[-1] in source.ROWS, (path.name, name)
            assert source.ROWS[arg.split("/")[-1]].variant == row.variant, (path.name, name)
            assert zoo.official_file(row.init) in RELEASED, (path.name, name)


@pytest.mark.parametrize("file, arg, expected", [
    ("kinetics.py", "k400/b16_8x224_k710",
     ("configs/k710.py:b16_8x224 (converted:DIR of it, or the released "
      "official:k710_uniformerv2_b16_8x224.pyth)")),
    ("kinetics.py", "k600/l14_32x224_k710", "official:k710_uniformerv2_l14_8x224.pyth"),
    ("kinetics.py", "k700/frozen_l14_336_32x336_k710", "official:frozen_k710_uniformerv2_l14_8x336.pyth"),
    ("mit.py", "l14_336_8x336", "official:k400_k710_uniformerv2_l14_32x336.pyth"),
    ("untrimmed.py", "hacs/l14_16x224", "official:k400_k710_uniformerv2_l14_16x224.pyth"),
    ("kinetics.py", "k400/b16_8x224", "CLIP B/16 (clip:ViT-B-16.pt)"),
    ("k710.py", "l14_336_8x336", "CLIP L/14@336 (clip:ViT-L-14-336px.pt)"),
    ("something.py", "sthv2/l14_16x224", "CLIP L/14 (clip:ViT-L-14.pt)"),
])
def test_a_zoo_row_without_init_from_refuses_to_start_naming_its_starting_point(file, arg, expected):
    config = load(ROOT / "configs" / file).get_config(arg)
    with pytest.raises(ValueError, match="config.init_from") as error:
        config_lib.validate(config)
    assert expected in str(error.value) and "--config.init_from=scratch" in str(error.value)
    config.init_from = "scratch"  # explicit random initialisation
    config_lib.validate(config)
    config.init_from = "official:k710_uniformerv2_b16_8x224.pyth"
    config_lib.validate(config)


def test_a_fine_tune_row_from_scratch_builds_and_without_init_from_train_refuses(tmp_path):
    config = load(ROOT / "configs" / "kinetics.py").get_config("k400/b16_8x224_k710")
    with pytest.raises(ValueError, match="config.init_from.*k710_uniformerv2_b16_8x224"):
        train.train(config, tmp_path / "run")  # before reading data or making the workdir
    assert not (tmp_path / "run").exists()
    config.init_from = "scratch"
    exp = experiment.build(config, 240_000)
    assert exp.mesh.shape["data"] == jax.device_count() and exp.model.num_classes == 400


def test_initial_state_refuses_an_empty_init_from_and_scratch_is_random(synthetic_records):
    from helpers import tiny_train_config

    config = tiny_train_config(synthetic_records, init_from="")
    exp = experiment.build(config, 16)  # building for evaluation does not need it
    with pytest.raises(ValueError, match="config.init_from: is empty.*init_from=scratch"):
        train.initial_state(exp)
    config.init_from = "scratch"
    state = train.initial_state(exp)
    from uniformerv2_jax.pretrained import load_pretrained

    params, batch_stats = load_pretrained("scratch", "", exp.model, state.params, state.batch_stats)
    assert params is state.params and batch_stats is state.batch_stats


# --- Meshes are checked when the run is built, before anything compiles -----------------

@pytest.mark.parametrize("mesh, devices, fields, message", [
    ((1, 3, 1), 3, {}, r"config.mesh.fsdp=3 does not divide model.width=32"),
    ((2, 1, 4), 8, {}, r"config.mesh.tensor=4 does not divide model.heads=2"),
    ((1, 1, 2), 2, {"mlp_factor": 1.1},
     r"config.mesh.tensor=2 does not divide the global MLP width model.mlp_factor x model.n_dim=35"),
])
def test_a_mesh_that_cannot_split_the_model_is_refused_naming_both_fields(
        synthetic_records, mesh, devices, fields, message):
    from helpers import tiny_fields, tiny_train_config

    config = tiny_train_config(synthetic_records)
    config.model = config_lib.model_config("B/16", **tiny_fields(layers=2, return_list=(1,),
                                                                 num_classes=2, **fields))
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.batch_size = config.eval_batch_size = 6 * mesh[0] * mesh[1]
    with pytest.raises(ValueError, match=message):
        experiment.build(config, 16, jax.devices()[:devices])


def test_batches_that_do_not_split_over_the_mesh_are_refused(synthetic_records):
    from helpers import tiny_train_config

    config = tiny_train_config(synthetic_records, batch_size=12)  # data = 8 devices
    with pytest.raises(ValueError, match=r"config.batch_size=12 must be divisible by the data x fsdp "
                                         r"mesh size 8 \(config.mesh.data=8 x config.mesh.fsdp=1\)"):
        experiment.build(config, 16)
    experiment.build(config)  # evaluation does not use the training batch
    config.batch_size, config.eval_batch_size, config.mesh.fsdp = 8, 4, 2
    with pytest.raises(ValueError, match=r"config.eval_batch_size=4 .* \(config.mesh.data=4 x "
                                         r"config.mesh.fsdp=2\)"):
        experiment.build(config)


# --- One source of truth: the clip and the classes are the model's --------------------

def test_the_data_config_uses_the_pipelines_own_argument_names():
    import inspect

    from uniformerv2_jax.input import pipeline

    data = config_lib.base_config().data
    train_args = set(inspect.signature(pipeline.train_dataset).parameters)
    eval_args = set(inspect.signature(pipeline.eval_dataset).parameters)
    # class_names and label_from become the pipelines' label_names (config.label_names).
    sources_and_counts = {"train", "val", "tfds_data_dir", "class_names", "label_from", "train_examples"}
    assert set(data) - sources_and_counts <= train_args | eval_args
    config = config_lib.base_config()
    config.data.mixup_alpha, config.data.num_clips = 0.8, 2
    assert config_lib.pipeline_args(pipeline.train_dataset, config)["mixup_alpha"] == 0.8
    assert config_lib.pipeline_args(pipeline.eval_dataset, config)["num_clips"] == 2
    assert "mixup_alpha" not in config_lib.pipeline_args(pipeline.eval_dataset, config)


@pytest.mark.parametrize("start, clips, batch, lr, epochs", [
    ("", 1000, 64, 1e-5 * 64 / 256, 55.0),  # an eighth of 1000 clips -> 64
    (",k400", 1000, 64, 2e-6 * 64 / 256, 5.0),
    ("", 20, 8, 1e-5 * 8 / 256, 55.0),  # at least 8
    ("", 100_000, 256, 1e-5, 55.0),  # at most the official 256
])
def test_the_own_videos_config_scales_the_official_recipe_to_the_data(tmp_path, start, clips,
                                                                      batch, lr, epochs):
    import json

    names = ["cooking", "dancing", "juggling"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    shards = {f"train-0000{i}-of-00002.tfrecord": n for i, n in enumerate((clips // 2, clips - clips // 2))}
    for name in shards:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "train.counts.json").write_text(json.dumps(shards))  # as write_records leaves it
    config = load(ROOT / "configs" / "folder.py").get_config(f"{tmp_path}{start}")
    assert config.model.num_classes == 3 and config.data.class_names == str(tmp_path / "classes.txt")
    assert config.batch_size == batch and config.optim.lr == pytest.approx(lr)
    assert config.optim.epochs == epochs and config.head_map == "new" and not config.data.val
    assert ("k400_k710_uniformerv2_b16_8x224.pyth" if start else "CLIP B/16") in config.init_expected


def test_tuple_model_fields_are_overridden_from_the_command_line():
    from helpers import parse_config_flags

    config = parse_config_flags(f"--config={ROOT / 'configs' / 'kinetics.py'}",
                                "--config.model.return_list=(6, 11)")
    assert config.model.return_list == (6, 11)
    assert config_lib.build_model(config).return_list == (6, 11)


def test_the_data_config_has_no_copy_of_the_models_fields():
    from helpers import parse_config_flags

    config = config_lib.base_config()
    assert not {"num_classes", "crop", "frames"} & set(config.data.keys())
    for field in ("crop=224", "num_classes=400", "frames=8"):
        with pytest.raises(AttributeError, match=f"'{field.split('=')[0]}'"):
            parse_config_flags(f"--config={ROOT / 'configs' / 'kinetics.py'}",
                               f"--config.data.{field}")


def test_the_pipelines_read_the_clip_and_classes_from_the_model(synthetic_records):
    from helpers import tiny_fields, tiny_train_config

    config = tiny_train_config(synthetic_records, **{"data.mixup_alpha": 0.8})
    config.model = config_lib.model_config("B/16", **tiny_fields(
        layers=2, return_list=(1,), num_classes=3, t_size=8, input_resolution=24))
    exp = experiment.build(config, 16)
    source = sources.resolve(config.data.train, "data.train")
    batch = next(train.train_stream(exp, source, (0, 0)))
    assert batch["video"].shape == (8, 8, 24, 24, 3) and batch["targets"].shape == (8, 3)
    assert aot.train_batch_spec(config)["targets"].shape == (8, 3)
