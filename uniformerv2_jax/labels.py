"""Class-name lists: the shipped ones (``data/labels``) and any the user passes."""

from __future__ import annotations

import os
from pathlib import Path

LABELS_DIR = Path(__file__).resolve().parent.parent / "data" / "labels"


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One name per line (line i is class i); the file and duplicates are named in errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path}")
    names = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names
