"""Raw videos -> sharded DMVR-format TFRecords.

Videos are decoded with PyAV, resampled to ``fps`` at the instants ffmpeg's ``fps`` filter
picks (as DMVR's generator does, at 10 fps), resized so the short side is ``short_side``
(256), JPEG-encoded one record per clip, and dealt into ``name-00000-of-00128.tfrecord``
shards. Inputs and outputs may be local
or ``gs://`` (:mod:`uniformerv2_jax.storage`). Shards are written by worker processes,
each to a local staging file published (renamed, or uploaded in one piece) only when
complete, so a rerun keeps finished shards (resumable) and no reader sees a partial one.
A video's shard is a hash of its id (:func:`shard_of`), its place in the shard the order
of ids: the same files from any run, here or as a Beam job (:mod:`beam_writer`).
Videos that fail to decode are skipped, counted and listed in ``name.failures.json``
(each once, also across resumed runs); the run goes on. ``name.counts.json`` lists the
records of each finished shard.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from uniformerv2_jax import storage

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One clip to write: a file, its class, optionally a time window (seconds), and
    ``id``, its name in the dataset whatever the storage (``<class>/<file>``, a CSV's
    path, a Kinetics stem; default the path): what decides its shard in a Beam job."""
    path: str
    label: int
    label_text: str
    start: float | None = None
    end: float | None = None
    id: str = ""

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", self.path)


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


def write_shard(entries: Sequence[VideoEntry], path: str, fps: float, short_side: int,
                 quality: int) -> tuple[list[dict], int]:
    """Writes one shard (atomically); returns the failures and the records written."""
    import tensorflow as tf

    failures = []
    with storage.staging_file(path) as staging:
        with tf.io.TFRecordWriter(staging) as writer:
            for entry in entries:
                try:
                    writer.write(encode_entry(entry, fps, short_side, quality))
                except Exception as e:  # noqa: BLE001 -- any decoder failure skips the video
                    failures.append(failure(entry, e, storage.path(path).name))
        storage.publish(staging, path)
    return failures, len(entries) - len(failures)


def encode_entry(entry: VideoEntry, fps: float, short_side: int, quality: int) -> bytes:
    """One video's record (serialised); raises what decoding raises."""
    import tensorflow as tf

    from uniformerv2_jax.input import records

    folder = storage.path(entry.path).is_dir()
    if folder:  # no clock: the frames are taken to be at ``fps``
        video = read_frame_folder(entry.path, short_side)
        seconds = (0.0, len(video) / fps)
    else:
        video, clip_end = read_video(entry.path, fps, short_side, entry.start, entry.end)
        seconds = (entry.start or 0.0, min(clip_end, math.inf if entry.end is None else entry.end))
    jpegs = [tf.io.encode_jpeg(frame, quality=quality).numpy() for frame in video]
    return records.encode_clip(jpegs, entry.label, entry.label_text, entry.path,
                               *(round(1e6 * t) for t in seconds), None if folder else fps)


def failure(entry: VideoEntry, error: Exception, shard: str) -> dict:
    """A line of ``name.failures.json``."""
    return {"path": entry.path, "error": f"{type(error).__name__}: {error}", "shard": shard}


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard of a video: a pure function of its id and the shard count (the same in
    every run, on every runner)."""
    return int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") % num_shards


@dataclasses.dataclass
class ShardPlan:
    """A run of the writer: each shard's path and videos (sorted by id), the shards still
    to write, and the sidecars' content so far (``counts`` of finished shards, the
    ``failures`` found in them)."""
    paths: list[str]
    videos: list[list[VideoEntry]]
    todo: list[int]
    counts: dict[str, int]
    failures: list[dict]
    counts_file: storage.epath.Path
    failures_file: storage.epath.Path

    def record(self, shard: str, written: int, failures: list[dict]) -> None:
        """Notes a finished shard and saves the sidecars."""
        self.failures.extend(failures)
        self.counts[shard] = written
        self.save()

    def reload(self) -> None:
        """The sidecars' content as another process (a Beam job) left it."""
        self.counts = _read_json(self.counts_file, {})
        self.failures = _read_json(self.failures_file, [])

    def save(self) -> None:
        """Writes the sidecars: failures first, so that an interrupted run knows what is
        finished (a shard the counts name) and what failed in it."""
        storage.write_atomic(self.failures_file, json.dumps(self.failures, indent=1))
        storage.write_atomic(self.counts_file, json.dumps(dict(sorted(self.counts.items())), indent=1))


