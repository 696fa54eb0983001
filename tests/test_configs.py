"""Every experiment config builds: valid, its model traced abstractly, its batch shapes."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import train
from uniformerv2_jax.presets import model_from_fields

CONFIG_FILES = sorted((ROOT / "configs").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_experiments():
    for path in CONFIG_FILES:
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
    config_lib.validate(config)
    model = model_from_fields(config_lib.model_fields(config))
    spec = train.batch_spec(config)
    frames, crop = config.data.frames, config.data.crop
    assert spec["video"].shape == (config.batch_size, frames, crop, crop, 3)
    assert spec["label"].shape == (config.batch_size,)
    assert train.eval_batch_spec(config)["video"].shape == (
        config.eval_batch_size, config.data.test_clips * config.data.test_crops, frames, crop, crop, 3)
    one = jax.ShapeDtypeStruct((1, *spec["video"].shape[1:]), jnp.float32)
    variables = jax.eval_shape(model.clone(scan=True).init, jax.random.key(0), one)
    logits = jax.eval_shape(model.clone(scan=True).apply, variables, one)
    assert logits.shape == (1, config.data.num_classes)
    if "sthv" in arg:
        assert model.temporal_downsample and not model.no_lmhra and not config.data.flip
    if "frozen" in arg:
        assert model.frozen and config.data.test_crops == 1


def test_batch_specs_match_what_the_pipelines_yield(synthetic_records):
    from conftest import tiny_train_config

    config = tiny_train_config(synthetic_records, **{"data.mixup": 0.8})
    source = train.resolve_source(config.data.train, "data.train")
    exp = train.build(config, 16)
    batch = next(train.train_stream(exp, source, (0, 0)))
    for key, spec in train.batch_spec(config).items():
        assert batch[key].shape == spec.shape and batch[key].dtype == spec.dtype, key
