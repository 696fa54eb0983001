"""Input pipeline throughput per CPU core, today's pipeline beside an earlier one.

    python benchmarks/input_speed.py [--cores 1] [--videos 32] [--seconds 10] [--rounds 2]
                                     [--baseline REVISION] [--gcs]
    python benchmarks/input_speed.py --videos 4 --seconds 0.5 --rounds 1   # the smallest: ~40 s

Writes Kinetics-like records (10 fps, 10 s, short side 256, 256x340 JPEG frames) to a
temporary folder and pins this process to ``--cores`` CPUs. Training clips (sparse
sampling, random resized crop, flip, RandAugment rand-m7-n4-mstd0.5-inc1) at 8x224 and
16x224 are measured with this checkout's pipeline and with the pipeline of git
``--baseline`` (default: the commit before the per-core speed-up, imported from this
checkout's git history into a temporary package: a shallow clone lacks it), alternating
in ``--rounds`` rounds in this one process; each row is the best round, divided by the
cores. Then eval videos (4 clips x 3 crops = 12 views each) at 8x224, and with ``--gcs``
the 8x224 training row again with the shards read from ``gs://`` through the local GCS
emulator of ``tests/support/gcs_emulator.py`` (TensorFlow's real GCS client, TLS, an
in-memory fake-gcs-server on loopback): the cost of the GCS code path on this host's CPU,
not a figure for a real bucket's network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# "Now" is this checkout's pipeline, also where another checkout's package is installed.
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uniformerv2_jax.input import pipeline, records  # noqa: E402

BASELINE = "9701b28c7bbe030938a8d01bc857505f501c8823"  # decode, then crop; float RandAugment
RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"


def write_kinetics_like(directory: str, videos: int, frames: int = 100) -> list[str]:
    rng = np.random.default_rng(0)
    paths, counts = [], {}
    for shard in range(4):
        path = os.path.join(directory, records.shard_name("bench", shard, 4))
        counts[os.path.basename(path)] = len(range(shard, videos, 4))
        with tf.io.TFRecordWriter(path) as writer:
            for v in range(shard, videos, 4):
                coarse = rng.uniform(0, 255, (frames, 16, 22, 3)).astype(np.float32)
                clip = tf.cast(tf.image.resize(coarse, (256, 340)), tf.uint8)
                jpegs = [tf.io.encode_jpeg(f, quality=90).numpy() for f in clip]
                writer.write(records.encode_clip(jpegs, v % 400, "class", f"v{v}.mp4", 0,
                                                 10_000_000, 10.0))
        paths.append(path)
    with open(os.path.join(directory, "bench.counts.json"), "w") as f:  # as the writer leaves it
        json.dump(counts, f)
    return paths


def git(*args: str) -> str:
    """The output of ``git args`` in this checkout; exits with git's reason where it fails."""
    result = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.strip()} (--baseline: a "
                         "shallow clone lacks the default one: git fetch --unshallow)")
    return result.stdout


def baseline_pipeline(revision: str, directory: str):
    """``uniformerv2_jax/input`` as of git ``revision``, imported as package ``baseline_input``."""
    package = os.path.join(directory, "baseline_input")
    os.makedirs(package)
    # Every module of the package then, as modules come and go.
    names = git("ls-tree", "--name-only", f"{revision}:uniformerv2_jax/input").split()
    for name in filter(lambda n: n.endswith(".py"), names):
        source = git("show", f"{revision}:uniformerv2_jax/input/{name}")
        with open(os.path.join(package, name), "w") as f:
            f.write(re.sub(r"\buniformerv2_jax\.input\b", "baseline_input", source))
    sys.path.insert(0, directory)
    from baseline_input import pipeline as old
    return old


def clips_per_second(ds, clips_per_batch: int, seconds: float) -> float:
    iterator = iter(ds)
    next(iterator)  # warm-up: graph building, XLA compilation, first file opens
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += clips_per_batch
    return count / (time.perf_counter() - start)


def train_clips(module, files, frames: int = 8, randaugment_spec: str | None = RANDAUGMENT):
    return module.train_dataset(files, batch_size=8, clip_frames=frames, crop_size=224, seed=0,
                                randaugment_spec=randaugment_spec, shuffle_buffer=64,
                                process_index=0, process_count=1)


def same_stream(old, files) -> str:
    """How the two pipelines' first batches compare: the same clips; their pixels."""
    notes = []
    for spec in (None, RANDAUGMENT):
        a, b = (next(iter(train_clips(m, files, 8, spec))) for m in (old, pipeline))
        assert all(np.array_equal(a[k], b[k]) for k in ("label", "epoch", "position"))
        difference = np.abs(a["video"].numpy() - b["video"].numpy()) * 0.225 * 255  # in pixel levels
        notes.append(f"{'with' if spec else 'without'} RandAugment: " + (
            "identical pixels" if not difference.any() else
            f"pixels differ by {difference.mean():.2f} levels on average"))
    return "; ".join(notes)


def gcs_rate(files: list[str], seconds: float) -> float:
    """The 8x224 training rate with the shards in a bucket of the local GCS emulator."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from support.gcs_emulator import GcsEmulator
    with GcsEmulator(buckets=["bench"]) as gcs, gcs.activated():
        remote = []
        for path in files:
            remote.append(f"gs://bench/{os.path.basename(path)}")
            tf.io.gfile.copy(path, remote[-1])
        return clips_per_second(train_clips(pipeline, remote), 8, seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--gcs", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[:args.cores]
    os.sched_setaffinity(0, cpus)
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in model.splitlines()
                  if line.startswith("Model name")), "unknown CPU")

    with tempfile.TemporaryDirectory() as directory:
        files = write_kinetics_like(directory, args.videos)
        old = baseline_pipeline(args.baseline, directory)
        print(f"baseline {args.baseline[:12]} vs this checkout, first batch: {same_stream(old, files)}")
        best = {}
        for _ in range(args.rounds):
            for frames in (8, 16):
                for name, module in (("baseline", old), ("now", pipeline)):
                    rate = clips_per_second(train_clips(module, files, frames), 8, args.seconds)
                    best[name, frames] = max(best.get((name, frames), 0.0), rate / len(cpus))
        ds = pipeline.eval_dataset(files, batch_size=2, clip_frames=8, crop_size=224,
                                   num_clips=4, num_crops=3, process_index=0,
                                   process_count=1).repeat()
        eval_rate = clips_per_second(ds, 2, args.seconds) / len(cpus)
        gcs = gcs_rate(files, args.seconds) / len(cpus) if args.gcs else None

    print(f"\n{model}, pinned to {len(cpus)} core(s); per core, best of {args.rounds} rounds")
    print(f"| {'training clips, full augmentation':<36} | baseline clips/s | now clips/s | speed-up |")
    print(f"|{'-' * 38}|-----------------:|------------:|---------:|")
    for frames in (8, 16):
        then, now = best["baseline", frames], best["now", frames]
        print(f"| {f'{frames}x224, local disk':<36} | {then:16.1f} | {now:11.1f} | {now / then:7.2f}x |")
    if gcs is not None:
        print(f"| {'8x224, shards on gs:// (emulator)':<36} | {'':16} | {gcs:11.1f} | {'':8} |")
    print(f"\neval videos 8x224, 4 clips x 3 crops: {eval_rate:.1f} videos/s per core "
          f"({eval_rate * 12:.0f} views/s)")


if __name__ == "__main__":
    main()
