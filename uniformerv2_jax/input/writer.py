"""Raw videos -> sharded DMVR-format TFRecords.

Videos are decoded with PyAV, resampled to ``fps`` at the instants ffmpeg's ``fps`` filter
picks (as DMVR's generator does, at 10 fps), resized so the short side is ``short_side``
(256), JPEG-encoded one record per clip, and dealt round-robin into
``name-00000-of-00128.tfrecord`` shards. Inputs and outputs may be local
or ``gs://`` (:mod:`uniformerv2_jax.storage`). Shards are written by worker processes,
each to a local staging file published (renamed, or uploaded in one piece) only when
complete, so a rerun keeps finished shards (resumable) and no reader sees a partial one.
Videos that fail to decode are skipped, counted and listed in ``name.failures.json``
(each once, also across resumed runs); the run goes on. ``name.counts.json`` lists the
records of each finished shard.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import os
from fractions import Fraction
from typing import NamedTuple, Sequence

import numpy as np

from uniformerv2_jax import storage

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One clip to write: a file, its class, and optionally a time window (seconds)."""
    path: str
    label: int
    label_text: str
    start: float | None = None
    end: float | None = None


class DecodedVideo(NamedTuple):
    """Frames (T, H, W, 3) uint8 and the clip's ``end`` in seconds of the source's clock
    (the end of the last frame kept)."""
    frames: np.ndarray
    end: float


def read_video(path: str, fps: float = 10.0, short_side: int = 256,
               start: float | None = None, end: float | None = None) -> DecodedVideo:
    """Decodes ``path`` at ``fps``, short side ``short_side``, as DMVR's generator does
    (ffmpeg's ``trim=start:end,fps=fps``).

    The source frames kept are those at ``start <= t < end``. Each source frame goes to
    output instant ``round(t * fps)`` (halves up), and output frame m, for m from the first
    kept frame's instant up to ``round(t_end * fps)`` excluded (``t_end`` the end of the
    last kept frame), shows the last source frame whose instant is at most m: for a 25 fps
    source at 10 fps, source frames 1, 3, 6, 8, 11, ...
    """
    import av

    frames, instants = [], []
    rate = Fraction(str(fps))
    with storage.local_copy(path) as local, av.open(local) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        default_duration = 1 / Fraction(stream.average_rate or stream.guessed_rate or 30)
        t_end = None
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                t = len(frames) * default_duration
            else:
                t = frame.pts * frame.time_base  # exact: a Fraction
            if start is not None and t < Fraction(str(start)):
                continue
            if end is not None and t >= Fraction(str(end)):
                break
            h, w = frame.height, frame.width
            scale = short_side / min(h, w)
            size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
            frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
            instants.append(math.floor(t * rate + Fraction(1, 2)))
            duration = frame.duration * frame.time_base if frame.duration and frame.time_base else None
            t_end = t + (duration or default_duration)
    if not frames:
        raise ValueError("no decodable frames" + (" in the clip's window" if start or end else ""))
    outputs = np.arange(instants[0], max(math.floor(t_end * rate + Fraction(1, 2)), instants[0] + 1))
    picks = np.searchsorted(np.asarray(instants), outputs, side="right") - 1
    return DecodedVideo(np.stack([frames[i] for i in picks]), float(t_end))


