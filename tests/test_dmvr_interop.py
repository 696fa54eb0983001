"""Records shared with DMVR's tools: labels decided by name, shard globs, file modes, DMVR's
CSV and frame instants.

``dmvr_generator_shards`` writes records the way DMVR's ``examples/generate_from_file.py``
does (its key set, one ``image/encoded`` feature per frame, no frame rate, shards named
``NAME-00000-of-00002`` without extension or counts sidecar) and numbers the classes as it
does, ``list(set(labels))``: an order that follows Python's string hashing. Here the set
order is drawn from a seed, so that the test is repeatable and the order differs from the
class list's.
"""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT

from uniformerv2_jax import config as config_lib
from uniformerv2_jax.input import doctor, pipeline, records, sources, synthetic, writer

CLASS_LIST = ["abseiling", "air drumming", "playing cello", "zumba"]


def dmvr_generator_shards(directory, clips: list[tuple[str, np.ndarray]], num_shards: int,
                          seed: int) -> dict[str, int]:
    """``clips``: (label name, frames (T, H, W, 3) uint8). Returns the generator's name ->
    index map (a permutation of the names met, as ``list(set(...))`` gives)."""
    names = sorted({name for name, _ in clips})
    unique_labels = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    label_map = {name: i for i, name in enumerate(unique_labels)}
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"clips-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    for i, (name, video) in enumerate(clips):
        example = tf.train.SequenceExample()
        example.context.feature["clip/label/index"].int64_list.value[:] = (label_map[name],)
        example.context.feature["clip/label/text"].bytes_list.value[:] = (name.encode(),)
        for frame in video:
            example.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value[:] = [
                tf.io.encode_jpeg(frame).numpy()]
        example.context.feature["video/filename"].bytes_list.value[:] = (f"/videos/{i:03d}.mp4".encode(),)
        example.context.feature["clip/start/timestamp"].int64_list.value[:] = (0,)
        example.context.feature["clip/end/timestamp"].int64_list.value[:] = (1_000_000,)
        writers[i % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return label_map


@pytest.fixture(scope="module")
def dmvr_records(tmp_path_factory):
    """12 clips of 4 classes (each clip's frames carry its class: brightness 40 + 50 x index
    in CLASS_LIST), written as DMVR's generator would, with a class order unlike the list's."""
    root = tmp_path_factory.mktemp("dmvr")
    clips = []
    for i in range(12):
        name = CLASS_LIST[i % 4]
        clips.append((name, np.full((6, 16, 16, 3), 40 + 50 * CLASS_LIST.index(name), np.uint8)))
    label_map = dmvr_generator_shards(root / "records", clips, num_shards=2, seed=3)
    assert any(label_map[n] != i for i, n in enumerate(CLASS_LIST)), "the seed must permute"
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASS_LIST) + "\n")
    return {"glob": str(root / "records" / "clips-*"), "classes": str(classes), "map": label_map,
            "names": [name for name, _ in clips]}


def test_check_records_reports_every_index_that_disagrees_with_its_name(dmvr_records):
    files = sources.record_files(dmvr_records["glob"], "--data")
    assert [os.path.basename(f) for f in files] == ["clips-00000-of-00002", "clips-00001-of-00002"]
    report = doctor.check_records(files, class_names=CLASS_LIST)
    wrong = sum(dmvr_records["map"][n] != CLASS_LIST.index(n) for n in dmvr_records["names"])
    assert wrong > 0
    assert report["records"] == 12 and report["bad"] == wrong and report["good"] == 12 - wrong
    assert report["bad_by_reason"] == {"label_mismatch": wrong}
    example = report["shards"][0]["bad_examples"][0]
    index = dmvr_records["map"][dmvr_records["names"][0]]
    assert example["reason"] == "label_mismatch"
    expected = f"index {index} is {CLASS_LIST[index]!r} but the name is 'abseiling' (index 0)"
    assert example["detail"] == expected
    # Without a class list the records are as good as before: nothing to check names by.
    assert doctor.check_records(files, num_classes=4)["bad"] == 0


