"""PyTorch-world weight files <-> flat ``{key: np.ndarray}`` dicts, safely.

Read: ``.safetensors`` (read without torch); PyTorch ``torch.save`` files
(``.pth``/``.pyth``/``.pt``/``.bin``/``.ckpt``, zip or legacy format), read with
``torch.load(weights_only=True)`` so that no code inside a pickle can run; TorchScript
archives (OpenAI's released CLIP ``.pt``), read with ``torch.jit.load``. Nothing here
ever unpickles arbitrary objects. Written (:func:`write_state_dict`): ``.safetensors``, or
a ``torch.save`` file in the released checkpoints' ``{"model_state": ...}`` layout (or
MMAction2's ``{"state_dict": ..., "meta": ...}``).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniformerv2_jax import storage

TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin", ".ckpt")
ACCEPTED = ("'.safetensors'; PyTorch files ('" + "', '".join(TORCH_SUFFIXES)
            + "', zip or legacy torch.save format, or a TorchScript archive)")
# Wrappers around the state dict in training checkpoints (SlowFast, Lightning, DDP, ...).
CONTAINER_KEYS = ("model_state", "state_dict", "model", "module")


class WeightFileError(ValueError):
    """A weight file that cannot be read as what it claims to be."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a flat state dict; float16/bfloat16 tensors are widened to float32."""
    path = os.fspath(path)
    if not storage.path(path).is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    suffix = storage.path(path).suffix.lower()
    if suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise WeightFileError(f"{path}: unknown weight format {suffix!r}; accepted: {ACCEPTED}")
    with storage.local_copy(path) as local:  # the readers below need a real file
        with open(local, "rb") as f:
            head = f.read(16)
        if suffix == ".safetensors":
            state = _read_safetensors(local, head, path)
        else:
            state = _read_torch(local, head, path)
        return {k: _to_numpy(path, k, v) for k, v in state.items()}


def write_state_dict(path: str | os.PathLike, state: Mapping[str, np.ndarray],
                     overwrite: bool = False, container: str = "model_state",
                     meta: Mapping[str, Any] | None = None) -> None:
    """Writes a flat state dict: ``.safetensors``, or for a PyTorch suffix (``.pth``, ...)
    ``torch.save({container: state})``, by default the layout of the released checkpoints
    (MMAction2's is ``container="state_dict"`` with a ``meta`` dict of plain values beside
    it; ``.safetensors`` files stay flat and have no ``meta``).

    The file is written beside its destination (or locally, for ``gs://``) and moved into
    place when complete, so an interrupted write never leaves a truncated weight file; an
    existing file is replaced only with ``overwrite``.
    """
    path = storage.path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise WeightFileError(f"{path}: unknown weight format {suffix!r}; writable: .safetensors, "
                              + ", ".join(TORCH_SUFFIXES))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    state = dict(state)
    with storage.staging_file(path, suffix=path.suffix) as staging:
        if suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(state, staging)
        else:
            torch = _import_torch(f"writing {path}")
            obj = {container: {k: torch.from_numpy(v) for k, v in state.items()}}
            if meta is not None:
                obj["meta"] = dict(meta)
            torch.save(obj, staging)
        storage.publish(staging, path)


def _import_torch(doing: str):
    """torch, which only the PyTorch formats need (an optional dependency)."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{doing} needs PyTorch: pip install 'uniformerv2_jax[torch]' "
                          "(or use .safetensors)") from None
    return torch


def _read_safetensors(local: str, head: bytes, path: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    # 8-byte little-endian header length, then a JSON header starting with '{'.
    if len(head) < 9 or head[8:9] != b"{":
        raise WeightFileError(f"{path}: not a safetensors file (no safetensors header)")
    try:
        return load_file(local)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightFileError(f"{path}: cannot read safetensors file: {e}") from None


def _is_torchscript(path: str) -> bool:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_torch(local: str, head: bytes, path: str) -> dict[str, Any]:
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and head[:1] != b"\x80":  # pickle protocol >= 2 opcode
        raise WeightFileError(
            f"{path}: not a PyTorch file (neither a zip archive nor a pickle); accepted: {ACCEPTED}")
    torch = _import_torch(f"reading {path}")
    try:
        if is_zip and _is_torchscript(local):
            with warnings.catch_warnings():  # torch 2.13 deprecates jit; OpenAI ships it
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = torch.jit.load(local, map_location="cpu").state_dict()
        else:
            obj = torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightFileError(
            f"{path}: refusing to unpickle it: it holds Python objects other than tensors and "
            f"plain containers ({str(e).splitlines()[0]}). Only weights are read, never code. "
            "If the file is trusted, re-save just its tensors, e.g. "
            "torch.save({'model_state': ckpt['model_state']}, 'weights.pth').") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise WeightFileError(f"{path}: cannot read PyTorch file: {e}") from None
    return _unwrap(path, obj)


def _unwrap(path: str, obj: Any) -> dict[str, Any]:
    """Finds the flat tensor dict inside training-checkpoint wrappers."""
    for _ in range(3):
        if not isinstance(obj, dict):
            raise WeightFileError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def _to_numpy(path: str, key: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "detach"):  # a torch.Tensor; bfloat16 has no numpy view
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        array = value.numpy()
    elif isinstance(value, (int, float)):
        array = np.asarray(value)
    else:
        raise WeightFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    if array.dtype.kind == "f":  # parameters are float32 here (fp16 CLIP is widened)
        array = array.astype(np.float32)
    return array
