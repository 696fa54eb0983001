"""Official constructor arguments from config files: JSON, the official SlowFast YAML, and
MMAction2's Python configs (parsed, never run).
"""

from __future__ import annotations

import ast
import json
import logging
import operator
import os
from typing import Any

from uniformerv2_jax import storage
from uniformerv2_jax.presets import OFFICIAL_BACKBONES, PRESETS, last_layers


def read_official_config(path: str | os.PathLike) -> dict[str, Any]:
    """Official constructor arguments from a JSON file, an official SlowFast YAML config or
    an MMAction2 Python config.

    JSON: the arguments at top level or under ``constructor_args``. YAML: the
    ``UNIFORMERV2`` section, ``DATA.NUM_FRAMES`` and ``MODEL.NUM_CLASSES``. ``.py``: the
    ``model = dict(...)`` of an MMAction2 config, parsed without running it.
    """
    path = os.fspath(path)
    if not storage.path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.endswith(".py"):
        return read_mmaction2_config(path)
    text = storage.path(path).read_text(encoding="utf-8")
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
    raise ValueError(f"{path}: unknown config format; expected .json, .yaml/.yml or an "
                     "MMAction2 .py")


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
    kwargs.update(return_list=list(last_layers(kwargs["layers"])), n_dim=kwargs["width"],
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
