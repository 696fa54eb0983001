"""The official state-dict layout <-> our variables, as one table of rules.

Each :class:`Rule` pairs an official key (without the ``backbone.`` prefix) with a path in
our variables (loop layout: ``layer_{i}``) and the two array transforms between them.
The table is generated from the model's fields, so it knows exactly which keys a given
configuration has; loading is strict and reports every missing, unexpected and
mis-shaped key at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from uniformerv2_jax.model import UniFormerV2, layer_layout

Transform = Callable[[Any], Any]
# Keys every loader skips: BatchNorm's step counter is not a weight.
IGNORED_SUFFIXES = ("num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class Rule:
    official: str
    path: tuple[str, ...]  # (collection, module..., leaf)
    to_flax: Transform
    to_torch: Transform


def _same(a):
    return a


def _t(a):
    return a.T


class CheckpointMismatchError(ValueError):
    """Keys or shapes of a checkpoint do not fit the model; the message lists them all."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, expected, found in self.mismatched:
            lines.append(f"  shape mismatch for {key}: expected {expected}, found {found}")
        super().__init__("\n".join(lines))


def _attention(prefix: str, path: tuple[str, ...], heads: int) -> list[Rule]:
    """PyTorch MultiheadAttention: packed (3C, C) in_proj rows [q; k; v], Linear out_proj."""
    def in_w(w):  # (3C, C) -> (C, 3, heads, head_dim)
        return w.reshape(3, heads, w.shape[1] // heads, w.shape[1]).transpose(3, 0, 1, 2)

    def in_w_back(k):
        return k.transpose(1, 2, 3, 0).reshape(-1, k.shape[0])

    def out_w(w):  # (C_out, C_in) -> (heads, head_dim, C_out)
        return w.T.reshape(heads, w.shape[1] // heads, w.shape[0])

    def out_w_back(k):
        return k.reshape(-1, k.shape[-1]).T

    return [
        Rule(prefix + "in_proj_weight", path + ("in_proj_kernel",), in_w, in_w_back),
        Rule(prefix + "in_proj_bias", path + ("in_proj_bias",),
             lambda b: b.reshape(3, heads, -1), lambda b: b.reshape(-1)),
        Rule(prefix + "out_proj.weight", path + ("out_proj_kernel",), out_w, out_w_back),
        Rule(prefix + "out_proj.bias", path + ("out_proj_bias",), _same, _same),
    ]


def _linear(prefix: str, path: tuple[str, ...]) -> list[Rule]:
    return [Rule(prefix + "weight", path + ("kernel",), _t, _t),
            Rule(prefix + "bias", path + ("bias",), _same, _same)]


def _norm(prefix: str, path: tuple[str, ...]) -> list[Rule]:
    return [Rule(prefix + "weight", path + ("scale",), _same, _same),
            Rule(prefix + "bias", path + ("bias",), _same, _same)]


def _conv1x1(prefix: str, path: tuple[str, ...]) -> list[Rule]:
    """Conv3d (O, I, 1, 1, 1) -> Dense kernel (I, O)."""
    return [Rule(prefix + "weight", path + ("kernel",),
                 lambda w: w[:, :, 0, 0, 0].T, lambda k: k.T[:, :, None, None, None]),
            Rule(prefix + "bias", path + ("bias",), _same, _same)]


def _depthwise(prefix: str, path: tuple[str, ...]) -> list[Rule]:
    """Depthwise Conv3d (C, 1, kt, kh, kw) -> kernel (kt, kh, kw, C)."""
    return [Rule(prefix + "weight", path + ("kernel",),
                 lambda w: w[:, 0].transpose(1, 2, 3, 0), lambda k: k.transpose(3, 0, 1, 2)[:, None]),
            Rule(prefix + "bias", path + ("bias",), _same, _same)]


def _mlp(prefix: str, path: tuple[str, ...]) -> list[Rule]:
    return _linear(prefix + "c_fc.", path + ("c_fc",)) + _linear(prefix + "c_proj.", path + ("c_proj",))


def official_rules(model: UniFormerV2) -> list[Rule]:
    """Every official key of this configuration, in the official state-dict order."""
    p = ("params",)
    rules = [
        Rule("class_embedding", p + ("class_embedding",), _same, _same),
        Rule("positional_embedding", p + ("positional_embedding",), _same, _same),
        Rule("conv1.weight", p + ("conv1",),  # (C, 3, kt, p, p) <-> (kt, p, p, 3, C)
             lambda w: w.transpose(2, 3, 4, 1, 0), lambda k: k.transpose(4, 3, 0, 1, 2)),
        *_norm("ln_pre.", p + ("ln_pre",)),
        Rule("transformer.temporal_cls_token", p + ("temporal_cls_token",), _same, _same),
    ]
    if not model.frozen:
        rules.append(Rule("transformer.balance", p + ("balance",), _same, _same))
    lmhras = [] if model.no_lmhra else ["lmhra1", "lmhra2"] if model.double_lmhra else ["lmhra1"]
    for i in range(model.layers):
        pre, block = f"transformer.resblocks.{i}.", (f"layer_{i}", "block")
        for name in lmhras:
            seq, mod = f"{pre}{name}.pos_embed.", block + (name,)
            rules += _norm(seq + "0.", p + mod + ("norm",))
            rules += [Rule(seq + "0.running_mean", ("batch_stats",) + mod + ("norm", "mean"), _same, _same),
                      Rule(seq + "0.running_var", ("batch_stats",) + mod + ("norm", "var"), _same, _same)]
            rules += _conv1x1(seq + "1.", p + mod + ("conv_in",))
            rules += _depthwise(seq + "2.", p + mod + ("conv_dw",))
            rules += _conv1x1(seq + "3.", p + mod + ("conv_out",))
        rules += _attention(pre + "attn.", p + block + ("attn",), model.heads)
        rules += _norm(pre + "ln_1.", p + block + ("ln_1",))
        rules += _mlp(pre + "mlp.", p + block + ("mlp",))
        rules += _norm(pre + "ln_2.", p + block + ("ln_2",))
    for j, i in enumerate(model.return_list):
        dec = p + (f"layer_{i}", "global")
        if model.dpe:
            rules += _depthwise(f"transformer.dpe.{j}.", dec + ("dpe",))
        rules += _attention(f"transformer.dec.{j}.attn.", dec + ("attn",), model.n_head)
        for ln in ("ln_1", "ln_2", "ln_3"):
            rules += _norm(f"transformer.dec.{j}.{ln}.", dec + (ln,))
        rules += _mlp(f"transformer.dec.{j}.mlp.", dec + ("mlp",))
    rules += _norm("transformer.proj.0.", p + ("head_norm",))
    rules += _linear("transformer.proj.2.", p + ("head",))
    return rules


def required(state: Mapping[str, np.ndarray], key: str, what: str) -> np.ndarray:
    """``state[key]``; a ValueError saying that ``state`` is not ``what`` if it is missing."""
    if key not in state:
        raise ValueError(f"not {what}: no {key!r} (found e.g. {sorted(state)[:5]})")
    return state[key]


def backbone_shape(state: Mapping[str, np.ndarray], what: str) -> dict[str, int]:
    """The CLIP backbone fields that a prefix-free official or CLIP state dict determines:
    ``width`` from ``class_embedding`` (C,), ``patch_size`` from ``conv1.weight`` (C, 3,
    [kt,] p, p), ``input_resolution`` from ``positional_embedding`` (1 + g*g, C), ``layers``
    from the ``transformer.resblocks.{i}`` keys. ``heads`` is not in the shapes.

    ``what`` names the expected kind of state dict in the error for a missing key.
    """
    width = required(state, "class_embedding", what).shape[0]
    patch = required(state, "conv1.weight", what).shape[-1]
    grid = math.isqrt(required(state, "positional_embedding", what).shape[0] - 1)
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    return dict(input_resolution=grid * patch, patch_size=patch, width=width, layers=layers)


def get_path(tree: dict, path: Iterable[str]):
    for name in path:
        tree = tree[name]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def apply_rules(rules: list[Rule], state: dict[str, np.ndarray], abstract: dict,
                source: str, target: dict | None = None,
                allow_missing: bool = False) -> dict:
    """Fills a variables tree from ``state`` by the rules, strictly.

    Every key of ``state`` must be used (except ``num_batches_tracked``) and, unless
    ``allow_missing``, every rule must find its key. Shapes are checked against
    ``abstract`` and reported in the official layout. Arrays become float32.
    """
    target = {} if target is None else target
    used, missing, mismatched = set(), [], []
    for rule in rules:
        if rule.official not in state:
            missing.append(rule.official)
            continue
        used.add(rule.official)
        found = np.asarray(state[rule.official])
        expected = get_path(abstract, rule.path)
        try:
            converted = rule.to_flax(found)
        except (ValueError, TypeError, IndexError):  # a reshape that cannot fit
            converted = None
        if converted is None or converted.shape != expected.shape:
            # The official-layout shape is only needed for the report.
            expected_official = jax.eval_shape(rule.to_torch, expected).shape
            mismatched.append((rule.official, tuple(expected_official), found.shape))
            continue
        set_path(target, rule.path, np.ascontiguousarray(converted, dtype=expected.dtype))
    unexpected = sorted(k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if (missing and not allow_missing) or unexpected or mismatched:
        raise CheckpointMismatchError(source, [] if allow_missing else missing, unexpected, mismatched)
    return target


def stack_layers(model: UniFormerV2, variables: dict) -> dict:
    """Loop layout (``layer_{i}``) -> scan layout (``layers_{a}_{b}``, stacked on axis 0),
    every collection; numpy (a conversion stays in host memory)."""
    return {c: layer_layout(model, tree, stacked=True) for c, tree in variables.items()}


def unstack_layers(model: UniFormerV2, variables: dict) -> dict:
    """Scan layout -> loop layout, every collection; the inverse of :func:`stack_layers`."""
    return {c: layer_layout(model, tree, stacked=False) for c, tree in variables.items()}
