"""CLIP vision weights -> a UniFormerV2 of any configuration.

Formats: OpenAI's released TorchScript ``.pt``; plain state dicts with ``visual.`` keys
(OpenAI, open_clip); the official UniFormerV2 repository's extracted vision tower (no
prefix, no ``ln_post``/``proj``); Hugging Face ``CLIPVisionModel``/``CLIPModel`` weights
(``vision_model.*``, separate q/k/v projections). All are first brought to OpenAI's
vision-tower names, then loaded by the official rule: copy what matches, inflate
``conv1`` into the centre temporal slice, keep the init of everything CLIP lacks. The
position embedding is resized bicubically when the input size differs.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from uniformerv2_jax import storage
from uniformerv2_jax.convert.io import read_state_dict
from uniformerv2_jax.convert.mapping import apply_rules, backbone_shape, official_rules, stack_layers
from uniformerv2_jax.convert.model_configs import read_official_config
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import (
    abstract_variables,
    dummy_video,
    last_layers,
    log_assumed_heads,
    model_from_official_kwargs,
)

# CLIP parts the video model does not use (documented skips).
UNUSED_VISUAL = ("ln_post.weight", "ln_post.bias", "proj")

_HF_RENAMES = [
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"pre_layrnorm\.", "ln_pre."),
    (r"post_layernorm\.", "ln_post."),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.resblocks.\1.attn.out_proj."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"transformer.resblocks.\1.ln_1."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"transformer.resblocks.\1.ln_2."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."),
]
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def _from_hugging_face(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """HF ``vision_model.*`` names -> OpenAI vision-tower names (q/k/v packed)."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key in ("embeddings.position_ids",):  # a buffer of indices, not a weight
            continue
        if m := _HF_QKV.fullmatch(key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key, count=1)
                break
        else:
            raise ValueError(f"{source}: unexpected Hugging Face CLIP key vision_model.{key}")
        out[key] = value
    for (layer, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"{source}: layer {layer} lacks some of q_proj/k_proj/v_proj.{kind}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def clip_visual_state(state: dict[str, np.ndarray], source: str = "state dict") -> dict[str, np.ndarray]:
    """Any supported CLIP state dict -> the vision tower in OpenAI names, without prefix."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("vision_model.") for k in state):
        visual = _from_hugging_face(
            {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")},
            source)
    elif "embeddings.patch_embedding.weight" in state:  # a CLIPVisionModel saved bare
        visual = _from_hugging_face(state, source)
    elif any(k.startswith("visual.") for k in state):
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    elif "conv1.weight" in state and "class_embedding" in state:
        visual = dict(state)
    else:
        raise ValueError(
            f"{source}: no CLIP vision tower found; expected OpenAI/open_clip keys "
            "'visual.*', Hugging Face keys 'vision_model.*', or an extracted tower "
            f"('conv1.weight', 'class_embedding', ...); found e.g. {sorted(state)[:5]}")
    return {k: v for k, v in visual.items() if k not in UNUSED_VISUAL}


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _hugging_face_dir(directory: str) -> tuple[str, dict[str, Any]]:
    """A ``save_pretrained`` folder -> (weight file, backbone arguments from config.json)."""
    folder = storage.path(directory)
    weights = next((os.fspath(folder / f) for f in HF_WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{directory}: a directory must hold a Hugging Face checkpoint "
                                f"({' or '.join(HF_WEIGHT_FILES)})")
    kwargs: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        vision = config.get("vision_config", config)
        act = vision.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise ValueError(f"{config_path}: hidden_act={act!r}; UniFormerV2 (like OpenAI "
                             "CLIP) uses quick_gelu")
        if "num_attention_heads" in vision:
            kwargs["heads"] = vision["num_attention_heads"]
    return weights, kwargs


def inflate_conv1(weight: np.ndarray, kt: int) -> np.ndarray:
    """(C, 3, p, p) -> (C, 3, kt, p, p), the 2D kernel in the centre slice, zeros elsewhere."""
    out = np.zeros(weight.shape[:2] + (kt,) + weight.shape[2:], weight.dtype)
    out[:, :, kt // 2] = weight
    return out


def bicubic_matrix(old: int, new: int, a: float = -0.75) -> np.ndarray:
    """(new, old) interpolation matrix of PyTorch's bicubic, ``align_corners=False``."""
    def cubic(d):
        d = np.abs(d)
        return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                        np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))

    centre = (np.arange(new) + 0.5) * old / new - 0.5
    base = np.floor(centre).astype(int)
    matrix = np.zeros((new, old))
    for tap in range(-1, 3):
        index = base + tap
        np.add.at(matrix, (np.arange(new), np.clip(index, 0, old - 1)), cubic(centre - index))
    return matrix


