"""A synthetic video task that only temporal models can solve, written as real videos.

A square travels half an orbit around a random centre on a random textured background
and changes shade halfway. The class is the direction (clockwise or counter-clockwise)
and whether the square turns bright or dark. Start angle and colours are random, so a
single frame, and the set of frames of a clip (a random half-circle, half dark and half
bright), have the same distribution in every class: a model that sees single frames, or
averages frames over time, stays at chance (25%). The class is only in the frames' order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLASSES = ("clockwise_brightening", "counterclockwise_brightening",
           "clockwise_darkening", "counterclockwise_darkening")


def render_clip(label: int, rng: np.random.Generator, frames: int = 32, size: int = 64) -> np.ndarray:
    """One clip of class ``label``: (frames, size, size, 3) uint8."""
    direction = -1.0 if label % 2 == 0 else 1.0  # image y points down: -1 is clockwise
    hue = rng.uniform(0, 1, 3)
    dark, bright = 30 + 60 * hue, 165 + 90 * hue
    first, second = (dark, bright) if label < 2 else (bright, dark)
    # Smooth random texture: low-resolution noise upsampled, in mid tones.
    coarse = rng.uniform(70, 150, (8, 8, 3))
    background = np.kron(coarse, np.ones((size // 8, size // 8, 1)))
    background += rng.normal(0, 6, background.shape)
    radius = rng.uniform(0.2, 0.3) * size
    centre = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    half = rng.uniform(0.08, 0.12) * size
    start = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    video = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        angle = start + direction * np.pi * t / frames  # half a turn: small steps
        cy, cx = centre[0] + radius * np.sin(angle), centre[1] + radius * np.cos(angle)
        inside = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
        frame = background.copy()
        frame[inside] = first if t < frames // 2 else second
        video[t] = np.clip(frame, 0, 255)
    return video


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = 16) -> None:
    """Encodes (T, H, W, 3) uint8 as H.264 in an .mp4 (MPEG-4 part 2 if x264 is absent)."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
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
                  frames: int = 32, size: int = 64, fps: int = 16) -> Path:
    """Writes ``root/<class>/<n>.mp4`` for every class (a folder-per-class tree)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(videos_per_class):
            write_video(folder / f"{n:05d}.mp4", render_clip(label, rng, frames, size), fps)
    return root
