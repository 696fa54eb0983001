"""Named variants as data, official constructor arguments, and their validation.

``create_model("L/14@336", num_classes=600)`` builds a variant; ``model_from_official_kwargs``
takes the official constructor arguments (names as in the official code, e.g. from a
checkpoint's JSON); ``read_official_config`` reads them from a JSON file or from the
official SlowFast YAML (``UNIFORMERV2:`` section, ``DATA.NUM_FRAMES``, ``MODEL.NUM_CLASSES``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from uniformerv2_jax.model import UniFormerV2

# The CLIP backbones. Global blocks default to the last four layers (Kinetics setting).
PRESETS: dict[str, dict[str, Any]] = {
    "B/16": dict(input_resolution=224, patch_size=16, width=768, layers=12, heads=12),
    "L/14": dict(input_resolution=224, patch_size=14, width=1024, layers=24, heads=16),
    "L/14@336": dict(input_resolution=336, patch_size=14, width=1024, layers=24, heads=16),
}

# Official builder names (cfg.UNIFORMERV2.BACKBONE) -> preset.
OFFICIAL_BACKBONES = {
    "uniformerv2_b16": "B/16", "uniformerv2_l14": "L/14", "uniformerv2_l14_336": "L/14@336"}

# Official constructor arguments that have no effect here: CLIP's projection size, and
# PyTorch activation checkpointing (use the ``remat`` field instead).
IGNORED_OFFICIAL_ARGS = ("output_dim", "use_checkpoint", "checkpoint_num")

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(UniFormerV2)
                     if f.name not in ("parent", "name"))


def create_model(variant: str = "B/16", **fields: Any) -> UniFormerV2:
    """A named backbone with its defaults: global blocks on the last four layers."""
    if variant not in PRESETS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(PRESETS)}")
    base = dict(PRESETS[variant])
    layers, width = base["layers"], base["width"]
    base.update(return_list=tuple(range(layers - 4, layers)), n_dim=width,
                n_head=base["heads"])
    base.update(fields)
    return model_from_fields(base)


def model_from_fields(fields: dict[str, Any]) -> UniFormerV2:
    """Builds the model from a dict of its fields, naming any unknown one."""
    unknown = sorted(set(fields) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"unknown model field(s) {unknown}; known fields: {list(MODEL_FIELDS)}")
    fields = dict(fields)
    for key in ("return_list", "mlp_dropout"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return UniFormerV2(**fields)


def model_from_official_kwargs(**kwargs: Any) -> UniFormerV2:
    """The model for official constructor arguments (``n_layers`` is checked, not stored)."""
    kwargs = dict(kwargs)
    for name in IGNORED_OFFICIAL_ARGS:
        kwargs.pop(name, None)
    n_layers = kwargs.pop("n_layers", None)
    if "frames" in kwargs:  # the fixtures' name for the input clip length
        frames = kwargs.pop("frames")
        kwargs.setdefault("t_size", frames)
    model = model_from_fields(kwargs)
    if n_layers is not None and n_layers != len(model.return_list):
        raise ValueError(f"n_layers={n_layers} but return_list={list(model.return_list)} "
                         f"has {len(model.return_list)} entries")
    return model


def official_kwargs(model: UniFormerV2) -> dict[str, Any]:
    """The official constructor arguments that describe ``model`` (JSON-serialisable)."""
    out = {}
    for name in MODEL_FIELDS:
        if name in ("dtype", "scan", "remat"):
            continue
        value = getattr(model, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    out["n_layers"] = len(model.return_list)
    out["mlp_dropout"] = list(model.mlp_dropouts)
    return out


def read_official_config(path: str | os.PathLike) -> dict[str, Any]:
    """Official constructor arguments from a JSON file or an official SlowFast YAML config.

    JSON: the arguments at top level or under ``constructor_args``. YAML: the
    ``UNIFORMERV2`` section, ``DATA.NUM_FRAMES`` and ``MODEL.NUM_CLASSES``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of constructor arguments")
        return dict(data.get("constructor_args", data))
    if path.endswith((".yaml", ".yml")):
        return _from_slowfast_yaml(path, text)
    raise ValueError(f"{path}: unknown config format; expected .json or .yaml/.yml")


