"""Raw videos -> DMVR records: real PyAV videos, failures skipped and listed, resumable."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT

from uniformerv2_jax.input import pipeline, records, sources, synthetic, writer


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    synthetic.write_dataset(root, videos_per_class=2, frames=32, size=64, fps=16)
    bad = root / synthetic.CLASSES[0]
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video")
    good = (bad / "00000.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 3])
    return root


def test_read_video_resamples_and_resizes_real_files(video_tree):
    path = str(video_tree / synthetic.CLASSES[1] / "00000.mp4")
    full, end = writer.read_video(path, fps=16, short_side=64)
    assert full.shape == (32, 64, 64, 3) and full.dtype == np.uint8 and end == 2.0
    half = writer.read_video(path, fps=8, short_side=32).frames
    assert half.shape == (16, 32, 32, 3)
    window = writer.read_video(path, fps=16, short_side=64, start=0.5, end=1.0)
    assert len(window.frames) == 8 and window.end == 1.0  # frames at 0.5 <= t < 1.0
    # The 8 fps video takes the even frames of the 16 fps one (compared downscaled).
    even, odd = (np.abs(tf.image.resize(full[k::2], (32, 32), antialias=True).numpy() - half).mean()
                 for k in (0, 1))
    assert even < 5.5 and even < odd


def test_writer_round_trip_with_failures_skipped_listed_and_resume(tmp_path, video_tree):
    entries, names = writer.folder_entries(video_tree, synthetic.CLASSES)
    assert names == list(synthetic.CLASSES) and len(entries) == 2 * 2 + 3
    report = writer.write_records(entries, tmp_path, "train", num_shards=3, fps=16,
                                  short_side=48, workers=0, progress=False)
    assert report["written"] == 3 and report["failed"] == 3
    failures = json.loads((tmp_path / "train.failures.json").read_text())
    assert sorted(f["path"].rsplit("/", 1)[1] for f in failures) == \
        ["text.mp4", "truncated.mp4", "zero.mp4"]
    assert all(f["error"] for f in failures)
    shard_files = sorted(str(p) for p in tmp_path.glob("train-*-of-00003.tfrecord"))
    assert [p.rsplit("/", 1)[1] for p in shard_files] == [records.shard_name("train", i, 3) for i in range(3)]

    seen = {}
    for serialized in tf.data.TFRecordDataset(shard_files):
        clip = records.parse_clip(serialized)
        seen[clip["filename"].numpy().decode()] = clip
    assert len(seen) == 4
    clip = seen[str(video_tree / synthetic.CLASSES[1] / "00001.mp4")]
    assert int(clip["label"]) == 1 and clip["label_text"].numpy().decode() == synthetic.CLASSES[1]
    assert clip["frames"].shape == (32,) and float(clip["frame_rate"]) == 16.0
    assert int(clip["end_us"]) == 2_000_000
    frame = tf.io.decode_jpeg(clip["frames"][0]).numpy()
    assert frame.shape == (48, 48, 3)

    counts = json.loads((tmp_path / "train.counts.json").read_text())
    assert sum(counts.values()) == 4 and len(counts) == 3
    assert sources.record_counts(shard_files) == {p: counts[p.rsplit("/", 1)[1]] for p in shard_files}

    # Resumable: complete shards are kept; a deleted one is written again.
    (tmp_path / records.shard_name("train", 1, 3)).unlink()
    again = writer.write_records(entries, tmp_path, "train", num_shards=3, fps=16,
                                 short_side=48, workers=0, progress=False)
    assert again["written"] == 1 and again["kept"] == 2
    # The rewritten shard's failure (zero.mp4) is listed once, not once per run.
    relisted = json.loads((tmp_path / "train.failures.json").read_text())
    assert again["failed"] == 3 and sorted(f["path"] for f in relisted) == sorted(f["path"] for f in failures)

    batch = next(iter(pipeline.eval_dataset(shard_files, batch_size=4, clip_frames=8,
                                            crop_size=48, num_clips=1, num_crops=1)))
    assert batch["video"].shape == (4, 1, 8, 48, 48, 3) and batch["mask"].numpy().all()


def test_listing_formats(tmp_path):
    (tmp_path / "list.csv").write_text("path,label\na/x.mp4,dog\nb/y.mp4,1\n")
    entries = writer.csv_entries(tmp_path / "list.csv", tmp_path, ["cat", "dog"])
    assert [(e.label, e.label_text) for e in entries] == [(1, "dog"), (1, "dog")]
    (tmp_path / "k400.csv").write_text("youtube_id,time_start,time_end,label,split\n"
                                       "abc,10,20,cat,train\n")
    (tmp_path / "abc_000010_000020.webm").write_bytes(b"")
    (entry,) = writer.csv_entries(tmp_path / "k400.csv", tmp_path, ["cat", "dog"])
    assert entry.path.endswith("abc_000010_000020.webm") and entry.label == 0
    (tmp_path / "bad.csv").write_text("path,label\nz.mp4,cow\n")
    with pytest.raises(ValueError, match="bad.csv:2: unknown class 'cow'"):
        writer.csv_entries(tmp_path / "bad.csv", tmp_path, ["cat", "dog"])
    (tmp_path / "labels.json").write_text('{"Putting something on a table": "0"}')
    (tmp_path / "train.json").write_text(
        '[{"id": "17", "template": "Putting [something] on a table"}]')
    (entry,) = writer.something_something_entries(tmp_path / "train.json",
                                                  tmp_path / "labels.json", tmp_path)
    assert entry.path.endswith("17.webm") and entry.label == 0


@pytest.mark.e2e
def test_write_records_command_line(tmp_path, video_tree):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(synthetic.CLASSES) + "\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "write_records", f"--videos={video_tree}",
         f"--classes={classes}", f"--out={tmp_path / 'records'}", "--name=val", "--num_shards=2",
         "--fps=16", "--short_side=32", "--workers=0"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "7 videos -> 2 shards" in out.stdout and "3 failed" in out.stdout
    assert len(list((tmp_path / "records").glob("val-0000?-of-00002.tfrecord"))) == 2
    missing = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "write_records", f"--videos={tmp_path / 'none'}",
         f"--out={tmp_path / 'r2'}"], capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "video folder not found" in missing.stderr


def test_something_something_frame_folders(tmp_path):
    """SSv1-style JPEG frame folders are written frame by frame (no resampling)."""
    folder = tmp_path / "frames" / "42"
    folder.mkdir(parents=True)
    for i in range(5):
        frame = np.full((48, 64, 3), 40 * i, np.uint8)
        (folder / f"{i + 1:05d}.jpg").write_bytes(tf.io.encode_jpeg(frame).numpy())
    (tmp_path / "labels.json").write_text('{"Pushing something": "3"}')
    (tmp_path / "list.json").write_text('[{"id": "42", "template": "Pushing [something]"}]')
    entries = writer.something_something_entries(tmp_path / "list.json", tmp_path / "labels.json",
                                                 tmp_path / "frames")
    assert entries[0].path == str(folder) and entries[0].label == 3
    writer.write_records(entries, tmp_path / "out", "ssv1", 1, short_side=24, workers=0,
                         progress=False)
    (serialized,) = list(tf.data.TFRecordDataset(str(tmp_path / "out" / records.shard_name("ssv1", 0, 1))))
    clip = records.parse_clip(serialized)
    assert clip["frames"].shape == (5,) and float(clip["frame_rate"]) == 0.0
    frames = [tf.io.decode_jpeg(j).numpy() for j in clip["frames"]]
    assert frames[0].shape == (24, 32, 3)
    assert [int(round(f.mean() / 40)) for f in frames] == [0, 1, 2, 3, 4]
