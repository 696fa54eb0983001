"""The official model zoo as data: one :class:`Row` per released experiment, and the full
config of a row (:func:`experiment`).

A config file in ``configs/`` is a table of rows and a ``get_config(arg)`` that picks one.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from uniformerv2_jax import labels, presets
from uniformerv2_jax.config import base_config, model_config

# Dataset (a key of ``labels.CLASS_LISTS``) -> the family whose model and data recipe it uses.
FAMILIES = {"k400": "kinetics", "k600": "kinetics", "k700": "kinetics", "k710": "kinetics",
            "mit": "kinetics", "sthv1": "something", "sthv2": "something",
            "anet": "untrimmed", "hacs": "untrimmed"}


# The OpenAI CLIP files the CLIP-initialised rows start from.
CLIP_FILES = {"B/16": "ViT-B-16.pt", "L/14": "ViT-L-14.pt", "L/14@336": "ViT-L-14-336px.pt"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment of the official zoo (reference section 5 and MODEL_ZOO)."""
    variant: str  # "B/16", "L/14", "L/14@336"
    frames: int  # input frames
    # What it starts from: "clip" (OpenAI CLIP of the variant), or the zoo row whose
    # checkpoint it fine-tunes, as FILE:ARG of configs/ ("k710.py:l14_8x224").
    init: str
    batch: int  # global batch
    lr: float
    epochs: int
    warmup: int  # epochs
    views: tuple[int, int]  # test clips x crops
    top1: dict[str, float] = dataclasses.field(default_factory=dict)  # reported, per dataset
    frozen: bool = False
    head_map: str = ""  # how the starting checkpoint's head becomes this dataset's


def official_file(ref: str) -> str:
    """The released checkpoint of the zoo row ``ref`` (MODEL_ZOO's file names):
    ``k710.py:l14_336_8x336`` -> ``k710_uniformerv2_l14_8x336.pyth``,
    ``kinetics.py:k400/b16_8x224_k710`` -> ``k400_k710_uniformerv2_b16_8x224.pyth``."""
    file, _, arg = ref.partition(":")
    dataset, _, name = arg.rpartition("/")
    sets = dataset or file.removesuffix(".py")
    frozen = name.startswith("frozen_")
    name = name.removeprefix("frozen_").replace("l14_336_", "l14_")
    if name.endswith("_k710"):
        sets, name = f"{sets}_k710", name.removesuffix("_k710")
    return f"{'frozen_' if frozen else ''}{sets}_uniformerv2_{name}.pyth"


def starting_point(row: Row) -> str:
    """What ``row`` starts from, in words, with the init_from values that give it."""
    if row.init == "clip":
        return f"CLIP {row.variant} (clip:{CLIP_FILES[row.variant]})"
    return (f"the {row.variant} checkpoint of configs/{row.init} (converted:DIR of it, "
            f"or the released official:{official_file(row.init)})")


def experiment(dataset: str, row: Row) -> ml_collections.ConfigDict:
    """The full config of one zoo row on ``dataset`` (a key of :data:`FAMILIES`)."""
    family = FAMILIES[dataset]
    layers = presets.PRESETS[row.variant]["layers"]
    model = dict(num_classes=labels.num_classes(dataset), t_size=row.frames, frozen=row.frozen)
    c = base_config()
    if family == "something":
        # Local MHRA twice per block, temporal downsampling, global blocks on the last
        # 8 (B/16) or 16 (L/14) layers, stochastic depth; no flips (direction is the label).
        n = 8 if layers == 12 else 16
        model.update(no_lmhra=False, double_lmhra=True, temporal_downsample=True,
                     return_list=presets.last_layers(layers, n), backbone_drop_path_rate=0.2,
                     drop_path_rate=0.4)
        c.data.flip = False
        c.data.repeated_augment = 2
    elif family == "untrimmed":
        model.update(backbone_drop_path_rate=0.2, drop_path_rate=0.4)
    c.model = model_config(row.variant, **model)
    c.init_expected = starting_point(row)
    c.data.class_names = f"data/labels/{labels.CLASS_LISTS[dataset]}"
    c.data.num_clips, c.data.num_crops = row.views
    c.batch_size = row.batch
    c.head_map = row.head_map
    c.optim.lr, c.optim.epochs, c.optim.warmup_epochs = row.lr, float(row.epochs), float(row.warmup)
    return c
