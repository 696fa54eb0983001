"""A synthetic video task that only temporal models can solve, written as real videos.

A square wanders (a reflected random walk, started from its uniform stationary
distribution) over a random textured background and changes shade halfway: the class is
whether it turns bright or dark. The two classes are exact time reversals of each other
in distribution (the walk is reversible, and reversing time swaps brightening and
darkening), so single frames and the set of frames of a clip have the same distribution
in both: any model that sees single frames, or pools frames without their order, is at
chance (50%). The class is only in the order of the frames.
"""

from __future__ import annotations

import os

import numpy as np

from uniformerv2_jax import storage

CLASSES = ("brightening", "darkening")


def render_clip(label: int, rng: np.random.Generator, frames: int = 32, size: int = 64) -> np.ndarray:
    """One clip of class ``label``: (frames, size, size, 3) uint8."""
    hue = rng.uniform(0, 1, 3)
    dark, bright = 30 + 60 * hue, 165 + 90 * hue
    first, second = (dark, bright) if label == 0 else (bright, dark)
    # Smooth random texture: low-resolution noise upsampled, in mid tones.
    coarse = rng.uniform(70, 150, (8, 8, 3))
    background = np.kron(coarse, np.ones((size // 8, size // 8, 1)))
    background += rng.normal(0, 6, background.shape)
    half = rng.uniform(0.08, 0.12) * size
    low, high = half, size - 1 - half
    position = rng.uniform(low, high, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    video = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        inside = (np.abs(yy - position[0]) <= half) & (np.abs(xx - position[1]) <= half)
        frame = background.copy()
        frame[inside] = first if t < frames // 2 else second
        video[t] = np.clip(frame, 0, 255)
        # Reflect at the borders: the walk stays reversible.
        position = position + rng.normal(0, 0.04 * size, 2)
        position = np.where(position < low, 2 * low - position, position)
        position = np.where(position > high, 2 * high - position, position)
    return video


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = 16) -> None:
    """Encodes (T, H, W, 3) uint8 as H.264 in an .mp4 (MPEG-4 part 2 if x264 is absent)."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with storage.staging_file(path, suffix=".mp4") as staging:
        _encode(staging, video, fps, codec)
        storage.publish(staging, path)


def _encode(filename: str, video: np.ndarray, fps: int, codec: str) -> None:
    import av

    with av.open(filename, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"} if codec == "libx264" else {}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_dataset(root: str | os.PathLike, videos_per_class: int, seed: int = 0,
                  frames: int = 32, size: int = 64, fps: int = 16) -> storage.epath.Path:
    """Writes ``root/<class>/<n>.mp4`` for every class (a folder-per-class tree)."""
    root = storage.path(root)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(videos_per_class):
            write_video(folder / f"{n:05d}.mp4", render_clip(label, rng, frames, size), fps)
    return root


def write_task(out: str | os.PathLike, train_per_class: int = 96, val_per_class: int = 24,
               workers: int | None = None) -> list[str]:
    """The task as videos (``out/videos/{train,val}``), their record shards
    (``out/{train,val}-*``) and ``out/classes.txt``; returns a line per split."""
    from uniformerv2_jax.input import writer

    out = storage.path(out)
    lines = []
    for split, count, seed in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        videos = write_dataset(out / "videos" / split, count, seed=seed)
        entries, _ = writer.folder_entries(videos, CLASSES)
        report = writer.write_records(entries, out, split, num_shards=4, fps=16, short_side=64,
                                      workers=workers)
        lines.append(f"{split}: {report['videos']} videos, {report['failed']} failed -> {out}/{split}-*")
    storage.write_atomic(out / "classes.txt", "\n".join(CLASSES) + "\n")
    return lines
