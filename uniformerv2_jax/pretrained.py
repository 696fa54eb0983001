"""Starting weights for training: ``config.init_from`` -> the model's parameters.

``clip:PATH`` (any CLIP the CLIP converter reads), ``official:PATH`` (an official
UniFormerV2 checkpoint, or an MMAction2 one: recognised by its keys) or ``converted:DIR``
(``main.py convert`` output); ``scratch`` keeps the fresh (random) weights. The source's
architecture must match the config's, key for key and shape for shape; only the head
may differ, as ``config.head_map`` says: ``new`` keeps the fresh head, ``k400`` /
``first:N`` / a JSON list re-index the source's rows.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from uniformerv2_jax.config import SCRATCH
from uniformerv2_jax.convert.clip import from_clip
from uniformerv2_jax.convert.mapping import CheckpointMismatchError, stack_layers, unstack_layers
from uniformerv2_jax.convert.official import from_official, transfer_head
from uniformerv2_jax.convert.saved import load_converted
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import official_kwargs


def source_variables(init_from: str, model: UniFormerV2, seed: int) -> tuple[UniFormerV2, dict]:
    """(source model, its variables in the loop layout) for ``init_from``."""
    if init_from == SCRATCH:
        raise ValueError(f"config.init_from={SCRATCH!r} names no pretrained weights: "
                         "there is no source to read (random initialisation)")
    kind, _, path = init_from.partition(":")
    if kind == "clip":
        # Everything CLIP lacks is initialised as the config's model would be.
        source, variables = from_clip(path, seed=seed, **official_kwargs(model))
    elif kind == "official":
        # The head count is not in the weights' shapes: the config's is the one meant.
        source, variables = from_official(path, heads=model.heads, n_head=model.n_head)
    elif kind == "converted":
        source, variables = load_converted(path)
    else:
        raise ValueError(f"config.init_from={init_from!r}: expected clip:, official:, converted: "
                         f"or {SCRATCH}")
    if source.scan:
        variables = unstack_layers(source, variables)
    return source, variables


def load_pretrained(init_from: str, head_map: str, model: UniFormerV2, params: Any,
                    batch_stats: Any, seed: int = 0) -> tuple[Any, Any]:
    """The pretrained (params, batch_stats), shaped like the given fresh ones (numpy);
    for ``scratch``, the fresh ones themselves."""
    if init_from == SCRATCH:
        return params, batch_stats
    source, variables = source_variables(init_from, model, seed)
    fresh_head = jax.tree.map(np.asarray, params["head"])
    if head_map and head_map != "new":
        source, variables = transfer_head(source, variables, head_map)
    elif source.num_classes != model.num_classes and head_map != "new":
        raise ValueError(
            f"{init_from}: its head has {source.num_classes} classes, config.model.num_classes "
            f"is {model.num_classes}; set config.head_map (new, k400, first:N or a JSON list)")
    if head_map == "new":
        variables = {**variables, "params": {**variables["params"], "head": fresh_head}}
    if model.scan:
        variables = stack_layers(model, variables)
    target = {"params": params, "batch_stats": batch_stats}
    got = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    check_same_layout(got, target, init_from)
    return got["params"], got["batch_stats"]


def check_same_layout(got: dict, target: dict, source: str) -> None:
    """Raises :class:`CheckpointMismatchError` listing every key or shape that differs."""
    def flat(tree):
        return {jax.tree_util.keystr(p): np.shape(x)
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    a, b = flat(got), flat(target)
    mismatched = [(k, b[k], a[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    if set(a) != set(b) or mismatched:
        raise CheckpointMismatchError(f"{source} (config.init_from) against config.model",
                                      missing=sorted(set(b) - set(a)),
                                      unexpected=sorted(set(a) - set(b)), mismatched=mismatched)
