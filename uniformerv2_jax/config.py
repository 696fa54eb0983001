"""Experiment configs: the shared defaults, the zoo's rows, and validation before compiling.

A config file in ``configs/`` is a table of rows (one per released experiment) and a
``get_config(arg)`` that picks one; :func:`experiment` turns a row into the full config
(model fields, data, optimiser, schedule, checkpoints, mesh). Every setting can be
overridden on the command line (``--config.optim.lr=2e-5``); :func:`validate` rejects
impossible combinations before anything is compiled, naming the field.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import ml_collections

from uniformerv2_jax import presets

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

# Per dataset: classes, label file (in data/labels) and the family's model and data recipe.
DATASETS = {
    "k400": dict(num_classes=400, labels="kinetics400_uniformerv2_order.txt", family="kinetics"),
    "k600": dict(num_classes=600, labels="kinetics600.txt", family="kinetics"),
    "k700": dict(num_classes=700, labels="kinetics700.txt", family="kinetics"),
    "k710": dict(num_classes=710, labels="kinetics710.txt", family="kinetics"),
    "mit": dict(num_classes=339, labels="moments_in_time_v1.txt", family="kinetics"),
    "sthv1": dict(num_classes=174, labels="something_something_v1.txt", family="something"),
    "sthv2": dict(num_classes=174, labels="something_something_v2.txt", family="something"),
    # HACS Segments uses the 200 ActivityNet v1.3 classes.
    "anet": dict(num_classes=200, labels="activitynet.txt", family="untrimmed"),
    "hacs": dict(num_classes=200, labels="activitynet.txt", family="untrimmed"),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment of the official zoo (reference section 5 and MODEL_ZOO)."""
    variant: str  # "B/16", "L/14", "L/14@336"
    frames: int  # input frames
    init: str  # what it starts from: "clip" or the checkpoint it fine-tunes
    batch: int  # global batch
    lr: float
    epochs: int
    warmup: int  # epochs
    views: tuple[int, int]  # test clips x crops
    top1: dict[str, float] = dataclasses.field(default_factory=dict)  # reported, per dataset
    frozen: bool = False
    head_map: str = ""  # how the starting checkpoint's head becomes this dataset's


def model_config(variant: str, **fields) -> ml_collections.ConfigDict:
    """Every field of the UniFormerV2 variant (preset defaults, then ``fields``)."""
    model = presets.create_model(variant, **fields)
    values = {name: getattr(model, name) for name in presets.MODEL_FIELDS}
    values["dtype"] = jnp.dtype(model.dtype).name
    return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
    """The shared defaults: the official solver, sparse sampling, B/16 Kinetics model."""
    c = ml_collections.ConfigDict()
    c.seed = 6666
    # "clip:PATH" (a CLIP checkpoint), "official:PATH" (a UniFormerV2 .pyth/.safetensors)
    # or "converted:DIR" (``main.py convert`` output); empty: random initialisation.
    c.init_from = ""
    c.head_map = ""  # with official/converted: k400|k600|k700|first:N|JSON list, or "new"
    c.model = model_config("B/16")
    c.data = ml_collections.ConfigDict(dict(
        train="",  # comma-separated globs of DMVR shards, or "tfds:NAME/SPLIT"
        val="",
        tfds_data_dir="",  # with tfds:NAME/SPLIT: where the prepared TFDS data is (gs:// too)
        num_classes=400,
        class_names="",  # one name per line; shown by eval and predict
        frames=8,
        crop=224,
        dense_stride=0,  # 0: sparse (TSN) sampling; else dense with this frame stride
        flip=True,
        area=(0.08, 1.0),
        randaugment="rand-m7-n4-mstd0.5-inc1",
        repeated_augment=1,
        mixup=0.0,
        cutmix=0.0,
        label_smoothing=0.0,
        shuffle_buffer=1024,
        test_clips=4,
        test_crops=3,
        on_bad_record="skip",  # or "raise"
        train_examples=0,  # per epoch; 0: counted from the records
    ))
    c.batch_size = 256  # global, clips per step
    c.eval_batch_size = 8  # global, videos per eval step (each with clips x crops views)
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-5, warmup_epochs=5.0, epochs=55.0, weight_decay=0.05, clip_norm=20.0,
        warmup_start_lr=1e-6, end_lr=1e-6, b1=0.9, b2=0.999, eps=1e-8))
    c.train_steps = 0  # > 0 overrides optim.epochs
    c.log_every = 50  # steps
    c.eval_every = 0  # steps; 0: once per epoch
    c.checkpoint_every = 1000  # steps; also at every eval and at the end
    c.keep = 3  # last checkpoints kept, besides the best by validation top-1
    c.nonfinite = "stop"  # NaN/Inf loss or gradients: "stop", or "skip" the update
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the rest
    c.axis_rules = AXIS_RULES
    return c


