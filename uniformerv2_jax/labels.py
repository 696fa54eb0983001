"""Class-name lists: the shipped ones (``data/labels``) and any the user passes."""

from __future__ import annotations

import functools
import os

from uniformerv2_jax import storage

LABELS_DIR = storage.path(__file__).resolve().parent.parent / "data" / "labels"

# Dataset -> its shipped class list. For a bare class count (a converted checkpoint) the
# first list of that length is taken: the order says which list a count most likely means.
CLASS_LISTS = {
    "k400": "kinetics400_uniformerv2_order.txt",
    "k600": "kinetics600.txt",
    "k700": "kinetics700.txt",
    "k710": "kinetics710.txt",
    "mit": "moments_in_time_v1.txt",
    "sthv2": "something_something_v2.txt",
    "sthv1": "something_something_v1.txt",
    "anet": "activitynet.txt",
    "hacs": "activitynet.txt",  # HACS Segments uses the 200 ActivityNet v1.3 classes
    "ucf101": "ucf101.txt",
    "hmdb51": "hmdb51.txt",
}


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One name per line (line i is class i); the file and duplicates are named in errors."""
    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


@functools.cache
def num_classes(dataset: str) -> int:
    """The class count of a dataset of :data:`CLASS_LISTS`."""
    return len(read_class_names(LABELS_DIR / CLASS_LISTS[dataset]))


def class_names_for(count: int, path: str | os.PathLike | None = None) -> list[str]:
    """Names from ``path``, else the shipped list of ``count`` classes, else ``class_i``."""
    if path is None:
        path = next((LABELS_DIR / file for dataset, file in CLASS_LISTS.items()
                     if num_classes(dataset) == count), None)
    if path is None:
        return [f"class_{i}" for i in range(count)]
    names = read_class_names(path)
    if len(names) != count:
        raise ValueError(f"{path} lists {len(names)} classes, the model has {count}")
    return names