_YAML_KEYS = {
    "N_LAYERS": "n_layers", "N_DIM": "n_dim", "N_HEAD": "n_head", "MLP_FACTOR": "mlp_factor",
    "BACKBONE_DROP_PATH_RATE": "backbone_drop_path_rate", "DROP_PATH_RATE": "drop_path_rate",
    "MLP_DROPOUT": "mlp_dropout", "CLS_DROPOUT": "cls_dropout", "RETURN_LIST": "return_list",
    "DW_REDUCTION": "dw_reduction", "TEMPORAL_DOWNSAMPLE": "temporal_downsample",
    "NO_LMHRA": "no_lmhra", "DOUBLE_LMHRA": "double_lmhra", "FROZEN": "frozen",
}
# Keys of the UNIFORMERV2 section that concern loading, not the architecture.
_YAML_LOADING_KEYS = ("PRETRAIN", "DELETE_SPECIAL_HEAD")


def _from_slowfast_yaml(path: str, text: str) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    section = (cfg or {}).get("UNIFORMERV2")
    if not isinstance(section, dict):
        raise ValueError(f"{path}: no UNIFORMERV2 section; is this an official config?")
    backbone = section.get("BACKBONE")
    if backbone not in OFFICIAL_BACKBONES:
        raise ValueError(f"{path}: UNIFORMERV2.BACKBONE={backbone!r}; expected one of "
                         f"{sorted(OFFICIAL_BACKBONES)}")
    kwargs: dict[str, Any] = dict(PRESETS[OFFICIAL_BACKBONES[backbone]])
    # The official defaults for fields a config may leave out (slowfast/config/defaults.py).
    layers = kwargs["layers"]
    kwargs.update(return_list=list(range(layers - 4, layers)), n_dim=kwargs["width"],
                  n_head=kwargs["heads"], temporal_downsample=True, no_lmhra=False)
    for key, value in section.items():
        if key in _YAML_KEYS:
            kwargs[_YAML_KEYS[key]] = value
        elif key not in _YAML_LOADING_KEYS and key != "BACKBONE":
            raise ValueError(f"{path}: unknown key UNIFORMERV2.{key}")
    frames = (cfg.get("DATA") or {}).get("NUM_FRAMES")
    classes = (cfg.get("MODEL") or {}).get("NUM_CLASSES")
    if frames is not None:
        kwargs["t_size"] = frames
    if classes is not None:
        kwargs["num_classes"] = classes
    return kwargs


def validate_fields(m: UniFormerV2) -> None:
    """Rejects impossible settings before anything is traced, naming the field."""
    def fail(field: str, why: str):
        raise ValueError(f"UniFormerV2.{field}={getattr(m, field)!r}: {why}")

    if m.input_resolution % m.patch_size:
        fail("input_resolution", f"not divisible by patch_size={m.patch_size}")
    if m.width % m.heads:
        fail("heads", f"does not divide width={m.width}")
    if m.n_dim != m.width:
        fail("n_dim", f"must equal width={m.width}: the DPE and the global blocks read the "
                      "backbone tokens directly (the official model has the same constraint)")
    if m.n_dim % m.n_head:
        fail("n_head", f"does not divide n_dim={m.n_dim}")
    rl = tuple(m.return_list)
    if not rl or list(rl) != sorted(set(rl)) or rl[0] < 0 or rl[-1] >= m.layers:
        fail("return_list", f"must be increasing, unique layer indices in [0, {m.layers})")
    if not isinstance(m.mlp_dropout, (int, float)) and len(m.mlp_dropout) != len(rl):
        fail("mlp_dropout", f"needs one rate per global block ({len(rl)})")
    if m.temporal_downsample:
        if m.kernel_size < 1 or m.kernel_size % 2 == 0:
            fail("kernel_size", "must be odd (the official padding is (kernel_size - 1) // 2)")
        if m.t_size % 2:
            fail("t_size", "must be even with temporal_downsample (stride 2 in time)")
    if int(m.width // m.dw_reduction) < 1:
        fail("dw_reduction", f"leaves no channels of width={m.width}")
    for field in ("backbone_drop_path_rate", "drop_path_rate", "cls_dropout"):
        if not 0.0 <= getattr(m, field) < 1.0:
            fail(field, "must be in [0, 1)")
    if any(not 0.0 <= r < 1.0 for r in m.mlp_dropouts):
        fail("mlp_dropout", "rates must be in [0, 1)")
    if m.num_classes < 1:
        fail("num_classes", "must be positive")


def log_assumed_heads(width: int) -> int:
    heads = max(width // 64, 1)
    logging.info("heads not given: assuming head_dim 64 as in every CLIP ViT (heads=%d)", heads)
    return heads
