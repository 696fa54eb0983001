"""Class-name lists: the shipped ones (``data/labels``) and any the user passes."""

from __future__ import annotations

import os

from uniformerv2_jax import storage

LABELS_DIR = storage.path(__file__).resolve().parent.parent / "data" / "labels"


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One name per line (line i is class i); the file and duplicates are named in errors."""
    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names
