"""Video features: UniFormerV2's named intermediates of a batch of clips.

:func:`features` gives per-layer class tokens, the global queries, the fused pre-logit
feature, the logits and optionally the patch tokens; :mod:`feature_job` runs it over
whole video sets (``main.py features``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp

from uniformerv2_jax.model import UniFormerV2, per_layer_intermediates

LAYER_FEATURE = re.compile(r"layer_(\d+)/(cls|query|patches)")


def features(model: UniFormerV2, variables: dict, video: jax.Array,
             layers: Iterable[int] | None = None, patch_tokens: bool = False) -> dict[str, jax.Array]:
    """Named features of ``video`` (N, T, H, W, 3), eval mode (T' = T after downsampling):

      layer_{i}/cls      (N, T', C)       layer i's class token in every frame
      layer_{i}/query    (N, C)           the video query after layer i's global block
                                          (layers of ``return_list`` only)
      layer_{i}/patches  (N, T', h*w, C)  layer i's patch tokens (with ``patch_tokens``)
      head_input         (N, C)           the fused feature before head_norm and the head
      logits             (N, num_classes) what ``model.apply`` returns

    ``layers``: the backbone layers to return (default: all). The keys are the same
    whether or not the model scans its layers. Pure and jittable (``model``, ``layers``
    and ``patch_tokens`` static).
    """
    layers = range(model.layers) if layers is None else list(layers)
    outside = [i for i in layers if not 0 <= i < model.layers]
    if outside:
        raise ValueError(f"layers={outside}: the model has layers 0..{model.layers - 1}")
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    logits, state = model.apply(variables, video, mutable=["intermediates"])
    sown = per_layer_intermediates(model, state["intermediates"])
    out = {}
    for i in layers:
        sown_layer = sown[f"layer_{i}"]
        tokens = sown_layer["block_out"][0]  # (N, T', 1 + h*w, C), class token first
        out[f"layer_{i}/cls"] = tokens[:, :, 0]
        if patch_tokens:
            out[f"layer_{i}/patches"] = tokens[:, :, 1:]
        if "query" in sown_layer:
            out[f"layer_{i}/query"] = sown_layer["query"][0][:, 0]
    return {**out, "head_input": sown["head_input"][0], "logits": logits}


def feature_layers(model: UniFormerV2, names: Sequence[str]) -> tuple[list[int], bool]:
    """The layers and whether patch tokens are needed for the feature ``names``."""
    layers, patches = set(), False
    for name in names:
        match = LAYER_FEATURE.fullmatch(name)
        if name in ("head_input", "logits"):
            continue
        i = int(match[1]) if match else -1
        if not 0 <= i < model.layers or (match[2] == "query" and i not in model.return_list):
            raise ValueError(f"--feature={name!r}: expected head_input, logits, layer_{{i}}/cls or "
                             f"layer_{{i}}/patches with i < {model.layers}, or layer_{{i}}/query "
                             f"with i in the return_list {list(model.return_list)}")
        layers.add(i)
        patches |= match[2] == "patches"
    return sorted(layers), patches


def clip_features(variables: dict, video: jax.Array, *, model: UniFormerV2,
                  names: tuple[str, ...]) -> dict[str, jax.Array]:
    """The features ``names`` of a batch of clips, float32 (the jitted extraction step)."""
    layers, patches = feature_layers(model, names)
    out = features(model, variables, video, layers, patches)
    return {name: out[name].astype(jnp.float32) for name in names}