def resize_positional_embedding(pos: np.ndarray, grid: int) -> np.ndarray:
    """(1 + g*g, C) -> (1 + grid*grid, C): bicubic over the patch grid, class row kept.

    The same numbers as PyTorch's ``F.interpolate(mode="bicubic", align_corners=False)``.
    """
    old = math.isqrt(pos.shape[0] - 1)
    if old == grid:
        return pos
    m = bicubic_matrix(old, grid)
    patches = pos[1:].reshape(old, old, -1).astype(np.float64)
    resized = np.einsum("ij,kl,jlc->ikc", m, m, patches).reshape(grid * grid, -1)
    return np.concatenate([pos[:1], resized.astype(pos.dtype)])


def from_clip(path: str | os.PathLike, config: str | os.PathLike | None = None, seed: int = 0,
              **official_kwargs: Any) -> tuple[UniFormerV2, dict]:
    """A UniFormerV2 whose backbone holds the CLIP weights at ``path``.

    ``path`` is a weight file or a Hugging Face ``save_pretrained`` directory (whose
    ``config.json`` then gives the number of heads). Without one, ``heads`` defaults to
    ``width // 64``, as OpenAI's CLIP builder derives it.

    ``official_kwargs`` are official constructor arguments (``no_lmhra``,
    ``temporal_downsample``, ``num_classes``, ``input_resolution``, ...), on top of those
    in ``config`` (a JSON file or the official YAML); the backbone size comes from the
    weights and must not contradict them. Modules CLIP lacks keep
    their initialisation from ``seed`` (zero-initialised outputs: the new model computes
    CLIP per frame). Returns ``(model, variables)``.
    """
    source = os.fspath(path)
    if config is not None:
        official_kwargs = {**read_official_config(config), **official_kwargs}
    found: dict[str, Any] = {}
    if storage.path(source).is_dir():
        path, found = _hugging_face_dir(source)
    visual = clip_visual_state(read_state_dict(path), source)
    backbone = {**backbone_shape(visual, f"a CLIP vision tower ({source})"), **found}
    for key in ("patch_size", "width", "layers", *found):
        if key in official_kwargs and official_kwargs[key] != backbone[key]:
            raise ValueError(f"{key}={official_kwargs[key]} contradicts the CLIP weights in "
                             f"{source} ({key}={backbone[key]})")
    kwargs = {**backbone, **official_kwargs}
    if "heads" not in kwargs:
        kwargs["heads"] = log_assumed_heads(kwargs["width"])
    kwargs.setdefault("return_list", last_layers(kwargs["layers"]))
    kwargs.setdefault("n_dim", kwargs["width"])
    kwargs.setdefault("n_head", kwargs["heads"])
    model = model_from_official_kwargs(**kwargs)

    kt = model.kernel_size if model.temporal_downsample else 1
    if visual["conv1.weight"].ndim == 4:
        visual["conv1.weight"] = inflate_conv1(visual["conv1.weight"], kt)
    visual["positional_embedding"] = resize_positional_embedding(
        visual["positional_embedding"], model.input_resolution // model.patch_size)

    loop = model.clone(scan=False, remat=False)
    init = jax.jit(loop.init)(jax.random.key(seed), dummy_video(loop))
    variables = jax.tree.map(np.asarray, dict(nn.unbox(init)))
    clip_rules = [r for r in official_rules(model) if _is_clip_key(r.official)]
    apply_rules(clip_rules, visual, abstract_variables(model), source, target=variables)
    return model, stack_layers(model, variables) if model.scan else variables


def _is_clip_key(key: str) -> bool:
    """Keys that a CLIP vision tower provides (everything else is UniFormerV2's own)."""
    if key in ("class_embedding", "positional_embedding", "conv1.weight",
               "ln_pre.weight", "ln_pre.bias"):
        return True
    return bool(re.match(r"transformer\.resblocks\.\d+\.(attn|ln_1|ln_2|mlp)\.", key))
