"""Input pipeline throughput on this host, beside the B/16 forward's.

    python benchmarks/input_speed.py [--videos 32] [--seconds 20]

Writes Kinetics-like records (10 fps, 10 s, short side 256, 256x340 JPEG frames) to a
temporary folder, then prints clips per second for: training clips (sparse sampling,
random resized crop, flip, RandAugment rand-m7-n4-mstd0.5-inc1) at 8x224 and 16x224, and
eval videos (4 clips x 3 crops = 12 views each) at 8x224; and the UniFormerV2-B/16 8x224
float32 forward (batch 1) for comparison. The goal: the pipeline feeds clips at least 2x
faster than the model consumes them on the same host.

The 8x224 training row is measured twice more with the same shards read from ``gs://``
through the local GCS emulator of ``tests/gcs_emulator.py`` (TensorFlow's real GCS client,
TLS, an in-memory fake-gcs-server on loopback): the cost of the GCS code path on this
host's CPU, not a figure for a real bucket's network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uniformerv2_jax import create_model  # noqa: E402
from uniformerv2_jax.input import pipeline, records  # noqa: E402


def write_kinetics_like(directory: str, videos: int, frames: int = 100) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for shard in range(4):
        path = os.path.join(directory, records.shard_name("bench", shard, 4))
        with tf.io.TFRecordWriter(path) as writer:
            for v in range(shard, videos, 4):
                coarse = rng.uniform(0, 255, (frames, 16, 22, 3)).astype(np.float32)
                clip = tf.cast(tf.image.resize(coarse, (256, 340)), tf.uint8)
                jpegs = [tf.io.encode_jpeg(f, quality=90).numpy() for f in clip]
                writer.write(records.encode_clip(jpegs, v % 400, "class", f"v{v}.mp4", 0,
                                                 10_000_000, 10.0))
        paths.append(path)
    return paths


def clips_per_second(ds, clips_per_batch: int, seconds: float) -> float:
    iterator = iter(ds)
    next(iterator)  # warm-up: graph building, first file opens
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += clips_per_batch
    return count / (time.perf_counter() - start)


def train_clips(files, frames: int = 8):
    return pipeline.train_dataset(files, batch_size=8, clip_frames=frames, crop_size=224, seed=0,
                                  randaugment_spec="rand-m7-n4-mstd0.5-inc1", shuffle_buffer=64)


def gcs_row(files: list[str], seconds: float) -> tuple[str, float]:
    """The 8x224 training row with the shards in a bucket of the local GCS emulator."""
    name = "train clips 8x224, shards on gs:// (emulator)"
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    try:
        from gcs_emulator import GcsEmulator
    except ImportError as e:  # the test extra is not installed
        print(f"skipping the gs:// row: {e}")
        return name, float("nan")
    with GcsEmulator(buckets=["bench"]) as gcs, gcs.activated():
        remote = []
        for path in files:
            remote.append(f"gs://bench/{os.path.basename(path)}")
            tf.io.gfile.copy(path, remote[-1])
        return name, clips_per_second(train_clips(remote), 8, seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        files = write_kinetics_like(directory, args.videos)
        rows = []
        for frames in (8, 16):
            ds = train_clips(files, frames)
            rows.append((f"train clips {frames}x224, full augmentation",
                         clips_per_second(ds, 8, args.seconds)))
        ds = pipeline.eval_dataset(files, batch_size=2, clip_frames=8, crop_size=224,
                                   num_clips=4, num_crops=3).repeat()
        rows.append(("eval videos 8x224, 4 clips x 3 crops", clips_per_second(ds, 2, args.seconds)))
        rows.append(gcs_row(files, args.seconds))

    model = create_model("B/16")
    video = np.zeros((1, 8, 224, 224, 3), np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), video)
    apply = jax.jit(model.apply)
    apply(variables, video).block_until_ready()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds / 2:
        apply(variables, video).block_until_ready()
        count += 1
    model_rate = count / (time.perf_counter() - start)

    print(f"{'what (2-core host)':<48} {'clips/s':>8}")
    print("-" * 57)
    for name, rate in rows:
        print(f"{name:<48} {rate:8.2f}")
    print(f"{'model: B/16 8x224 forward, float32':<48} {model_rate:8.2f}")
    print(f"\ntraining clips (8x224) per model forward: {rows[0][1] / model_rate:.1f}x; "
          f"eval views per second: {rows[2][1] * 12:.1f} vs {model_rate:.2f} model views/s")


if __name__ == "__main__":
    main()