def native_fps(path: str) -> float:
    """The frame rate a local video file declares (30 when it declares none)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 30.0)


def read_video_file(path: str, short_side: int, fps: float | None = None
                    ) -> tuple[np.ndarray, float]:
    """:func:`read_video` of a local or remote file at ``fps`` (default: the file's own
    rate) -> (frames (T, H, W, 3) uint8, the rate used)."""
    with storage.local_copy(path) as local:  # one download for both reads
        rate = fps or native_fps(local)
        return read_video(local, rate, short_side).frames, rate


def read_frame_folder(path: str, short_side: int = 256) -> np.ndarray:
    """A folder of frame images (sorted by name) -> (T, H, W, 3) uint8, short side resized.

    Frame folders carry no timing: every frame is kept (no fps resampling).
    """
    import tensorflow as tf

    names = sorted(p for p in storage.path(path).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not names:
        raise ValueError("no frame images")
    frames = []
    for name in names:
        image = tf.io.decode_image(tf.io.read_file(os.fspath(name)), channels=3,
                                   expand_animations=False)
        h, w = int(image.shape[0]), int(image.shape[1])
        scale = short_side / min(h, w)
        size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
        frames.append(tf.cast(tf.round(tf.image.resize(image, size)), tf.uint8).numpy())
    return np.stack(frames)


def _write_shard(entries: Sequence[VideoEntry], path: str, fps: float, short_side: int,
                 quality: int) -> tuple[list[dict], int]:
    """Writes one shard (atomically); returns the failures and the records written."""
    import tensorflow as tf

    from uniformerv2_jax.input import records

    failures = []
    with storage.staging_file(path) as staging:
        with tf.io.TFRecordWriter(staging) as writer:
            for entry in entries:
                failure = _write_entry(writer, entry, fps, short_side, quality, records)
                if failure:
                    failures.append({**failure, "shard": storage.path(path).name})
        storage.publish(staging, path)
    return failures, len(entries) - len(failures)


def _write_entry(writer, entry: VideoEntry, fps: float, short_side: int, quality: int,
                 records) -> dict | None:
    """Decodes one video into one record; returns its failure, if it fails."""
    import tensorflow as tf

    folder = storage.path(entry.path).is_dir()
    try:
        if folder:  # no clock: the frames are taken to be at ``fps``
            video = read_frame_folder(entry.path, short_side)
            seconds = (0.0, len(video) / fps)
        else:
            video, clip_end = read_video(entry.path, fps, short_side, entry.start, entry.end)
            seconds = (entry.start or 0.0, min(clip_end, math.inf if entry.end is None else entry.end))
        jpegs = [tf.io.encode_jpeg(frame, quality=quality).numpy() for frame in video]
    except Exception as e:  # noqa: BLE001 -- any decoder failure skips the video
        return {"path": entry.path, "error": f"{type(e).__name__}: {e}"}
    writer.write(records.encode_clip(jpegs, entry.label, entry.label_text, entry.path,
                                     *(round(1e6 * t) for t in seconds), None if folder else fps))
    return None


def write_records(entries: Sequence[VideoEntry], output_dir: str | os.PathLike, name: str,
                  num_shards: int, fps: float = 10.0, short_side: int = 256, quality: int = 90,
                  workers: int | None = None, progress: bool = True) -> dict:
    """Writes all shards that do not exist yet; returns a report of what happened.

    ``workers`` processes write shards in parallel (default: one per core; 0 writes in
    this process).
    """
    output_dir = storage.path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be positive")
    from uniformerv2_jax.input import records

    paths = [os.fspath(output_dir / records.shard_name(name, i, num_shards)) for i in range(num_shards)]
    failures_file = output_dir / records.failures_name(name)
    counts_file = output_dir / records.counts_name(name)  # records per shard, for eval planning
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    # A shard is finished when it exists and the counts sidecar (written after it) names it.
    todo = [i for i, p in enumerate(paths)
            if storage.path(p).name not in counts or not storage.path(p).exists()]
    rewritten = {storage.path(paths[i]).name for i in todo}
    failures = json.loads(failures_file.read_text()) if failures_file.exists() else []
    failures = [f for f in failures if f.get("shard") not in rewritten]  # listed again below
    if workers is None:
        workers = min(os.cpu_count() or 1, len(todo))
    jobs = [(entries[i::num_shards], paths[i], fps, short_side, quality) for i in todo]
    bar = _progress(len(todo), f"writing {name}", progress)

    def done(job, result):
        failures.extend(result[0])
        counts[storage.path(job[1]).name] = result[1]
        # After every shard, failures first, so that an interrupted run knows what is
        # finished (a shard the counts name) and what failed in it.
        storage.write_atomic(failures_file, json.dumps(failures, indent=1))
        storage.write_atomic(counts_file, json.dumps(dict(sorted(counts.items())), indent=1))
        bar.update(1)

    if workers == 0 or len(jobs) <= 1:  # in this process
        for job in jobs:
            done(job, _write_shard(*job))
    else:
        context = multiprocessing.get_context("spawn")  # TF and fork do not mix
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_write_shard, *job): job for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
    bar.close()
    storage.write_atomic(failures_file, json.dumps(failures, indent=1))
    if failures:
        logging.warning("%d videos failed to decode and were skipped; see %s",
                        len(failures), failures_file)
    return {"shards": paths, "written": len(todo), "kept": num_shards - len(todo),
            "videos": len(entries), "failed": len(failures), "failures_file": str(failures_file)}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="shard", disable=not enabled)


def folder_entries(root: str | os.PathLike, class_names: Sequence[str] | None = None
                   ) -> tuple[list[VideoEntry], list[str]]:
    """A folder-per-class tree ``root/<class>/<video>`` -> entries and the class list."""
    root = storage.path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    names = list(class_names) if class_names else sorted(p.name for p in root.iterdir() if p.is_dir())
    entries = []
    for label, name in enumerate(names):
        for video in sorted((root / name).glob("*")):
            if video.suffix.lower() in VIDEO_SUFFIXES:
                entries.append(VideoEntry(str(video), label, name))
    return entries, names


def csv_entries(csv_path: str | os.PathLike, video_root: str | os.PathLike | None,
                class_names: Sequence[str]) -> list[VideoEntry]:
    """``path,label`` rows, Kinetics ``youtube_id,time_start,time_end,label,split`` rows, or
    DMVR's ``video_path,start,end,label`` rows (the clip from ``start`` to ``end`` seconds).

    Kinetics clips are looked up as ``<video_root>/<youtube_id>_<start:06d>_<end:06d>.*``
    (the usual download layout); other paths are taken relative to ``video_root`` (if
    given). ``label`` may be a class name or an index.
    """
    import csv
    import io

    index = {name: i for i, name in enumerate(class_names)}
    root = storage.path(video_root or ".")
    entries = []
    rows = list(csv.DictReader(io.StringIO(storage.path(csv_path).read_text(encoding="utf-8"))))
    for line, row in enumerate(rows, start=2):
        label = row.get("label", "").strip()
        if label not in index and not label.isdigit():
            raise ValueError(f"{csv_path}:{line}: unknown class {label!r}")
        label_id = index[label] if label in index else int(label)
        if not 0 <= label_id < len(class_names):
            raise ValueError(f"{csv_path}:{line}: label {label_id} outside [0, {len(class_names)})")
        start = end = None
        if "youtube_id" in row:
            first, last = int(float(row["time_start"])), int(float(row["time_end"]))
            stem = f"{row['youtube_id']}_{first:06d}_{last:06d}"
            found = sorted(root.glob(stem + ".*"))
            path = str(found[0]) if found else str(root / f"{stem}.mp4")
        elif "video_path" in row:
            path = str(root / row["video_path"]) if video_root else row["video_path"]
            try:
                start, end = float(row["start"]), float(row["end"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{csv_path}:{line}: DMVR rows need numeric 'start' and 'end' "
                                 f"(seconds), got {row.get('start')!r}, {row.get('end')!r}") from None
        elif "path" in row:
            path = str(root / row["path"])
        else:
            raise ValueError(f"{csv_path}: expected columns 'path,label', "
                             "'youtube_id,time_start,time_end,label,split' or "
                             "'video_path,start,end,label' (DMVR's)")
        entries.append(VideoEntry(path, label_id, class_names[label_id], start, end))
    return entries


def something_something_entries(list_json: str | os.PathLike, labels_json: str | os.PathLike,
                                video_root: str | os.PathLike) -> list[VideoEntry]:
    """Something-Something lists (``[{"id", "template"}, ...]`` + ``{name: index}``) -> entries.

    Videos are ``<video_root>/<id>.webm`` (SSv2), or frame folders ``<video_root>/<id>/``
    (SSv1's JPEG frames) when such a folder exists.
    """
    labels = json.loads(storage.path(labels_json).read_text())
    entries = []
    for item in json.loads(storage.path(list_json).read_text()):
        name = item["template"].replace("[", "").replace("]", "")
        if name not in labels:
            raise ValueError(f"{list_json}: video {item['id']}: template {name!r} not in {labels_json}")
        folder = storage.path(video_root) / str(item["id"])
        path = folder if folder.is_dir() else folder.with_name(f"{item['id']}.webm")
        entries.append(VideoEntry(str(path), int(labels[name]), name))
    return entries