def test_training_and_evaluation_take_labels_from_names(dmvr_records):
    files = sources.record_files(dmvr_records["glob"], "config.data.train")
    common = dict(clip_frames=2, crop_size=16, num_classes=4, process_index=0, process_count=1)
    train = pipeline.train_dataset(files, batch_size=12, seed=0, shuffle_buffer=1, flip=False,
                                   randaugment_spec=None, area=(1.0, 1.0), ratio=(1.0, 1.0),
                                   mean=(0, 0, 0), std=(1, 1, 1), label_names=CLASS_LIST, **common)
    batch = next(train.as_numpy_iterator())
    # The frames say the class (brightness 40 + 50 k; JPEG moves a flat patch by < 2).
    from_pixels = np.round((255 * batch["video"].mean(axis=(1, 2, 3, 4)) - 40) / 50).astype(int)
    assert (batch["label"] == from_pixels).all() and (batch["skipped"] == 0).all()
    assert sorted(np.bincount(batch["label"], minlength=4)) == [3, 3, 3, 3]

    evals = list(pipeline.eval_dataset(files, batch_size=4, num_clips=1, num_crops=1, mean=(0, 0, 0),
                                       std=(1, 1, 1), label_names=CLASS_LIST, **common).as_numpy_iterator())
    labels = np.concatenate([b["label"][b["mask"]] for b in evals])
    pixels = 255 * np.concatenate([b["video"][b["mask"]].mean(axis=(1, 2, 3, 4, 5)) for b in evals])
    assert len(labels) == 12 and (labels == np.round((pixels - 40) / 50)).all()
    assert sum(int(b["bad"].sum()) for b in evals) == 0

    # By index, as written: the generator's numbering.
    by_index = pipeline.eval_dataset(files, batch_size=12, num_clips=1, num_crops=1, **common)
    batch = next(by_index.as_numpy_iterator())
    assert sorted(batch["label"][batch["mask"]].tolist()) == sorted(
        dmvr_records["map"][n] for n in dmvr_records["names"])


def test_a_name_not_in_the_class_list_stops_with_the_shard_video_and_name(dmvr_records):
    files = sources.record_files(dmvr_records["glob"], "config.data.val")
    other = [n for n in CLASS_LIST if n != "zumba"] + ["salsa dancing"]
    for make in (
        lambda: pipeline.eval_dataset(files, batch_size=4, clip_frames=2, crop_size=16, num_clips=1,
                                      num_crops=1, num_classes=4, label_names=other,
                                      process_index=0, process_count=1),
        lambda: pipeline.train_dataset(files, batch_size=4, clip_frames=2, crop_size=16, seed=0,
                                       randaugment_spec=None, num_classes=4, label_names=other,
                                       process_index=0, process_count=1)):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            for _ in zip(range(4), make().as_numpy_iterator()):
                pass
        message = str(error.value)
        assert "label name `zumba` is not in the class list" in message
        assert "clips-0000" in message and "/videos/0" in message


def test_names_match_without_case_spaces_or_underscores():
    table = records.label_table(["air drumming", "Playing Cello"])
    keys = tf.constant(["Air_Drumming", "playing  cello", " air drumming ", "airdrumming"])
    assert table.lookup(records.label_key(keys)).numpy().tolist() == [0, 1, 0, -1]
    with pytest.raises(ValueError, match="'a b' and 'A_B' are the same name"):
        records.label_table(["a b", "A_B"], "classes.txt")


def test_label_from_is_checked_and_defaults_to_names(tmp_path):
    c = config_lib.base_config()
    assert c.data.label_from == "text"
    c.data.class_names = str(ROOT / "data" / "labels" / "hmdb51.txt")
    assert config_lib.label_names(c)[0] == "brush_hair"
    c.data.label_from = "index"
    assert config_lib.label_names(c) is None
    c.data.label_from = "name"
    with pytest.raises(ValueError, match="data.label_from"):
        config_lib.validate(c, training=False)


@pytest.mark.e2e
def test_sidecars_match_no_shard_glob_and_shards_take_the_umask(tmp_path):
    videos = synthetic.write_dataset(tmp_path / "videos", videos_per_class=1, frames=8, size=32)
    entries, _ = writer.folder_entries(videos, synthetic.CLASSES)
    previous = os.umask(0o022)
    try:
        writer.write_records(entries, tmp_path / "records", "train", num_shards=2, fps=8,
                             short_side=32, workers=0, progress=False)
    finally:
        os.umask(previous)
    out = tmp_path / "records"
    assert sorted(p.name for p in out.iterdir()) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "train.counts.json",
        "train.failures.json"]
    for pattern in ("train-*", "train-*-of-*", "*.tfrecord"):
        assert len(tf.io.gfile.glob(str(out / pattern))) == 2, pattern
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    # A glob that also matches the sidecars reads the shards only, and the doctor finds
    # every record good.
    files = sources.record_files(str(out / "train*"), "--data")
    assert [os.path.basename(f) for f in files] == ["train-00000-of-00002.tfrecord",
                                                    "train-00001-of-00002.tfrecord"]
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "check_records", f"--data={out}/*"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all 2 records good" in result.stdout and "1 each" in result.stdout


def test_counts_sidecars_of_earlier_versions_and_of_dmvr_shard_names(tmp_path):
    for shard in ("train-00000-of-00002.tfrecord", "train-00001-of-00002"):
        with tf.io.TFRecordWriter(str(tmp_path / shard)) as w:
            w.write(records.lost_record())
    (tmp_path / "train-counts.json").write_text(json.dumps({"train-00000-of-00002.tfrecord": 7}))
    (tmp_path / "train.counts.json").write_text(json.dumps({"train-00001-of-00002": 5}))
    files = sources.record_files(str(tmp_path / "train-*"), "--data")
    assert len(files) == 2  # the earlier sidecar name matches the glob, and is not read as a shard
    assert sorted(sources.record_counts(files).values()) == [5, 7]
    assert records.counts_sidecars("train-00001-of-00002") == ("train.counts.json", "train-counts.json")
    with pytest.raises(FileNotFoundError, match=r"--data=.*no record file matches.*only 1 sidecar"):
        sources.record_files(str(tmp_path / "train.counts.json"), "--data")


