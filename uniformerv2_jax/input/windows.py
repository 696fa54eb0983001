"""Whole videos as sliding windows of test views, for feature extraction (tf.data).

A *job* is one video: a file (decoded by PyAV inside a ``tf.py_function`` stage) or one
record of a DMVR shard (its JPEGs decoded by TensorFlow). Each video is read once: its
windows and their frame indices are computed in TensorFlow, the union of the frames they
sample is decoded (or kept) once, and every window's views (clips x crops, the official
test views of :func:`pipeline.evaluation_views`) are gathered from those frames. The
stream holds one element per (window, view); a video that cannot be read gives one
element with ``mask`` False and its ``error``, and a record whose frames fail to decode
never arrives (the consumer counts what is missing).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from uniformerv2_jax import storage
from uniformerv2_jax.input import pipeline, records, sampling, sources, writer

AUTOTUNE = tf.data.AUTOTUNE
RECORD_FPS = 10.0  # DMVR's rate: assumed for records that carry neither a rate nor timestamps


@dataclasses.dataclass(frozen=True)
class Job:
    """One video: ``id`` (its name in the outputs), a file or a shard, a known label."""
    id: str
    path: str
    label: int = -1
    label_text: str = ""
    record: int = -1  # the record's position in its shard (records only)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Where clips come from: windows (None: the whole video), views, frames, pixels.

    ``fps``: the decoding rate of files (None: each file's own); for records without a
    frame rate or timestamps, their assumed rate (None: :data:`RECORD_FPS`).
    """
    clip_frames: int
    crop_size: int
    num_clips: int = 1
    num_crops: int = 1
    window_seconds: float | None = None
    stride_seconds: float | None = None
    fps: float | None = None


def file_jobs(root: str) -> list[Job]:
    """Videos directly in ``root`` (no label) and in ``root/<class>/`` (labelled by the
    class folders in sorted order), as :func:`writer.folder_entries` reads them."""
    folder = storage.path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos={root}: not a folder")
    flat = [Job(p.name, str(p)) for p in sorted(folder.iterdir())
            if p.suffix.lower() in writer.VIDEO_SUFFIXES and not p.is_dir()]
    entries, _ = writer.folder_entries(folder)
    jobs = flat + [Job(f"{e.label_text}/{storage.path(e.path).name}", e.path, e.label, e.label_text)
                   for e in entries]
    if not jobs:
        raise FileNotFoundError(f"--videos={root}: no video file in it or in its class folders "
                                f"({', '.join(writer.VIDEO_SUFFIXES)})")
    return jobs


def record_jobs(pattern: str) -> list[Job]:
    """Every record of the shards ``pattern`` matches (comma-separated globs)."""
    files = sources.record_files(pattern, "--records")
    counts = sources.record_counts(files)
    return [Job(f"{storage.path(f).name}/{i:06d}", f, record=i) for f in files for i in range(counts[f])]


def window_bounds(num_frames: tf.Tensor, fps: tf.Tensor, window: float | None,
                  stride: float | None) -> dict[str, tf.Tensor]:
    """The windows of a video of ``num_frames`` frames at ``fps``: ``start``/``end`` (W,)
    seconds and ``first``/``length`` (W,) frames.

    Window k spans ``[k * stride, k * stride + window]`` for every k whose window fits in
    the duration ``num_frames / fps`` (a shorter video is one window); frames
    ``round(start * fps)`` up to ``round(end * fps)``, excluded.
    """
    n = tf.cast(num_frames, tf.float64)
    duration = n / tf.cast(fps, tf.float64)
    if window is None:
        start = tf.zeros([1], tf.float64)
        end = duration[None]
    else:
        count = tf.maximum(tf.floor((duration - window) / stride + 1e-6), 0.0) + 1
        start = stride * tf.range(count, dtype=tf.float64)
        end = tf.minimum(start + window, duration)
    first = tf.cast(tf.round(start * tf.cast(fps, tf.float64)), tf.int32)
    last = tf.minimum(tf.cast(tf.round(end * tf.cast(fps, tf.float64)), tf.int32),
                      tf.cast(num_frames, tf.int32))
    return {"start": start, "end": end, "first": first, "length": tf.maximum(last - first, 1)}


def _video(s: Sampling, num_frames: tf.Tensor, fps: tf.Tensor, frames_at, meta: dict,
           ok: tf.Tensor, error: tf.Tensor) -> dict[str, tf.Tensor]:
    """One video, read: its windows, the frames they sample (read once) and a lookup
    from frame index to row of ``frames``."""
    def good():
        w = window_bounds(num_frames, fps, s.window_seconds, s.stride_seconds)
        per_window = lambda fl: fl[0] + tf.concat([  # noqa: E731
            sampling.sparse_test_indices(fl[1], s.clip_frames, c, s.num_clips)
            for c in range(s.num_clips)], 0)
        needed = tf.map_fn(per_window, (w["first"], w["length"]), fn_output_signature=tf.int32)
        needed = tf.sort(tf.unique(tf.reshape(needed, [-1])).y)
        lookup = tf.scatter_nd(needed[:, None], tf.range(tf.size(needed)), [num_frames])
        return {**w, "frames": frames_at(needed), "lookup": lookup}

    def bad():
        return {"start": tf.zeros([1], tf.float64), "end": tf.zeros([1], tf.float64),
                "first": tf.zeros([1], tf.int32), "length": tf.ones([1], tf.int32),
                "frames": tf.zeros([0, 1, 1, 3], tf.uint8), "lookup": tf.zeros([0], tf.int32)}

    return {**tf.cond(ok, good, bad), **meta, "ok": ok, "error": error}


