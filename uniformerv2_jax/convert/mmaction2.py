"""MMAction2 UniFormerV2 recognizers <-> the official layout (and so our variables).

MMAction2 (``mmaction/models/backbones/uniformerv2.py``) keeps the official backbone key
for key, except that the final LayerNorm is ``backbone.transformer.norm`` and the
classifier is the head's ``cls_head.fc_cls`` (official: ``transformer.proj.0`` and
``transformer.proj.2``); shapes and layouts are identical. Its Kinetics-400 heads are in
MMAction2's alphabetical class order (``data/labels/kinetics400.txt``), while official
heads, and so this code's K400 models, use ``kinetics400_uniformerv2_order.txt``: a
400-class head is re-indexed by class name on the way in and back on the way out (K600,
K700 and K710 orders are the same in both). Checkpoints are ``torch.save({"meta": ...,
"state_dict": ...})``; configs are Python files, read here without running them.
"""

from __future__ import annotations

import ast
import logging
import operator
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniformerv2_jax import storage
from uniformerv2_jax.convert.io import read_state_dict, write_state_dict
from uniformerv2_jax.convert.official import official_state_to_model, to_official
from uniformerv2_jax.labels import CLASS_LISTS, LABELS_DIR, read_class_names
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import official_kwargs

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

# The defaults of MMAction2's UniFormerV2 backbone code (not the official ones), for the
# fields a config leaves out.
MMACTION2_DEFAULTS: dict[str, Any] = dict(
    input_resolution=224, patch_size=16, width=768, layers=12, heads=12,
    backbone_drop_path_rate=0.0, t_size=8, kernel_size=3, dw_reduction=1.5,
    temporal_downsample=False, no_lmhra=True, double_lmhra=False, return_list=[8, 9, 10, 11],
    n_layers=4, n_dim=768, n_head=12, mlp_factor=4.0, drop_path_rate=0.0,
    mlp_dropout=[0.5, 0.5, 0.5, 0.5])
# Config keys about initialisation or training, not the architecture.
IGNORED_BACKBONE_KEYS = ("type", "clip_pretrained", "pretrained", "init_cfg")
IGNORED_HEAD_KEYS = ("type", "in_channels", "average_clips", "channel_map", "init_cfg",
                     "init_std", "loss_cls", "multi_class", "label_smooth_eps", "topk")
HEAD_TYPES = ("UniFormerHead", "TimeSformerHead")  # both: dropout, then fc_cls
PIXEL_MEAN, PIXEL_STD = [114.75] * 3, [57.375] * 3  # 255 * input.transforms' mean/std


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


def read_mmaction2_config(path: str | os.PathLike) -> dict[str, Any]:
    """Official constructor arguments from an MMAction2 config's ``model = dict(...)``.

    ``backbone`` gives the UniFormerV2 arguments (absent ones take MMAction2's defaults),
    ``cls_head`` ``num_classes`` and ``dropout_ratio`` (-> ``cls_dropout``). The file is
    parsed, never run (see :func:`read_literal_assignments`); ``_base_`` files are not
    followed (MMAction2's UniFormerV2 configs define the whole model themselves).
    """
    path = os.fspath(path)
    model = read_literal_assignments(path).get("model")
    if isinstance(model, _Unfollowable):
        raise ValueError(model.reason)
    if not isinstance(model, dict):
        raise ValueError(f"{path}: no `model = dict(...)` assignment; is this an MMAction2 config?")
    backbone = _section(path, model, "backbone", ("UniFormerV2",))
    head = _section(path, model, "cls_head", HEAD_TYPES)
    kwargs = dict(MMACTION2_DEFAULTS)
    for key, value in backbone.items():
        if key in MMACTION2_DEFAULTS:
            kwargs[key] = value
        elif key not in IGNORED_BACKBONE_KEYS:
            raise ValueError(f"{path}: unknown key model.backbone.{key}")
    for key in head:
        if key not in ("num_classes", "dropout_ratio", *IGNORED_HEAD_KEYS):
            raise ValueError(f"{path}: unknown key model.cls_head.{key}")
    if "num_classes" not in head:
        raise ValueError(f"{path}: model.cls_head has no num_classes")
    if head.get("in_channels", kwargs["n_dim"]) != kwargs["n_dim"]:
        raise ValueError(f"{path}: model.cls_head.in_channels={head['in_channels']} but the "
                         f"backbone's n_dim={kwargs['n_dim']}")
    pre = model.get("data_preprocessor") or {}
    if [pre.get("mean", PIXEL_MEAN), pre.get("std", PIXEL_STD)] != [PIXEL_MEAN, PIXEL_STD]:
        logging.warning("%s: data_preprocessor mean/std %s/%s differ from UniFormerV2's %s/%s, "
                        "which this code's input pipeline uses", path, pre.get("mean"),
                        pre.get("std"), PIXEL_MEAN, PIXEL_STD)
    # MMAction2's head defaults to no dropout; it has no frozen variant.
    kwargs.update(num_classes=head["num_classes"], cls_dropout=head.get("dropout_ratio", 0.0),
                  frozen=False)
    return kwargs


