"""MMAction2 UniFormerV2 checkpoints <-> our models (through the official layout).

Checkpoints are ``torch.save({"meta": ..., "state_dict": ...})``; their keys are the
official ones but for the final norm and the classifier, and a K400 head is in MMAction2's
class order (:mod:`mmaction2_keys`). Configs are read by :mod:`model_configs`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from uniformerv2_jax.convert.io import read_state_dict, write_state_dict
from uniformerv2_jax.convert.mmaction2_keys import (
    is_mmaction2,
    mmaction2_to_official,
    official_to_mmaction2,
)
from uniformerv2_jax.convert.official import official_state_to_model, to_official
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import official_kwargs


def from_mmaction2(path: str | os.PathLike, config: str | os.PathLike | None = None,
                   keep_head_order: bool = False, **official_kwargs: Any) -> tuple[UniFormerV2, dict]:
    """Loads an MMAction2 UniFormerV2 checkpoint (``.pth``, or a flat ``.safetensors``).

    As :func:`~uniformerv2_jax.convert.official.from_official`: the architecture comes
    from the shapes, then ``config`` (an MMAction2 ``.py``, or any official config) and
    ``official_kwargs``; strict. Returns ``(model, variables)``.
    """
    state = read_state_dict(path)
    if not is_mmaction2(state):
        raise ValueError(f"{path}: not an MMAction2 UniFormerV2 checkpoint (no "
                         f"cls_head.fc_cls.weight or backbone.transformer.norm.weight; found e.g. "
                         f"{sorted(state)[:5]}); official checkpoints load with from_official")
    return official_state_to_model(mmaction2_to_official(state, keep_head_order), os.fspath(path),
                                   config, **official_kwargs)


def to_mmaction2(model: UniFormerV2, variables: dict,
                 keep_head_order: bool = False) -> dict[str, np.ndarray]:
    """Our variables -> an MMAction2 recognizer state dict (``backbone.*``, ``cls_head.fc_cls.*``;
    BatchNorm ``num_batches_tracked`` written as 0, as :func:`to_official` does)."""
    if model.frozen:
        raise ValueError("a frozen model (no transformer.balance) has no MMAction2 counterpart: "
                         "MMAction2's UniFormerV2 always has the learned balance")
    return official_to_mmaction2(to_official(model, variables), keep_head_order)


def write_mmaction2(path: str | os.PathLike, model: UniFormerV2, variables: dict,
                    keep_head_order: bool = False, overwrite: bool = False) -> None:
    """:func:`to_mmaction2` written as MMAction2 saves it: ``.pth`` holds
    ``{"state_dict": ..., "meta": ...}`` (meta: the official constructor arguments),
    ``.safetensors`` the flat state dict."""
    meta = {"converted_by": "uniformerv2_jax", "official_kwargs": official_kwargs(model)}
    write_state_dict(path, to_mmaction2(model, variables, keep_head_order), overwrite=overwrite,
                     container="state_dict", meta=meta)
