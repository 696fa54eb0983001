"""The data doctor: reads every record of DMVR shards and says which are bad, and why.

A record is bad for the first of these reasons that applies (one reason per record):

- ``framing``: the shard's TFRecord framing is damaged (a truncated file, a corrupted
  length or CRC). Nothing after the damage can be read: the readable records before it
  are checked and the damaged tail counts as ONE bad record of this reason.
- ``unparsable``: the bytes are not a SequenceExample in DMVR layout (e.g. several
  frames packed into one feature).
- ``no_frames``: ``image/encoded`` is empty or absent.
- ``missing_label``: no ``clip/label/index``, or a negative one.
- ``label_out_of_range``: a label >= the class count (checked only when one is given).
- ``label_mismatch``: with a class list, the record's label name (``clip/label/text`` or
  ``clip/label/string``) is not in it, or is not the name of its ``clip/label/index``
  (names matched as :func:`records.label_key` does). DMVR's generator numbers classes in
  an order that changes from run to run; the names are what training goes by.
- ``undecodable_frame``: frame ``frame`` is not a whole JPEG (FFD8 ... FFD9) or PNG, or
  ``tf.io.decode_image`` fails on it (truncated data, an undefined Huffman table, ...).
- ``frame_too_large``: frame ``frame`` declares a side over ``frame_headers.MAX_FRAME_SIDE``
  (the input pipeline skips such records; the frame is not decoded).

The input pipeline skips records of the same kinds (an undecodable frame only when it
samples that frame). Frame counts, frame sizes and the class histogram are over good records.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from uniformerv2_jax import storage
from uniformerv2_jax.input import frame_headers, records
from uniformerv2_jax.input.sources import REMOTE_READ_BUFFER

REASONS = ("framing", "unparsable", "no_frames", "missing_label", "label_out_of_range",
           "label_mismatch", "undecodable_frame", "frame_too_large")
MAX_EXAMPLES = 10  # bad records listed per shard
_parse = tf.function(records.parse_clip, input_signature=[tf.TensorSpec((), tf.string)])


def _message(error: tf.errors.OpError) -> str:
    """TF's error text without its op and node decorations (a graph error's last line)."""
    text = re.sub(r"\{\{.*?\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]|name:\s*$", "", error.message)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:160]


def header_problems(frames: Sequence[bytes]) -> list[tuple[str, str] | None]:
    """Per frame of a record, ``(reason, detail)`` of a bad header (not a whole JPEG or
    PNG, an unreadable JPEG header, a declared side over the limit), or None; the headers
    of all frames are read in one go (one op per frame was what made the doctor slow)."""
    batch = tf.constant(list(frames))
    jpeg, png = (kind.numpy() for kind in frame_headers.kinds(batch))
    whole = [bool(j or (p and len(f) >= 24)) for f, j, p in zip(frames, jpeg, png)]  # IHDR: 24 bytes
    problems: list[tuple[str, str] | None] = [
        None if ok else ("undecodable_frame", f"not a whole JPEG or PNG (starts {f[:4].hex()})")
        for f, ok in zip(frames, whole)]
    readable = [i for i, ok in enumerate(whole) if ok]
    try:
        sides = frame_headers.declared_side(tf.gather(batch, readable), jpeg[readable]).numpy()
    except tf.errors.OpError:  # a broken JPEG header among them: find it, frame by frame
        sides = []
        for i in readable:
            try:
                sides.append(int(frame_headers.declared_side(batch[i:i + 1], jpeg[i:i + 1])[0]))
            except tf.errors.OpError as e:
                problems[i], whole[i] = ("undecodable_frame", _message(e)), False
                sides.append(0)
    for i, side in zip(readable, sides):
        if whole[i] and side > frame_headers.MAX_FRAME_SIDE:
            problems[i] = ("frame_too_large", f"declares a side of {side} pixels")
    return problems


def decoded_size(frame: bytes) -> tuple[str | None, str, tuple[int, int] | None]:
    """``(reason, detail, (height, width))`` of decoding one frame; reason None when good."""
    try:
        shape = tf.io.decode_image(frame, channels=3, expand_animations=False).shape
    except tf.errors.OpError as e:
        return "undecodable_frame", _message(e), None
    return None, "", (int(shape[0]), int(shape[1]))


def check_record(serialized: bytes, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None,
                 table: tf.lookup.StaticHashTable | None = None) -> dict:
    """One record's verdict: ``reason`` (None when good), ``filename``, ``label``,
    ``frame`` and ``detail`` when bad, ``sizes`` (each frame's (height, width)) when good.
    ``class_names`` (with ``table``, its :func:`records.label_table`) checks the label
    name against the index."""
    try:
        clip = _parse(serialized)
    except tf.errors.OpError as e:
        return {"reason": "unparsable", "filename": "", "detail": _message(e)}
    frames = clip["frames"].numpy()
    label = int(clip["label"])
    verdict = {"reason": None, "filename": clip["filename"].numpy().decode(errors="replace"),
               "label": label}
    if not len(frames):
        return {**verdict, "reason": "no_frames"}
    if label < 0:
        return {**verdict, "reason": "missing_label"}
    if num_classes is not None and label >= num_classes:
        return {**verdict, "reason": "label_out_of_range", "detail": f"{label} >= {num_classes}"}
    name = clip["label_text"].numpy().decode(errors="replace")
    if class_names is not None and name:
        by_name = int(table.lookup(records.label_key(tf.constant(name))))
        if by_name < 0:
            return {**verdict, "reason": "label_mismatch", "detail": f"label name {name!r} is "
                    f"not in the class list ({len(class_names)} names; index {label})"}
        if by_name != label:
            return {**verdict, "reason": "label_mismatch", "detail": f"index {label} is "
                    f"{class_names[label]!r} but the name is {name!r} (index {by_name})"}
    sizes = []
    for i, (frame, header) in enumerate(zip(frames, header_problems(frames))):
        reason, detail, size = (*header, None) if header else decoded_size(frame)
        if reason:
            return {**verdict, "reason": reason, "frame": i, "detail": detail}
        sizes.append(size)
    return {**verdict, "sizes": sizes}


def check_shard(path: str, num_classes: int | None = None,
                class_names: Sequence[str] | None = None,
                table: tf.lookup.StaticHashTable | None = None) -> dict:
    """The counts of one shard, its first bad records, and (under ``_``) its histograms."""
    shard = {"path": path, "records": 0, "good": 0, "bad": 0, "bad_by_reason": collections.Counter(),
             "bad_examples": [], "_frames": collections.Counter(), "_heights": collections.Counter(),
             "_widths": collections.Counter(), "_classes": collections.Counter()}

    def count(verdict: dict) -> None:
        shard["records"] += 1
        if verdict["reason"] is None:
            shard["good"] += 1
            shard["_frames"][len(verdict["sizes"])] += 1
            shard["_heights"].update(h for h, _ in verdict["sizes"])
            shard["_widths"].update(w for _, w in verdict["sizes"])
            shard["_classes"][verdict["label"]] += 1
            return
        shard["bad"] += 1
        shard["bad_by_reason"][verdict["reason"]] += 1
        if len(shard["bad_examples"]) < MAX_EXAMPLES:
            keep = ("filename", "reason", "frame", "detail")
            shard["bad_examples"].append({"index": shard["records"] - 1,
                                          **{k: verdict[k] for k in keep if k in verdict}})

    consumed = 0  # bytes of whole records: each is its payload + 16 bytes of framing
    buffer = REMOTE_READ_BUFFER if storage.is_remote(path) else None
    try:
        for serialized in tf.data.TFRecordDataset(path, buffer_size=buffer).as_numpy_iterator():
            consumed += len(serialized) + 16
            count(check_record(serialized, num_classes, class_names, table))
    except tf.errors.DataLossError as e:
        count({"reason": "framing", "filename": "", "detail": _message(e)})
    else:  # TF reads a file cut inside a record's 12-byte header as a clean end of file
        size = tf.io.gfile.stat(path).length
        if size != consumed:
            count({"reason": "framing", "filename": "",
                   "detail": f"{size - consumed} bytes after the last whole record (truncated file)"})
    shard["bad_by_reason"] = {r: shard["bad_by_reason"][r] for r in REASONS if shard["bad_by_reason"][r]}
    return shard


def _stats(histogram: collections.Counter) -> dict | None:
    """min, median and max of a histogram (value -> count); None when empty."""
    if not histogram:
        return None
    values, total = sorted(histogram), sum(histogram.values())

    def nth(k: int) -> int:  # the k-th smallest value, from 0
        for value in values:
            k -= histogram[value]
            if k < 0:
                return value

    low, high = nth((total - 1) // 2), nth(total // 2)
    return {"min": values[0], "median": low if low == high else (low + high) / 2, "max": values[-1]}


def check_records(files: Sequence[str], num_classes: int | None = None,
                  class_names: Sequence[str] | None = None, workers: int = 1,
                  progress: bool = False) -> dict:
    """The report over ``files``: counts in total and per shard (``shards``), ``frames``
    per good record and ``frame_size`` (height, width) as min/median/max, and
    ``class_histogram`` (label -> good records). ``good + bad == records`` everywhere.
    ``class_names`` (the class list; sets ``num_classes``) also checks each record's
    label name against its index (``label_mismatch``)."""
    from tqdm import tqdm

    table = None
    if class_names is not None:
        num_classes, table = len(class_names), records.label_table(class_names)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # TF ops release the GIL
        shards = list(tqdm(pool.map(lambda f: check_shard(f, num_classes, class_names, table), files),
                           total=len(files), unit="shard", desc="checking", disable=not progress))
    total = {key: collections.Counter() for key in ("bad_by_reason", "_frames", "_heights", "_widths",
                                                         "_classes")}
    for shard in shards:
        for key, counter in total.items():
            counter.update(shard.pop(key) if key.startswith("_") else shard[key])
    return {
        "records": sum(s["records"] for s in shards), "good": sum(s["good"] for s in shards),
        "bad": sum(s["bad"] for s in shards), "num_classes": num_classes,
        "bad_by_reason": {r: total["bad_by_reason"][r] for r in REASONS if total["bad_by_reason"][r]},
        "frames": _stats(total["_frames"]),
        "frame_size": {"height": _stats(total["_heights"]), "width": _stats(total["_widths"])}
        if total["_heights"] else None,
        "class_histogram": {str(k): total["_classes"][k] for k in sorted(total["_classes"])},
        "shards": shards,
    }


def _labels_with(histogram: dict[str, int], count: int, shown: int = 5) -> str:
    """``label 3``, ``labels 0, 4`` or ``labels 0, 1, 2, 5, 7 and 12 more``: those with
    ``count`` records."""
    tied = [label for label, n in histogram.items() if n == count]
    listed = ", ".join(tied[:shown]) + (f" and {len(tied) - shown} more" if len(tied) > shown else "")
    return f"label{'s' if len(tied) > 1 else ''} {listed}"


def format_report(report: dict) -> str:
    """A readable table: one line per shard, the total, the distributions, bad examples."""
    def row(name: str, s: dict) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in s["bad_by_reason"].items())
        return f"{name:<{width}}  {s['records']:>8} {s['good']:>8} {s['bad']:>6}  {reasons}"

    width = max([len(s["path"]) for s in report["shards"]] + [5])
    lines = [f"{'shard':<{width}}  {'records':>8} {'good':>8} {'bad':>6}  bad by reason"]
    lines += [row(s["path"], s) for s in report["shards"]] + [row("total", report)]

    def mmm(stats: dict | None) -> str:
        return "-" if stats is None else f"{stats['min']} / {stats['median']} / {stats['max']}"

    size = report["frame_size"] or {"height": None, "width": None}
    lines.append(f"frames per good record (min / median / max): {mmm(report['frames'])}; "
                 f"height {mmm(size['height'])}; width {mmm(size['width'])}")
    histogram = report["class_histogram"]
    if histogram:
        known = f" of {report['num_classes']}" if report["num_classes"] else ""
        fewest, most = min(histogram.values()), max(histogram.values())
        if fewest == most:
            spread = f"{fewest} each"
        else:
            spread = (f"fewest: {_labels_with(histogram, fewest)} ({fewest}), "
                      f"most: {_labels_with(histogram, most)} ({most})")
        lines.append(f"classes: {len(histogram)}{known} with good records; {spread}")
    examples = [(s["path"], e) for s in report["shards"] for e in s["bad_examples"]]
    if examples:
        lines.append("bad records (first per shard):")
    for path, e in examples:
        frame = f" frame {e['frame']}" if "frame" in e else ""
        lines.append(f"  {path} #{e['index']} {e['filename'] or '-'}: {e['reason']}{frame}"
                     f"{'  (' + e['detail'] + ')' if e.get('detail') else ''}")
    lines.append(f"{report['bad']} of {report['records']} records bad" if report["bad"]
                 else f"all {report['records']} records good")
    return "\n".join(lines)