def experiment(dataset: str, row: Row) -> ml_collections.ConfigDict:
    """The full config of one zoo row on ``dataset`` (a key of :data:`DATASETS`)."""
    spec = DATASETS[dataset]
    layers = presets.PRESETS[row.variant]["layers"]
    model = dict(num_classes=spec["num_classes"], t_size=row.frames, frozen=row.frozen)
    c = base_config()
    if spec["family"] == "something":
        # Local MHRA twice per block, temporal downsampling, global blocks on the last
        # 8 (B/16) or 16 (L/14) layers, stochastic depth; no flips (direction is the label).
        n = 8 if layers == 12 else 16
        model.update(no_lmhra=False, double_lmhra=True, temporal_downsample=True,
                     return_list=tuple(range(layers - n, layers)), backbone_drop_path_rate=0.2,
                     drop_path_rate=0.4)
        c.data.flip = False
        c.data.repeated_augment = 2
    elif spec["family"] == "untrimmed":
        model.update(backbone_drop_path_rate=0.2, drop_path_rate=0.4)
    c.model = model_config(row.variant, **model)
    c.data.num_classes = spec["num_classes"]
    c.data.class_names = f"data/labels/{spec['labels']}"
    c.data.frames = row.frames
    c.data.crop = presets.PRESETS[row.variant]["input_resolution"]
    c.data.test_clips, c.data.test_crops = row.views
    c.batch_size = row.batch
    c.head_map = row.head_map
    c.optim.lr, c.optim.epochs, c.optim.warmup_epochs = row.lr, float(row.epochs), float(row.warmup)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the config field of an impossible setting."""
    def fail(field: str, why: str):
        raise ValueError(f"config.{field}: {why}")

    try:
        model = presets.model_from_fields(model_fields(c))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None
    d = c.data
    if d.crop != model.input_resolution:
        fail("data.crop", f"{d.crop} differs from model.input_resolution={model.input_resolution}")
    if d.frames < 1 or (model.temporal_downsample and d.frames % 2):
        fail("data.frames", f"{d.frames} is not divisible by the temporal stride 2 "
                            "(model.temporal_downsample)" if d.frames >= 1 else "must be positive")
    if d.num_classes != model.num_classes:
        fail("data.num_classes", f"{d.num_classes} differs from model.num_classes={model.num_classes}")
    if d.on_bad_record not in ("skip", "raise"):
        fail("data.on_bad_record", f"{d.on_bad_record!r}: expected 'skip' or 'raise'")
    if not (0 < d.area[0] <= d.area[1] <= 1):
        fail("data.area", f"{tuple(d.area)}: expected 0 < min <= max <= 1")
    if d.repeated_augment < 1 or d.test_clips < 1 or d.test_crops not in (1, 3) or d.dense_stride < 0:
        fail("data", "repeated_augment and test_clips must be >= 1, test_crops 1 or 3, "
                     "dense_stride >= 0")
    if min(d.mixup, d.cutmix, d.label_smoothing) < 0 or d.label_smoothing >= 1:
        fail("data", "mixup, cutmix must be >= 0 and label_smoothing in [0, 1)")
    if c.batch_size < 1 or c.eval_batch_size < 1:
        fail("batch_size", "batch sizes must be positive")
    o = c.optim
    if o.lr <= 0 or o.epochs <= 0 or not 0 <= o.warmup_epochs <= o.epochs:
        fail("optim", f"needs lr > 0, epochs > 0 and 0 <= warmup_epochs <= epochs "
                      f"(lr={o.lr}, epochs={o.epochs}, warmup_epochs={o.warmup_epochs})")
    if c.nonfinite not in ("stop", "skip"):
        fail("nonfinite", f"{c.nonfinite!r}: expected 'stop' or 'skip'")
    for field in ("log_every", "checkpoint_every", "keep"):
        if c[field] < 1:
            fail(field, "must be positive")
    if c.init_from and not re.match(r"^(clip|official|converted):.+", c.init_from):
        fail("init_from", f"{c.init_from!r}: expected clip:PATH, official:PATH or converted:DIR")
    sizes = [c.mesh[a] for a in ("data", "fsdp", "tensor")]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        fail("mesh", f"{dict(c.mesh)}: sizes must be positive, with at most one -1")


def model_fields(c: ml_collections.ConfigDict) -> dict:
    """The model's constructor fields from ``config.model`` (dtype name -> dtype)."""
    fields = c.model.to_dict()
    name = fields.get("dtype", "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.model.dtype={name!r}: expected float32, bfloat16 or float16")
    fields["dtype"] = getattr(jnp, name)
    return fields