def _section(path: str, model: dict, name: str, types: tuple[str, ...]) -> dict:
    section = model.get(name)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: model.{name} is missing or not a dict")
    if section.get("type") not in types:
        raise ValueError(f"{path}: model.{name}.type={section.get('type')!r}; expected "
                         + " or ".join(map(repr, types)))
    return section


class _Unfollowable:
    """A name this reader cannot give a value: using it raises ``reason``."""

    def __init__(self, reason: str):
        self.reason = reason


class _NotLiteral(ValueError):
    pass


def read_literal_assignments(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level ``NAME = value`` bindings of a Python config file, without running it.

    Values may be literals, names bound above, ``dict(...)`` with keyword arguments
    (``**name`` too), dict/list/tuple displays, and ``+ - * / // %`` between numbers (``+``
    also joins lists, tuples or strings; ``[x] * n`` repeats). A binding whose value is anything else (e.g. a
    call such as ``x.copy()``), or a name changed in place (``x['k'] = v``), cannot be
    used: a value that refers to it is refused. Statements other than assignments
    (``import``, ``def``, ``if``, calls, ...) are refused outright. Errors name the file
    and line.
    """
    path = os.fspath(path)
    if not storage.path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        tree = ast.parse(storage.path(path).read_text(encoding="utf-8"), filename=path)
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    names: dict[str, Any] = {}
    uses: dict[str, set[str]] = {}  # name -> the names its value may share objects with
    for stmt in tree.body:
        where = f"{path}:{stmt.lineno}"
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            try:
                value = _literal(stmt.value, names, path)
            except _NotLiteral as e:
                value = _Unfollowable(str(e))
            used = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
            used |= {u for n in used for u in uses.get(n, ())}
            for target in stmt.targets:
                names[target.id], uses[target.id] = value, used
        elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            # An in-place change (MMAction2's K710 configs: `testset['pipeline'] = ...`);
            # everything that may share an object with the changed name is unfollowable.
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            changed = {name for t in targets for name in _root_names(t)}
            reason = f"{where}: `{_snippet(stmt)}` changes {', '.join(sorted(changed))} in place"
            for name in list(names):
                if name in changed or uses[name] & changed:
                    names[name] = _Unfollowable(reason)
            for name in changed - set(names):
                names[name], uses[name] = _Unfollowable(reason), set()
        else:
            raise ValueError(f"{where}: `{_snippet(stmt)}` is code; a config is read, never run, "
                             "and may hold only assignments of literal values")
    return names


def _root_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds or changes (``a``, ``a[k].b``, ``a, b``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for elt in target.elts for name in _root_names(elt)]
    while isinstance(target, (ast.Subscript, ast.Attribute, ast.Starred)):
        target = target.value
    return [target.id] if isinstance(target, ast.Name) else []


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _literal(node: ast.expr, names: dict[str, Any], path: str) -> Any:
    def value(n):
        return _literal(n, names, path)

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        if isinstance(names[node.id], _Unfollowable):
            raise _NotLiteral(names[node.id].reason)
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple)) and not any(
            isinstance(e, ast.Starred) for e in node.elts):
        items = [value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        out = {}
        for key, item in zip(node.keys, node.values):
            out.update(_mapping(value(item), item, path) if key is None else {value(key): value(item)})
        return out
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args):
        out = {}
        for kw in node.keywords:
            out.update(_mapping(value(kw.value), kw.value, path) if kw.arg is None
                       else {kw.arg: value(kw.value)})
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = value(node.operand)
        if number(operand):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a, b = value(node.left), value(node.right)
        joins = isinstance(node.op, ast.Add) and type(a) is type(b) and isinstance(a, (list, tuple, str))
        # `[0.5] * 4`; the cap keeps a hostile file from filling the memory.
        repeats = (isinstance(node.op, ast.Mult) and isinstance(a, (list, tuple)) and number(b)
                   and isinstance(b, int) and len(a) * b <= 10_000)
        if (number(a) and number(b)) or joins or repeats:
            try:
                return _ARITHMETIC[type(node.op)](a, b)
            except ZeroDivisionError:
                pass
    if isinstance(node, ast.Name):
        raise _NotLiteral(f"{path}:{node.lineno}: name {node.id!r} is not assigned a literal value "
                          "above it")
    raise _NotLiteral(f"{path}:{node.lineno}: `{_snippet(node)}` is not a literal value (the config "
                      "is read, never run: literals, dict(...), names bound above, + - * /)")


def _mapping(value: Any, node: ast.expr, path: str) -> dict:
    if not isinstance(value, dict):
        raise _NotLiteral(f"{path}:{node.lineno}: `**{_snippet(node)}` is not a dict")
    return value


def _snippet(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