def gray_levels_video(path, frames: int, fps: int) -> None:
    """Frame i is one flat colour that spells i: red 32 (i // 8), green 32 (i % 8). Levels
    32 apart survive any codec error under 16 (H.264 at crf 18 errs by up to 3 levels on
    these flat frames, a JPEG re-encoding by a few more)."""
    index = np.arange(frames)
    colours = np.stack([32 * (index // 8), 32 * (index % 8), np.full(frames, 128)], -1)
    video = np.broadcast_to(colours[:, None, None, :], (frames, 32, 32, 3)).astype(np.uint8)
    synthetic.write_video(path, np.ascontiguousarray(video), fps)


def source_frames(video: np.ndarray) -> list[int]:
    """The index each frame of :func:`gray_levels_video` spells."""
    red, green = (np.round(video[..., c].mean(axis=(1, 2)) / 32).astype(int) for c in (0, 1))
    return (8 * red + green).tolist()


def test_frames_are_sampled_at_the_instants_of_ffmpegs_fps_filter(tmp_path):
    path = tmp_path / "v25.mp4"
    gray_levels_video(path, frames=60, fps=25)  # 2.4 s
    # Source frame i (at i / 25 s) goes to instant round(10 i / 25) (halves up); output
    # frame m shows the last source frame at an instant <= m: 1, 3, 6, 8, 11, ...
    decoded = writer.read_video(str(path), fps=10, short_side=32)
    expected = [max(i for i in range(60) if np.floor(0.4 * i + 0.5) <= m) for m in range(24)]
    assert expected[:4] == [1, 3, 6, 8]
    assert source_frames(decoded.frames) == expected and decoded.end == pytest.approx(2.4)
    # trim=start=0.5:end=1.3: source frames 13 (0.52 s) .. 32 (1.28 s), instants 5 .. 12.
    window = writer.read_video(str(path), fps=10, short_side=32, start=0.5, end=1.3)
    assert source_frames(window.frames) == [13, 16, 18, 21, 23, 26, 28, 31]
    assert window.end == pytest.approx(1.32)
    # 7 fps: not a divisor of the source rate; 17 frames = round(2.4 x 7).
    assert source_frames(writer.read_video(str(path), fps=7, short_side=32).frames) == [
        1, 5, 8, 12, 16, 19, 23, 26, 30, 33, 37, 41, 44, 48, 51, 55, 58]


def test_dmvr_csv_rows_write_their_clip_and_its_real_end(tmp_path):
    gray_levels_video(tmp_path / "a.mp4", frames=60, fps=25)
    csv = tmp_path / "dmvr.csv"
    csv.write_text("video_path,start,end,label\na.mp4,0.5,1.3,zumba\na.mp4,0,10,abseiling\n")
    entries = writer.csv_entries(csv, tmp_path, CLASS_LIST)
    assert [(e.label, e.start, e.end) for e in entries] == [(3, 0.5, 1.3), (0, 0.0, 10.0)]
    writer.write_records(entries, tmp_path / "out", "val", num_shards=1, fps=10, short_side=32,
                         quality=100, workers=0, progress=False)
    shard = str(tmp_path / "out" / records.shard_name("val", 0, 1))
    # In a shard, records are in order of id: "a.mp4@0-10" before "a.mp4@0.5-1.3".
    whole, first = (records.parse_clip(r) for r in tf.data.TFRecordDataset(shard))
    assert int(first["start_us"]) == 500_000 and int(first["end_us"]) == 1_300_000
    frames = tf.map_fn(tf.io.decode_jpeg, first["frames"], fn_output_signature=tf.uint8).numpy()
    assert source_frames(frames) == [13, 16, 18, 21, 23, 26, 28, 31]
    # The CSV's end lies past the video: the record says where the clip really ends.
    assert int(whole["end_us"]) == 2_400_000 and len(whole["frames"]) == 24
    with pytest.raises(ValueError, match=r"dmvr_bad.csv:2: DMVR rows need numeric 'start'"):
        bad = tmp_path / "dmvr_bad.csv"
        bad.write_text("video_path,start,end,label\na.mp4,,1,zumba\n")
        writer.csv_entries(bad, tmp_path, CLASS_LIST)


def test_report_names_ties_between_classes():
    report = {"shards": [], "records": 0, "good": 0, "bad": 0, "bad_by_reason": {}, "frames": None,
              "frame_size": None, "num_classes": 3}
    text = doctor.format_report({**report, "class_histogram": {"0": 24, "1": 24}})
    assert "classes: 2 of 3 with good records; 24 each" in text
    text = doctor.format_report({**report, "class_histogram": {"0": 5, "1": 9, "2": 5}})
    assert "fewest: labels 0, 2 (5), most: label 1 (9)" in text
