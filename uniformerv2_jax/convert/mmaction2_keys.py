"""MMAction2's UniFormerV2 state dicts <-> the official layout: key names and the K400 head.

MMAction2 (``mmaction/models/backbones/uniformerv2.py``) keeps the official backbone key
for key, except that the final LayerNorm is ``backbone.transformer.norm`` and the
classifier is the head's ``cls_head.fc_cls`` (official: ``transformer.proj.0`` and
``transformer.proj.2``); shapes and layouts are identical. Its Kinetics-400 heads are in
MMAction2's alphabetical class order (``data/labels/kinetics400.txt``), while official
heads, and so this code's K400 models, use ``kinetics400_uniformerv2_order.txt``: a
400-class head is re-indexed by class name on the way in and back on the way out (K600,
K700 and K710 orders are the same in both).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniformerv2_jax.labels import CLASS_LISTS, LABELS_DIR, read_class_names

# MMAction2 key -> official key; every other ``backbone.*`` key is the same in both.
TO_OFFICIAL = {
    "backbone.transformer.norm.weight": "backbone.transformer.proj.0.weight",
    "backbone.transformer.norm.bias": "backbone.transformer.proj.0.bias",
    "cls_head.fc_cls.weight": "backbone.transformer.proj.2.weight",
    "cls_head.fc_cls.bias": "backbone.transformer.proj.2.bias",
}
TO_MMACTION2 = {official: mma for mma, official in TO_OFFICIAL.items()}
MMACTION2_HEAD = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")
OFFICIAL_HEAD = tuple(TO_OFFICIAL[key] for key in MMACTION2_HEAD)
MMACTION2_K400 = "kinetics400.txt"  # MMAction2's tools/data/kinetics/label_map_k400.txt


def is_mmaction2(state: Mapping[str, Any]) -> bool:
    """Whether a state dict has MMAction2's UniFormerV2 keys."""
    return "cls_head.fc_cls.weight" in state or "backbone.transformer.norm.weight" in state


def k400_rows_from_mmaction2() -> list[int]:
    """For each class of this code's K400 order, its row in an MMAction2 K400 head.
    ``np.argsort`` of it is the inverse (our rows in MMAction2's order)."""
    index = {name: i for i, name in enumerate(read_class_names(LABELS_DIR / MMACTION2_K400))}
    return [index[name] for name in read_class_names(LABELS_DIR / CLASS_LISTS["k400"])]


def _renamed(state: Mapping[str, np.ndarray], renames: dict[str, str], head: tuple[str, ...],
             to_ours: bool, keep_head_order: bool) -> dict[str, np.ndarray]:
    """Keys renamed; a 400-class head (``head``: its renamed keys) re-indexed into (or out
    of) our K400 order."""
    out = {renames.get(key, key): value for key, value in state.items()}
    present = [key for key in head if key in out]
    if keep_head_order or not present or len(out[present[0]]) != 400:
        return out
    rows = k400_rows_from_mmaction2()
    for key in present:
        out[key] = out[key][rows if to_ours else np.argsort(rows)]
    # A warning, not info: the rows' meaning changes, and the command line shows warnings.
    logging.warning("re-indexed the 400-class head from %s's K400 order into %s's (by class "
                    "name; keep_head_order / --keep_head_order keeps it)",
                    *(("MMAction2", "UniFormerV2") if to_ours else ("UniFormerV2", "MMAction2")))
    return out


def mmaction2_to_official(state: Mapping[str, np.ndarray],
                          keep_head_order: bool = False) -> dict[str, np.ndarray]:
    """An MMAction2 recognizer state dict -> the official one (``backbone.`` keys).

    A 400-class head is taken to be Kinetics-400 and its rows are re-indexed from
    MMAction2's order into the UniFormerV2 one, unless ``keep_head_order``.
    """
    return _renamed(state, TO_OFFICIAL, OFFICIAL_HEAD, True, keep_head_order)


def official_to_mmaction2(state: Mapping[str, np.ndarray],
                          keep_head_order: bool = False) -> dict[str, np.ndarray]:
    """The inverse of :func:`mmaction2_to_official` (``state`` with ``backbone.`` keys)."""
    return _renamed(state, TO_MMACTION2, MMACTION2_HEAD, False, keep_head_order)
