"""Official UniFormerV2 checkpoints <-> our variables, and K710 head transfer."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from uniformerv2_jax import storage
from uniformerv2_jax.convert.io import read_state_dict
from uniformerv2_jax.convert.mapping import (
    apply_rules,
    backbone_shape,
    get_path,
    official_rules,
    required,
    stack_layers,
    unstack_layers,
)
from uniformerv2_jax.convert.mmaction2_keys import is_mmaction2, mmaction2_to_official
from uniformerv2_jax.convert.model_configs import read_official_config
from uniformerv2_jax.labels import LABELS_DIR
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import (
    abstract_variables,
    last_layers,
    log_assumed_heads,
    model_from_official_kwargs,
)

PREFIXES = ("module.", "backbone.")


def strip_prefixes(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Removes the DDP ``module.`` and the wrapper's ``backbone.`` prefixes, if present."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def infer_official_kwargs(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """The constructor arguments that a (prefix-free) official state dict determines.

    ``return_list`` is not stored in checkpoints; by the official convention it is the
    last ``n_layers`` layers. ``heads`` cannot be read from shapes (see the caller).
    """
    what = "an official UniFormerV2 state dict"
    kwargs: dict[str, Any] = backbone_shape(state, what)
    conv1 = state["conv1.weight"]
    if conv1.ndim != 5:
        raise ValueError(f"conv1.weight has shape {conv1.shape}; an official UniFormerV2 "
                         "has a 5-D Conv3d kernel (for CLIP weights use from_clip)")
    width, layers = kwargs["width"], kwargs["layers"]
    n_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.dpe.")})
    kwargs.update(
        temporal_downsample=conv1.shape[2] > 1, kernel_size=max(conv1.shape[2], 3),
        no_lmhra="transformer.resblocks.0.lmhra1.pos_embed.1.weight" not in state,
        return_list=list(last_layers(layers, n_layers)), n_dim=width,
        frozen="transformer.balance" not in state,
        num_classes=required(state, "transformer.proj.2.weight", what).shape[0],
    )
    if not kwargs["no_lmhra"]:
        kwargs["double_lmhra"] = "transformer.resblocks.0.lmhra2.pos_embed.1.weight" in state
        reduced = state["transformer.resblocks.0.lmhra1.pos_embed.1.weight"].shape[0]
        if reduced != int(width // 1.5):
            kwargs["dw_reduction"] = width / reduced
    if kwargs["temporal_downsample"]:
        kwargs["t_size"] = 8  # any even clip length; the weights do not depend on it
    return kwargs


def from_official(path: str | os.PathLike, config: str | os.PathLike | None = None,
                  **official_kwargs: Any) -> tuple[UniFormerV2, dict]:
    """Loads an official checkpoint (``.pyth``/``.pth``/``.safetensors``).

    The architecture is read from the checkpoint's shapes; ``config`` (a JSON file, the
    official YAML or an MMAction2 ``.py``) and ``official_kwargs`` (official constructor
    names, e.g. ``heads=4, t_size=16``) override it. Loading is strict: any key or shape
    that does not fit is reported. An MMAction2 checkpoint is recognised by its keys and
    read as :func:`~uniformerv2_jax.convert.mmaction2.from_mmaction2` reads it (a
    400-class head re-indexed into the UniFormerV2 K400 order). Returns ``(model, variables)``.
    """
    state = read_state_dict(path)
    if is_mmaction2(state):
        logging.info("%s: MMAction2 keys (cls_head.fc_cls, transformer.norm): reading it as an "
                     "MMAction2 checkpoint", path)
        state = mmaction2_to_official(state)
    return official_state_to_model(state, os.fspath(path), config, **official_kwargs)


def official_state_to_model(state: dict[str, np.ndarray], source: str,
                            config: str | os.PathLike | None = None,
                            **official_kwargs: Any) -> tuple[UniFormerV2, dict]:
    """:func:`from_official` for a state dict already read (official keys, any prefix);
    ``source`` names it in errors."""
    state = strip_prefixes(state)
    kwargs = infer_official_kwargs(state)
    if config is not None:
        kwargs.update(read_official_config(config))
    kwargs.update(official_kwargs)
    if "heads" not in kwargs:
        kwargs["heads"] = log_assumed_heads(kwargs["width"])
    kwargs.setdefault("n_head", kwargs["heads"])
    model = model_from_official_kwargs(**kwargs)
    return model, official_to_variables(model, state, source=source)


def official_to_variables(model: UniFormerV2, state: dict[str, np.ndarray],
                          source: str = "state dict") -> dict:
    """A prefix-free official state dict -> our variables (strict)."""
    variables = apply_rules(official_rules(model), state, abstract_variables(model), source)
    return stack_layers(model, variables) if model.scan else variables


def to_official(model: UniFormerV2, variables: dict, prefix: str = "backbone.") -> dict[str, np.ndarray]:
    """Our variables -> the official state dict (numpy, official names and layouts).

    BatchNorm ``num_batches_tracked`` counters are written as 0 so that the result loads
    into the official model with ``strict=True``.
    """
    if model.scan:
        variables = unstack_layers(model, variables)
    out = {}
    for rule in official_rules(model):
        array = np.asarray(get_path(variables, rule.path))
        out[prefix + rule.official] = np.ascontiguousarray(rule.to_torch(array))
        if rule.official.endswith("pos_embed.0.running_var"):
            counter = rule.official.replace("running_var", "num_batches_tracked")
            out[prefix + counter] = np.zeros((), np.int64)
    return out


def head_rows(label_map: str | os.PathLike | Sequence[int], num_source: int) -> list[int]:
    """Rows of a source head that make the target head, in target class order.

    ``label_map``: ``"k400"``/``"k600"``/``"k700"`` (MMAction2's K710 maps shipped in
    ``data/labels``), ``"first:N"`` (the official rule: the first N rows of an official
    K710 head are its K400 classes), a JSON file holding a list, or a list of ints.
    """
    if isinstance(label_map, str) and label_map.startswith("first:"):
        rows = list(range(int(label_map.split(":", 1)[1])))
    elif isinstance(label_map, str) and label_map in ("k400", "k600", "k700"):
        rows = _read_rows(LABELS_DIR / f"k710_to_{label_map}.json")
    elif isinstance(label_map, (str, os.PathLike)):
        rows = _read_rows(storage.path(label_map))
    else:
        rows = list(label_map)
    bad = [r for r in rows if not isinstance(r, (int, np.integer)) or not 0 <= r < num_source]
    if bad or not rows:
        raise ValueError(f"label map {label_map!s}: entries must be row indices in "
                         f"[0, {num_source}); bad: {bad[:10]}")
    return [int(r) for r in rows]


def _read_rows(path: storage.epath.Path) -> list[int]:
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of source rows")
    return rows


def transfer_head(model: UniFormerV2, variables: dict,
                  label_map: str | os.PathLike | Sequence[int]) -> tuple[UniFormerV2, dict]:
    """Re-indexes the classifier rows (e.g. a K710 head -> a K400 head)."""
    rows = head_rows(label_map, model.num_classes)
    params = dict(variables["params"])
    head = params["head"]
    params["head"] = {"kernel": np.asarray(head["kernel"])[:, rows],
                      "bias": np.asarray(head["bias"])[rows]}
    return model.clone(num_classes=len(rows)), {**variables, "params": params}


def param_count(variables: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
