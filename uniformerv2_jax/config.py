"""Experiment configs: the shared defaults, and validation before compiling.

:func:`base_config` holds every setting (model fields, data, optimiser, schedule,
checkpoints, mesh); the zoo's rows (:mod:`zoo`) and ``configs/`` start from it. Every
setting can be overridden on the command line (``--config.optim.lr=2e-5``); :func:`validate` rejects
impossible combinations before anything is compiled, naming the field, and
:func:`check_mesh` the splits the mesh cannot make, once the device count is known.

The model's fields are the one source of the clip shape and the class count: the data
pipelines read ``config.model.t_size`` (input frames), ``input_resolution`` (the crop)
and ``num_classes``. Besides its sources, ``config.data`` holds the pipeline's settings
under the pipeline functions' own argument names (:func:`pipeline_args` passes them on).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from uniformerv2_jax import labels, presets, sharding
from uniformerv2_jax.model import UniFormerV2

# init_from value for random initialisation; it must be said explicitly.
SCRATCH = "scratch"

def model_config(variant: str, **fields) -> ml_collections.ConfigDict:
    """Every field of the UniFormerV2 variant (preset defaults, then ``fields``)."""
    values = presets.model_fields(presets.create_model(variant, **fields))
    # Tuples, not JSON's lists: ml_collections overrides tuples from the command line.
    return ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v
                                      for k, v in values.items()})


def build_model(c: ml_collections.ConfigDict) -> UniFormerV2:
    """The model ``config.model`` describes; errors name the field."""
    try:
        return presets.model_from_fields(c.model.to_dict())
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from None


def pipeline_args(fn: Callable, c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields of ``config.data`` that are arguments of the pipeline function ``fn``."""
    accepted = inspect.signature(fn).parameters
    return {k: v for k, v in c.data.to_dict().items() if k in accepted}


def label_names(c: ml_collections.ConfigDict) -> list[str] | None:
    """The class list that decides the records' labels by name (``config.data.label_from``
    "text" with ``config.data.class_names``), or None: labels by index."""
    if c.data.label_from != "text" or not c.data.class_names:
        return None
    return labels.read_class_names(c.data.class_names)