def plan_shards(entries: Sequence[VideoEntry], output_dir: str | os.PathLike, name: str,
                num_shards: int) -> ShardPlan:
    """Deals ``entries`` to ``num_shards`` shards by :func:`shard_of` and finds the shards
    an earlier run finished (present, and named by the counts sidecar)."""
    from uniformerv2_jax.input import records

    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be positive")
    if num_shards & (num_shards - 1):
        logging.warning("num_shards=%d is not a power of two: hosts (a power of two) that read "
                        "the records get unequal numbers of shards", num_shards)
    ids = collections.Counter(e.id for e in entries)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"{len(repeated)} videos are listed more than once, e.g. {repeated[:3]}")
    output_dir = storage.path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [os.fspath(output_dir / records.shard_name(name, i, num_shards)) for i in range(num_shards)]
    videos: list[list[VideoEntry]] = [[] for _ in range(num_shards)]
    for entry in sorted(entries, key=lambda e: e.id):
        videos[shard_of(entry.id, num_shards)].append(entry)
    failures_file = output_dir / records.failures_name(name)
    counts_file = output_dir / records.counts_name(name)  # records per shard, for eval planning
    counts = _read_json(counts_file, {})
    todo = [i for i, p in enumerate(paths)
            if storage.path(p).name not in counts or not storage.path(p).exists()]
    rewritten = {storage.path(paths[i]).name for i in todo}
    failures = _read_json(failures_file, [])
    failures = [f for f in failures if f.get("shard") not in rewritten]  # listed again when written
    counts = {k: v for k, v in counts.items() if k not in rewritten}
    return ShardPlan(paths, videos, todo, counts, failures, counts_file, failures_file)


def _read_json(path: storage.epath.Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def write_records(entries: Sequence[VideoEntry], output_dir: str | os.PathLike, name: str,
                  num_shards: int, fps: float = 10.0, short_side: int = 256, quality: int = 90,
                  workers: int | None = None, progress: bool = True) -> dict:
    """Writes all shards that do not exist yet, on this host; returns a report of what
    happened (:func:`report`). ``workers`` processes write shards in parallel (default:
    one per core; 0 writes in this process). :mod:`beam_writer` runs the same on Beam.
    """
    plan = plan_shards(entries, output_dir, name, num_shards)
    if workers is None:
        workers = min(os.cpu_count() or 1, len(plan.todo))
    jobs = [(plan.videos[i], plan.paths[i], fps, short_side, quality) for i in plan.todo]
    bar = _progress(len(jobs), f"writing {name}", progress)

    def done(job, result):
        plan.record(storage.path(job[1]).name, result[1], result[0])
        bar.update(1)

    if workers == 0 or len(jobs) <= 1:  # in this process
        for job in jobs:
            done(job, write_shard(*job))
    else:
        context = multiprocessing.get_context("spawn")  # TF and fork do not mix
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(write_shard, *job): job for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
    bar.close()
    return report(plan, len(entries))


def report(plan: ShardPlan, videos: int) -> dict:
    """What a finished run did; the failures file is written even when nothing failed."""
    storage.write_atomic(plan.failures_file, json.dumps(plan.failures, indent=1))
    if plan.failures:
        logging.warning("%d videos failed to decode and were skipped; see %s",
                        len(plan.failures), plan.failures_file)
    return {"shards": plan.paths, "written": len(plan.todo), "kept": len(plan.paths) - len(plan.todo),
            "videos": videos, "failed": len(plan.failures), "failures_file": str(plan.failures_file)}


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
                entries.append(VideoEntry(str(video), label, name, id=f"{name}/{video.name}"))
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
    files: dict[str, str] | None = None  # Kinetics stem -> its file: the folder listed once
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
            key = f"{row['youtube_id']}_{first:06d}_{last:06d}"
            if files is None:  # (reversed: of two files of one stem, the first by name wins)
                listed = sorted(root.iterdir(), reverse=True) if root.is_dir() else []
                files = {p.stem: str(p) for p in listed}
            path = files.get(key) or str(root / f"{key}.mp4")
        elif "video_path" in row:
            path = str(root / row["video_path"]) if video_root else row["video_path"]
            try:
                start, end = float(row["start"]), float(row["end"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{csv_path}:{line}: DMVR rows need numeric 'start' and 'end' "
                                 f"(seconds), got {row.get('start')!r}, {row.get('end')!r}") from None
            key = f"{row['video_path']}@{start:g}-{end:g}"  # one video may give several clips
        elif "path" in row:
            key = row["path"]
            path = str(root / key)
        else:
            raise ValueError(f"{csv_path}: expected columns 'path,label', "
                             "'youtube_id,time_start,time_end,label,split' or "
                             "'video_path,start,end,label' (DMVR's)")
        entries.append(VideoEntry(path, label_id, class_names[label_id], start, end, key))
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
        entries.append(VideoEntry(str(path), int(labels[name]), name, id=str(item["id"])))
    return entries
