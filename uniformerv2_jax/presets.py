"""The one model-spec module: named variants, the model's fields as data, official arguments.

``create_model("L/14@336", num_classes=600)`` builds a variant; :func:`model_fields` and
:func:`model_from_fields` turn a model into its JSON-serialisable fields and back (the
converted checkpoints' ``model.json`` and the training config's ``model`` section);
``model_from_official_kwargs`` takes the official constructor arguments (names as in
the official code, e.g. from a checkpoint's JSON; the converters read them from config
files: :mod:`uniformerv2_jax.convert.model_configs`).
:func:`dummy_video` and :func:`abstract_variables` are the input and the variable shapes
that initialisation sees.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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

# ``platform`` is not one: it follows the devices (experiment.build), never stored.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(UniFormerV2)
                     if f.name not in ("parent", "name", "platform"))
# Fields that choose how the model computes, not what: no official counterpart.
IMPLEMENTATION_FIELDS = ("dtype", "scan", "remat", "kernels")
# Compute dtypes by name (``model_fields`` writes the name, ``model_from_fields`` reads it).
DTYPES = ("float32", "bfloat16", "float16")


def last_layers(layers: int, n: int = 4) -> tuple[int, ...]:
    """The official default ``return_list``: global blocks on the last ``n`` layers (all
    of them when there are fewer)."""
    return tuple(range(max(layers - n, 0), layers))


def create_model(variant: str = "B/16", **fields: Any) -> UniFormerV2:
    """A named backbone with its defaults: global blocks on the last four layers."""
    if variant not in PRESETS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(PRESETS)}")
    base = dict(PRESETS[variant])
    base.update(return_list=last_layers(base["layers"]), n_dim=base["width"], n_head=base["heads"])
    base.update(fields)
    return model_from_fields(base)


def model_fields(model: UniFormerV2) -> dict[str, Any]:
    """Every constructor field of ``model`` as JSON-serialisable values: tuples as lists,
    the dtype by name (``"float32"``)."""
    out = {}
    for name in MODEL_FIELDS:
        value = getattr(model, name)
        if name == "dtype":
            value = jnp.dtype(value).name
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def model_from_fields(fields: Mapping[str, Any]) -> UniFormerV2:
    """The model from a mapping of its fields (what :func:`model_fields` writes, or a subset
    of it; the rest keep their defaults). Lists become tuples; ``dtype`` is a name of
    :data:`DTYPES` or a dtype. Unknown fields are named in the error."""
    unknown = sorted(set(fields) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"unknown model field(s) {unknown}; known fields: {list(MODEL_FIELDS)}")
    fields = dict(fields)
    for key in ("return_list", "mlp_dropout"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    if "dtype" in fields:
        fields["dtype"] = _compute_dtype(fields["dtype"])
    return UniFormerV2(**fields)


def _compute_dtype(value: Any) -> Any:
    """A dtype name or dtype -> the ``jnp`` scalar type (``jnp.float32``, the field's default)."""
    try:
        name = value if isinstance(value, str) else jnp.dtype(value).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"model field dtype={value!r}: expected one of {', '.join(DTYPES)}")
    return getattr(jnp, name)


def dummy_video(model: UniFormerV2) -> jax.Array:
    """The input that initialisation traces: zeros (1, t_size, R, R, 3) float32, R the
    input resolution (the variables' shapes do not depend on the clip length)."""
    size = model.input_resolution
    return jnp.zeros((1, model.t_size, size, size, 3), jnp.float32)


def abstract_variables(model: UniFormerV2) -> dict:
    """Shapes and dtypes of the model's variables (``jax.ShapeDtypeStruct`` leaves,
    unboxed), in the loop layout (``layer_{i}``), without allocating them."""
    loop = model.clone(scan=False, remat=False)
    return nn.unbox(jax.eval_shape(loop.init, jax.random.key(0), dummy_video(loop)))


def model_from_official_kwargs(**kwargs: Any) -> UniFormerV2:
    """The model for official constructor arguments (``n_layers`` is checked, not stored)."""
    kwargs = dict(kwargs)
    for name in IGNORED_OFFICIAL_ARGS:
        kwargs.pop(name, None)
    n_layers = kwargs.pop("n_layers", None)
    model = model_from_fields(kwargs)
    if n_layers is not None and n_layers != len(model.return_list):
        raise ValueError(f"n_layers={n_layers} but return_list={list(model.return_list)} "
                         f"has {len(model.return_list)} entries")
    return model


def official_kwargs(model: UniFormerV2) -> dict[str, Any]:
    """The official constructor arguments that describe ``model`` (JSON-serialisable):
    :func:`model_fields` without the implementation switches (and without ``dpe`` unless
    the ablation is on), plus ``n_layers`` and one MLP dropout rate per global block."""
    out = {k: v for k, v in model_fields(model).items() if k not in IMPLEMENTATION_FIELDS}
    if model.dpe:
        del out["dpe"]
    out["n_layers"] = len(model.return_list)
    out["mlp_dropout"] = list(model.mlp_dropouts)
    return out


def log_assumed_heads(width: int) -> int:
    """The head count for ``width`` when the weights do not say (head_dim 64), logged."""
    heads = max(width // 64, 1)
    logging.info("heads not given: assuming head_dim 64 as in every CLIP ViT (heads=%d)", heads)
    return heads