def base_config() -> ml_collections.ConfigDict:
    """The shared defaults: the official solver, sparse sampling, B/16 Kinetics model."""
    c = ml_collections.ConfigDict()
    c.seed = 6666
    # "clip:PATH" (a CLIP checkpoint), "official:PATH" (a UniFormerV2 .pyth/.safetensors),
    # "converted:DIR" (``main.py convert`` output), or "scratch" (random initialisation).
    # Training refuses to start while it is empty.
    c.init_from = ""
    c.init_expected = ""  # a zoo row's starting point, in words (for that refusal)
    c.head_map = ""  # with official/converted: k400|k600|k700|first:N|JSON list, or "new"
    # The clip (model.t_size frames of model.input_resolution^2) and the class count
    # (model.num_classes) are the model's fields; the data pipelines read them there.
    c.model = model_config("B/16")
    c.data = ml_collections.ConfigDict(dict(
        train="",  # comma-separated globs of DMVR shards, or "tfds:NAME/SPLIT"
        val="",
        tfds_data_dir="",  # with tfds:NAME/SPLIT: where the prepared TFDS data is (gs:// too)
        class_names="",  # one name per line; shown by eval and predict
        # With class_names: "text", a record's label is its label name's place in the list
        # (clip/label/text, or clip/label/string; records without a name keep their index),
        # a name not in the list is an error; "index": clip/label/index as written.
        label_from="text",
        train_examples=0,  # per epoch; 0: counted from the records
        # The rest are arguments of pipeline.train_dataset / eval_dataset, by their names.
        dense_stride=0,  # 0: sparse (TSN) sampling; else dense with this frame stride
        flip=True,
        area=(0.08, 1.0),
        randaugment_spec="rand-m7-n4-mstd0.5-inc1",
        repeated_augment=1,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
        shuffle_buffer=1024,
        num_clips=4,  # test views: clips x crops per video
        num_crops=3,
        on_bad_record="skip",  # or "raise"
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
    c.profile_steps = ""  # "N-M": a JAX profiler trace of steps N..M in WORKDIR/profile
    # -1: the rest. dcn_data: how many slices (TPU) the data axis spans, over the data-centre
    # network; it must equal the slices of the devices (multi-slice training).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
    c.axis_rules = sharding.AXIS_RULES
    return c


def _fail(field: str, why: str):
    raise ValueError(f"config.{field}: {why}")


def validate(c: ml_collections.ConfigDict, training: bool = True) -> None:
    """Raises ValueError naming the config field of an impossible setting.

    ``training``: the config is about to start a run, so it must say what the run starts
    from (:func:`validate_init_from`); evaluating or predicting from a trained checkpoint
    does not need that.
    """
    model = build_model(c)
    if model.t_size < 1:
        _fail("model.t_size", f"{model.t_size}: the clip needs at least one frame")
    d = c.data
    if d.on_bad_record not in ("skip", "raise"):
        _fail("data.on_bad_record", f"{d.on_bad_record!r}: expected 'skip' or 'raise'")
    if d.label_from not in ("text", "index"):
        _fail("data.label_from", f"{d.label_from!r}: expected 'text' or 'index'")
    if not (0 < d.area[0] <= d.area[1] <= 1):
        _fail("data.area", f"{tuple(d.area)}: expected 0 < min <= max <= 1")
    if d.repeated_augment < 1 or d.num_clips < 1 or d.num_crops not in (1, 3) or d.dense_stride < 0:
        _fail("data", "repeated_augment and num_clips must be >= 1, num_crops 1 or 3, "
                      "dense_stride >= 0")
    if min(d.mixup_alpha, d.cutmix_alpha, d.label_smoothing) < 0 or d.label_smoothing >= 1:
        _fail("data", "mixup_alpha, cutmix_alpha must be >= 0 and label_smoothing in [0, 1)")
    if c.batch_size < 1 or c.eval_batch_size < 1:
        _fail("batch_size", "batch sizes must be positive")
    o = c.optim
    if o.lr <= 0 or o.epochs <= 0 or not 0 <= o.warmup_epochs <= o.epochs:
        _fail("optim", f"needs lr > 0, epochs > 0 and 0 <= warmup_epochs <= epochs "
                       f"(lr={o.lr}, epochs={o.epochs}, warmup_epochs={o.warmup_epochs})")
    if c.nonfinite not in ("stop", "skip"):
        _fail("nonfinite", f"{c.nonfinite!r}: expected 'stop' or 'skip'")
    for field in ("log_every", "checkpoint_every", "keep"):
        if c[field] < 1:
            _fail(field, "must be positive")
    profile_window(c)
    if c.init_from not in ("", SCRATCH) and not re.match(r"^(clip|official|converted):.+",
                                                         c.init_from):
        _fail("init_from", f"{c.init_from!r}: expected clip:PATH, official:PATH, converted:DIR "
                           f"or {SCRATCH}")
    if training:
        validate_init_from(c)
    sizes = [c.mesh[a] for a in ("data", "fsdp", "tensor")]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        _fail("mesh", f"{dict(c.mesh)}: sizes must be positive, with at most one -1")
    if c.mesh.get("dcn_data", 1) < 1:
        _fail("mesh.dcn_data", f"{c.mesh.dcn_data}: the number of slices the data axis spans, >= 1")


def profile_window(c: ml_collections.ConfigDict) -> range:
    """The steps ``config.profile_steps`` ("N-M", 1 <= N <= M, both traced) asks to
    profile; empty for ""."""
    text = c.get("profile_steps", "")
    if not text:
        return range(0)
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        _fail("profile_steps", f"{text!r}: expected \"\" or \"N-M\" with 1 <= N <= M (steps "
                               "N to M, counted from 1)")
    return range(int(match[1]), int(match[2]) + 1)


def validate_init_from(c: ml_collections.ConfigDict) -> None:
    """A run starts from what ``config.init_from`` names, never from random weights by
    omission: empty is refused, ``scratch`` asks for random initialisation."""
    if c.init_from:
        return
    expected = c.get("init_expected", "")
    _fail("init_from", "is empty: "
          + (f"this experiment starts from {expected}. " if expected else
             "give clip:PATH, official:PATH or converted:DIR. ")
          + f"Pass --config.init_from={SCRATCH} to train from random initialisation")


def sharded_sizes(model) -> dict[str, tuple[tuple[str, int], ...]]:
    """The model's sizes along each logical parameter axis, named by their config fields."""
    m = model
    sizes = {
        "embed": (("model.width", m.width), ("model.n_dim", m.n_dim)),
        "heads": (("model.heads", m.heads), ("model.n_head", m.n_head)),
        "mlp": (("the MLP width 4 x model.width", 4 * m.width),
                ("the global MLP width model.mlp_factor x model.n_dim",
                 round(m.mlp_factor * m.n_dim))),
        "kv": (("model.width / model.heads", m.width // m.heads),
               ("model.n_dim / model.n_head", m.n_dim // m.n_head)),
        "classes": (("model.num_classes", m.num_classes),),
    }
    if not m.no_lmhra:
        sizes["reduced"] = (("model.width // model.dw_reduction", int(m.width // m.dw_reduction)),)
    return sizes


def check_mesh(c: ml_collections.ConfigDict, model, mesh_sizes: Mapping[str, int],
               training: bool = True) -> None:
    """Raises ValueError, naming ``config.mesh.*`` and the model or batch field, for a
    split the resolved mesh (``mesh_sizes``: axis -> size) cannot make: every size a
    parameter axis is sharded over (per ``config.axis_rules``) must divide by the
    product of its mesh axes, and the global batches by ``data x fsdp`` and the process
    count (``batch_size`` when ``training``; ``eval_batch_size`` unless a training run
    has no ``data.val`` to evaluate on). Called before anything is traced:
    JAX would fail only at the first jit (and a resumed run would then take every
    checkpoint for damaged)."""
    sizes = sharded_sizes(model)
    for logical, axes in c.axis_rules:
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if logical not in sizes or not axes:
            continue
        shards = math.prod(mesh_sizes[a] for a in axes)
        for field, size in sizes[logical]:
            if size % shards:
                split = " x ".join(f"config.mesh.{a}={mesh_sizes[a]}" for a in axes)
                raise ValueError(
                    f"{split} does not divide {field}={size} (config.axis_rules shard "
                    f"{logical!r} over {' x '.join(axes)}): choose mesh sizes that divide it")
    if training:
        sharding.check_batch(c.batch_size, mesh_sizes, "config.batch_size")
    if c.data.val or not training:
        sharding.check_batch(c.eval_batch_size, mesh_sizes, "config.eval_batch_size")
