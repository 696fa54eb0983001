"""Kinetics-710, the set UniFormerV2 post-pretrains on, from the Kinetics-400/600/700 CSVs.

K710's training set is the three training sets merged, one clip per YouTube id, without
any video of the three validation or test sets; its validation set is the three
validation sets merged the same way. Class names are spelled as in
``data/labels/kinetics710.txt``. The CSVs written here are what ``write_records --csv``
reads: ``youtube_id,time_start,time_end,label,split``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
from collections.abc import Mapping, Sequence

import tensorflow as tf

from uniformerv2_jax import labels, storage
from uniformerv2_jax.input import records
from uniformerv2_jax.storage import PathLike

SOURCES = ("k400", "k600", "k700")  # a YouTube id is taken from the first that lists it
REASONS = ("kept", "duplicate", "leaked", "unknown_class")
SPLITS = ("train", "val", "test")
CLASS_LIST = labels.LABELS_DIR / labels.CLASS_LISTS["k710"]


@dataclasses.dataclass(frozen=True)
class Clip:
    """One annotation row; the fields are in the order of the CSVs written here."""
    youtube_id: str
    time_start: int  # seconds
    time_end: int
    label: str  # "" in test sets without labels
    split: str  # one of SPLITS


@functools.cache  # a few thousand distinct names among a million rows
def class_key(name: str) -> str:
    """A class name as names are matched (:func:`records.label_key`, the readers' rule):
    lower case, each run of spaces and underscores one space, trimmed."""
    return records.label_key(tf.constant(name)).numpy().decode()


def split_of(text: str, where: str) -> str:
    """'train', 'val' or 'test' from a ``split`` value or a file name ('validate': 'val');
    ``where`` names the row or file in the error when it says none or several."""
    found = [split for split in SPLITS if split in text.lower()]
    if len(found) != 1:
        raise ValueError(f"{where}: cannot tell the split (train, val or test) from {text!r}")
    return found[0]


def read_annotations(path: PathLike) -> list[Clip]:
    """The rows of one Kinetics CSV (columns in any order; ``label`` and ``split`` may be
    missing). A row's split is its ``split`` value, else the one in the file's name."""
    reader = csv.DictReader(io.StringIO(storage.path(path).read_text(encoding="utf-8")))
    missing = {"youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: no column {', '.join(sorted(missing))} (expected "
                         "label,youtube_id,time_start,time_end,split)")
    file_name, clips = storage.path(path).name, []
    for line, row in enumerate(reader, start=2):
        split = split_of(row.get("split") or file_name, f"{path}:{line}")
        clips.append(Clip(row["youtube_id"].strip(), int(float(row["time_start"])),
                          int(float(row["time_end"])), (row.get("label") or "").strip(), split))
    return clips


def merge(clips_by_source: Mapping[str, Sequence[Clip]], class_names: Sequence[str],
          leaked_ids: frozenset[str] = frozenset()) -> tuple[list[Clip], dict[str, dict[str, int]], set[str]]:
    """One clip per YouTube id, its label spelled as in ``class_names``.

    Sources are read in the mapping's order. A row is ``leaked`` when its id is in
    ``leaked_ids``, a ``duplicate`` when an earlier row was kept with its id, and
    ``unknown_class`` when its name (matched by :func:`class_key`) is not in
    ``class_names``; such a row does not take the id, so a later source may still give
    the clip under a known name. Returns the kept clips, the rows per source and reason
    (``{source: {reason: n}}``) and the unknown names.
    """
    spelling = {class_key(name): name for name in class_names}
    if len(spelling) != len(class_names):
        raise ValueError("two class names are the same once case, spaces and underscores are ignored")
    kept, taken, unknown = [], set(), set()
    counts = {source: dict.fromkeys(REASONS, 0) for source in clips_by_source}
    for source, clips in clips_by_source.items():
        for clip in clips:
            name = spelling.get(class_key(clip.label))
            if clip.youtube_id in leaked_ids:
                reason = "leaked"
            elif clip.youtube_id in taken:
                reason = "duplicate"
            elif name is None:
                reason = "unknown_class"
                unknown.add(clip.label)
            else:
                reason = "kept"
                taken.add(clip.youtube_id)
                kept.append(dataclasses.replace(clip, label=name))
            counts[source][reason] += 1
    return kept, counts, unknown


def build(csvs: Mapping[str, Sequence[PathLike]], class_names: Sequence[str]
          ) -> tuple[list[Clip], list[Clip], dict]:
    """``{"k400": [csv, ...], "k600": ..., "k700": ...}`` -> (K710 train clips, K710 val
    clips, report). The report: ``{"train": {source: {reason: n}}, "val": ...,
    "unknown_names": [name, ...]}``; test sets only decide which ids leak."""
    if set(csvs) - set(SOURCES):
        raise ValueError(f"sources {sorted(set(csvs) - set(SOURCES))}: expected some of {SOURCES}")
    clips = {source: [clip for path in csvs[source] for clip in read_annotations(path)]
             for source in SOURCES if source in csvs}

    def of_split(split: str) -> dict[str, list[Clip]]:
        return {source: [clip for clip in rows if clip.split == split] for source, rows in clips.items()}

    held_out = frozenset(clip.youtube_id for rows in clips.values() for clip in rows if clip.split != "train")
    train, train_counts, unknown_train = merge(of_split("train"), class_names, held_out)
    val, val_counts, unknown_val = merge(of_split("val"), class_names)
    report = {"train": train_counts, "val": val_counts,
              "unknown_names": sorted(unknown_train | unknown_val)}
    return train, val, report


def csv_text(clips: Sequence[Clip]) -> str:
    """``youtube_id,time_start,time_end,label,split`` rows under that header."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(field.name for field in dataclasses.fields(Clip))
    writer.writerows(dataclasses.astuple(clip) for clip in clips)
    return text.getvalue()


def make_k710(csvs: Mapping[str, Sequence[PathLike]], out: PathLike,
              class_list: PathLike = CLASS_LIST) -> dict:
    """Writes ``out/k710_train.csv`` and ``out/k710_val.csv`` (local or ``gs://``) from the
    CSVs of each source; returns :func:`build`'s report."""
    train, val, report = build(csvs, labels.read_class_names(class_list))
    storage.write_atomic(storage.path(out) / "k710_train.csv", csv_text(train))
    storage.write_atomic(storage.path(out) / "k710_val.csv", csv_text(val))
    return report


def format_report(report: dict) -> str:
    """The report as lines: rows per split, source and reason, then the unknown names."""
    lines = []
    for split in ("train", "val"):
        for source, counts in report[split].items():
            lines.append(f"{split:5} {source}: " + ", ".join(f"{counts[r]} {r}" for r in REASONS)
                         + f" (of {sum(counts.values())} rows)")
        total = sum(source_counts["kept"] for source_counts in report[split].values())
        lines.append(f"{split:5} total: {total} clips")
    if report["unknown_names"]:
        lines.append("class names not in the K710 list (rows left out): "
                     + ", ".join(repr(name) for name in report["unknown_names"]))
    return "\n".join(lines)