def _clips(s: Sampling, video: dict[str, tf.Tensor]) -> tf.data.Dataset:
    """One element per (window, view) of a read video (one masked element if it failed)."""
    num_views = s.num_clips * s.num_crops
    shape = (num_views, s.clip_frames, s.crop_size, s.crop_size, 3)

    def window(w):
        frames_at = lambda i: tf.gather(video["frames"], tf.gather(  # noqa: E731
            video["lookup"], video["first"][w] + i))
        views = tf.cond(video["ok"], lambda: tf.ensure_shape(pipeline.evaluation_views(
            video["length"][w], frames_at, clip_frames=s.clip_frames, crop_size=s.crop_size,
            num_clips=s.num_clips, num_crops=s.num_crops), shape), lambda: tf.zeros(shape))
        each = lambda x: tf.fill([num_views], x)  # noqa: E731
        return {"video": views, "view": tf.range(num_views, dtype=tf.int32),
                "window": each(tf.cast(w, tf.int32)),
                "windows": each(tf.size(video["first"])), "start": each(video["start"][w]),
                "end": each(video["end"][w]), "mask": each(video["ok"]),
                "bad": each(tf.cast(~video["ok"], tf.int32)),
                **{k: each(video[k]) for k in ("index", "label", "label_text", "filename", "error")}}

    count = tf.cast(tf.size(video["first"]), tf.int64)
    return tf.data.Dataset.range(count).map(window, num_parallel_calls=AUTOTUNE,
                                            deterministic=True).unbatch()


def _decode_file(path: tf.Tensor, short_side: int, fps: float | None):
    """(frames (n, H, W, 3) uint8, fps, error): never raises, an error is data."""
    try:
        frames, rate = writer.read_video_file(path.numpy().decode(), short_side, fps)
        return frames, np.float64(rate), ""
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds; all mean "unreadable"
        return np.zeros((0, 1, 1, 3), np.uint8), np.float64(0.0), f"{type(e).__name__}: {e}"


def file_videos(jobs: Sequence[Job], s: Sampling) -> tf.data.Dataset:
    """Read videos of file ``jobs``, in order (``index``: the position in ``jobs``)."""
    decode = functools.partial(_decode_file, short_side=s.crop_size, fps=s.fps)

    def read(index, path, label, text):
        frames, fps, error = tf.py_function(decode, [path], (tf.uint8, tf.float64, tf.string))
        frames = tf.ensure_shape(frames, (None, None, None, 3))
        fps, error = tf.ensure_shape(fps, ()), tf.ensure_shape(error, ())
        meta = {"index": index, "label": label, "label_text": text, "filename": path}
        return _video(s, tf.shape(frames)[0], fps, lambda i: tf.gather(frames, i), meta,
                      tf.equal(error, ""), error)

    ds = tf.data.Dataset.from_tensor_slices((
        tf.range(len(jobs), dtype=tf.int64), [j.path for j in jobs],
        tf.constant([j.label for j in jobs], tf.int64), [j.label_text for j in jobs]))
    # Decoding holds little of the GIL (PyAV decodes in C): two videos at once.
    return ds.map(read, num_parallel_calls=2, deterministic=True)


def record_videos(jobs: Sequence[Job], s: Sampling, label_names: Sequence[str] | None = None
                  ) -> tf.data.Dataset:
    """Read videos of record ``jobs`` (consecutive records of their shards), in order;
    with ``label_names``, labelled by their label names (:func:`pipeline.checked_clips`)."""
    counts = sources.shard_counts(sorted({j.path for j in jobs}))
    parts = []
    for path, run in itertools.groupby(jobs, key=lambda j: j.path):
        run = list(run)
        readable, total = counts[path]
        parts.append(sources.shard_records(tf.constant(path), readable, total)
                     .skip(run[0].record).take(len(run)))
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts).enumerate()
    ds = ds.map(lambda i, item: (item[0], {**records.parse_clip(item[1]), "index": i}))
    rate = tf.constant(s.fps or RECORD_FPS, tf.float64)

    def read(clip, valid):
        frames = clip["frames"]
        n = tf.size(frames)
        seconds = tf.cast(clip["end_us"] - clip["start_us"], tf.float64) / 1e6
        fps = tf.where(clip["frame_rate"] > 0, tf.cast(clip["frame_rate"], tf.float64),
                       tf.where(seconds > 0, tf.cast(n, tf.float64) / seconds, rate))
        meta = {k: clip[k] for k in ("index", "label", "label_text", "filename", "name_error")
                if k in clip}
        error = tf.where(valid, "", "bad record: no frames, or a broken, foreign or oversized frame")
        return _video(s, n, fps, lambda i: pipeline.decode_frames(frames, i), meta, valid, error)

    ds = pipeline.checked_clips(ds, None, "skip", require_label=False, label_names=label_names)
    # A frame that passes the header check but does not decode drops its video here.
    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    return pipeline.stop_at_unknown_names(ds)


def clip_batches(videos: tf.data.Dataset, s: Sampling, batch_size: int) -> tf.data.Dataset:
    """Batches of ``batch_size`` clips: ``video`` (B, T, S, S, 3), ``mask``, ``index``,
    ``window``, ``view``, ``windows``, ``start``, ``end``, ``label``, ``label_text``,
    ``filename``, ``error``; the last batch padded with masked zeros."""
    clips = videos.prefetch(2).flat_map(functools.partial(_clips, s))
    return pipeline.pad_batches(clips, batch_size, None).prefetch(2)
