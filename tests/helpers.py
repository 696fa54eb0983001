"""What tests share besides fixtures: paths, float32 bounds, tiny models and data."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"


def _float32_floors() -> tuple[float, float, float, float]:
    layers = json.loads((FIXTURES / "tiny_a_layers.json").read_text())["checks"]
    training = json.loads((FIXTURES / "train_tiny_a.json").read_text())["f32_vs_f64"]
    return (layers["f32_vs_f64_logits_max_abs_diff"], layers["f32_vs_f64_block_outputs_max_abs_diff"],
            training["grad_worst_rel"], training["losses_rel"])


# Float32 bounds of the model's figures, each a stated multiple of the official float32
# result's error against its float64 twin (the floors of data/fixtures, see its README): any
# float32 computation of the model (the official one, ours, ours compiled another way) lies
# about a floor from the truth, so two of them about twice that; the rest of the factor is
# room for other CPUs' kernels.
LOGITS_FLOOR, TOKENS_FLOOR, GRADIENT_FLOOR, LOSS_FLOOR = _float32_floors()
LOGITS_ATOL = 10 * LOGITS_FLOOR  # logits (absolute; values of a few units)
TOKENS_ATOL = 5 * TOKENS_FLOOR  # tokens, queries and class tokens after blocks, the head's input
GRADIENT_RTOL = 10 * GRADIENT_FLOOR  # a gradient, relative to its tensor's largest magnitude


def assert_close_to_max(actual, expected, rtol: float, err_msg: str = "") -> None:
    """Equal within ``rtol`` of the expected array's largest magnitude: float32 noise scales
    with the largest terms of the sums, not with each element."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * float(np.abs(expected).max()),
                               err_msg=err_msg)


def parse_config_flags(*args: str):
    """The config main.py would run with for the command-line arguments ``args``
    (``--config=FILE[:ARG]`` and ``--config.FIELD=VALUE`` overrides)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main.py", *args]
    values = flags.FlagValues()
    # The overrides are read from sys_argv (default: sys.argv), not from the parsed list.
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def tiny_fields(**overrides) -> dict:
    """A small UniFormerV2 exercising every path: LMHRA x2, 2 global blocks."""
    fields = dict(input_resolution=32, patch_size=8, width=32, layers=3, heads=2, t_size=4,
                  no_lmhra=False, double_lmhra=True, return_list=(1, 2), n_dim=32, n_head=2,
                  num_classes=5)
    fields.update(overrides)
    return fields


def random_video(model, batch=2, frames=None, seed=0) -> np.ndarray:
    frames = frames or model.t_size
    shape = (batch, frames, model.input_resolution, model.input_resolution, 3)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomize(variables: dict, seed: int = 1) -> dict:
    """Every variable set to non-trivial random values (zero-inits made non-zero too).

    BatchNorm variances stay positive.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        values = rng.standard_normal(np.shape(leaf)).astype(np.float32) * 0.2
        if any(getattr(k, "key", None) == "var" for k in path):
            values = np.abs(values) + 0.5
        out.append(jnp.asarray(values, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def write_synthetic_records(directory: Path, per_class: int, seed: int, num_shards: int = 2,
                            frames: int = 16, size: int = 32) -> str:
    """The synthetic temporal task as DMVR shards (JPEG frames, no video files); returns a glob."""
    import tensorflow as tf

    from uniformerv2_jax.input import records, synthetic

    rng = np.random.default_rng(seed)
    clips = [(label, synthetic.render_clip(label, rng, frames, size))
             for _ in range(per_class) for label in range(2)]
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        path = directory / records.shard_name("clips", shard, num_shards)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i, (label, video) in enumerate(clips[shard::num_shards]):
                jpegs = [tf.io.encode_jpeg(frame, quality=95).numpy() for frame in video]
                writer.write(records.encode_clip(jpegs, label, synthetic.CLASSES[label], f"v{shard}_{i}"))
    return str(directory / "clips-*")


def tiny_train_config(records: dict, **overrides):
    """configs/synthetic.py shrunk: a 2-layer model on 4 frames (model.t_size) of 32x32
    (model.input_resolution), batch 8, from scratch."""
    import sys

    sys.path.insert(0, str(ROOT))
    from configs import synthetic
    from uniformerv2_jax.config import model_config

    c = synthetic.get_config("temporal")
    c.model = model_config("B/16", **tiny_fields(layers=2, return_list=(1,), num_classes=2,
                                                 mlp_dropout=0.0, cls_dropout=0.0))
    c.init_from = "scratch"  # random initialisation
    c.data.train, c.data.val = records["train"], records["val"]
    c.data.class_names = ""
    c.data.shuffle_buffer = 16
    c.data.num_clips, c.data.num_crops = 2, 3
    c.batch_size = c.eval_batch_size = 8
    c.train_steps = 6
    c.optim.warmup_epochs = 0.0
    c.log_every = c.checkpoint_every = 2
    c.eval_every = 100
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c
