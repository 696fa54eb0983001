"""tf.data pipelines over DMVR records: shapes, views, determinism, hosts, padding."""

import numpy as np
import pytest
import tensorflow as tf

from uniformerv2_jax.input import frame_headers, pipeline, records, sampling, sources


def write_videos(directory, num_files, videos_per_file, num_frames=20, size=(36, 48)):
    """Video v (label v) has frames whose pixels all equal 10 * frame index."""
    paths, label = [], 0
    for f in range(num_files):
        path = str(directory / records.shard_name("clips", f, num_files))
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(videos_per_file):
                jpegs = [tf.io.encode_jpeg(tf.fill((*size, 3), tf.constant(10 * i, tf.uint8))).numpy()
                         for i in range(num_frames)]
                writer.write(records.encode_clip(jpegs, label, f"class{label}"))
                label += 1
        paths.append(path)
    return paths


def frame_ids(video):
    """Back from normalised pixels to the frame index each frame came from."""
    pixels = np.asarray(video, np.float64) * 0.225 + 0.45
    return np.round(pixels.mean(axis=(-3, -2, -1)) * 255 / 10).astype(int)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("records"), num_files=4, videos_per_file=3)


def test_eval_views_use_the_official_test_frames_and_three_crops(shards):
    ds = pipeline.eval_dataset(shards, batch_size=4, clip_frames=8, crop_size=32,
                               num_clips=2, num_crops=3)
    batch = next(iter(ds))
    assert batch["video"].shape == (4, 6, 8, 32, 32, 3)
    ids = frame_ids(batch["video"][0])  # (views, T)
    for view in range(6):
        clip = view // 3
        expected = sampling.sparse_test_indices(tf.constant(20), 8, clip, 2).numpy()
        assert ids[view].tolist() == expected.tolist()


def test_train_batches_are_deterministic_given_the_seed(shards):
    def first(seed):
        ds = pipeline.train_dataset(shards, batch_size=3, clip_frames=4, crop_size=24, seed=seed)
        return next(iter(ds))

    a, b, c = first(0), first(0), first(1)
    assert a["video"].shape == (3, 4, 24, 24, 3) and a["video"].dtype == tf.float32
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["video"], c["video"])
    ids = frame_ids(a["video"][0])  # sparse sampling: one frame per segment, increasing
    assert all(np.diff(ids) > 0)


def labels_seen(batches):
    seen = []
    for batch in batches:
        seen += batch["label"].numpy()[batch["mask"].numpy()].tolist()
    return seen


@pytest.mark.parametrize("num_files, hosts", [(4, 2), (1, 2), (4, 3)])
def test_every_video_is_evaluated_exactly_once_across_hosts(tmp_path, num_files, hosts):
    files = write_videos(tmp_path, num_files, videos_per_file=12 // num_files, num_frames=8)
    steps = sources.eval_batches(files, batch_size=5, process_count=hosts)
    seen, per_host, lengths = [], [], []
    for host in range(hosts):
        ds = pipeline.eval_dataset(files, batch_size=5, clip_frames=4, crop_size=32,
                                   num_clips=1, num_crops=1, process_index=host,
                                   process_count=hosts, num_batches=steps)
        batches = list(ds)
        lengths.append(len(batches))
        labels = labels_seen(batches)
        per_host.append(labels)
        seen += labels
    assert sorted(seen) == list(range(12))
    assert all(per_host)  # no host without data, even with fewer files than hosts
    assert lengths == [steps] * hosts  # hosts stay in step
    assert steps == -(-max(len(p) for p in per_host) // 5)


def test_hosts_read_disjoint_files_covering_all(tmp_path):
    files = [f"f{i}" for i in range(5)]
    parts = [sources.host_shard(files, h, 2) for h in range(2)]
    assert parts[0] == (["f0", "f2", "f4"], False) and parts[1] == (["f1", "f3"], False)
    assert sources.host_shard(files[:1], 1, 2) == (["f0"], True)
    with pytest.raises(FileNotFoundError, match="no input files"):
        sources.host_shard([], 0, 1)
    with pytest.raises(FileNotFoundError, match="input file not found: .*missing.tfrecord"):
        pipeline.eval_dataset([str(tmp_path / "missing.tfrecord")], batch_size=1, clip_frames=4,
                              crop_size=8)


def bad_records_shard(directory):
    """One good clip (label 1) among every kind of bad record, then a truncated file."""
    good = [tf.io.encode_jpeg(tf.fill((20, 20, 3), tf.constant(10 * i, tf.uint8))).numpy()
            for i in range(6)]
    no_label = tf.train.SequenceExample()
    for jpeg in good:
        no_label.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value[:] = [jpeg]
    clips = [
        records.encode_clip(good, 1, "good", "good.mp4"),
        records.encode_clip([], 2, "empty", "empty.mp4"),
        records.encode_clip(good, 50, "out of range", "range.mp4"),
        records.encode_clip(good[:3] + [good[3][: len(good[3]) // 2]] + good[4:], 3, "", "cut.mp4"),
        records.encode_clip(good[:2] + [b"not a jpeg"], 4, "", "garbage.mp4"),
        no_label.SerializeToString(),
    ]
    path = directory / "bad-00000-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for clip in clips:
            writer.write(clip)
    truncated = directory / "bad-00001-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(truncated)) as writer:
        writer.write(records.encode_clip(good, 5, "lost", "lost.mp4"))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    return [str(path), str(truncated)]


def test_bad_records_are_skipped_and_counted(tmp_path):
    files = bad_records_shard(tmp_path)
    ds = pipeline.eval_dataset(files, batch_size=4, clip_frames=4, crop_size=20, num_clips=1,
                               num_crops=1, num_classes=10)
    batches = list(ds)
    assert labels_seen(batches) == [1]
    # 7 records: 1 good, 5 bad in the first shard, and the second shard's one, lost to its
    # damaged framing: good + bad = all.
    assert sum(int(b["bad"].numpy().sum()) for b in batches) == 6
    train = pipeline.train_dataset(files, batch_size=2, clip_frames=4, crop_size=16, seed=0,
                                   num_classes=10, shuffle_buffer=4)
    batch = next(iter(train))
    assert batch["label"].numpy().tolist() == [1, 1]


def test_training_counts_records_that_fail_before_their_check(tmp_path):
    """Records that do not parse, or whose frame headers cannot be read (a JPEG with start
    and end markers but no frame header, a PNG cut inside its header), never reach the
    validity check; training still counts them in ``skipped``, as every other bad record."""
    good = [tf.io.encode_jpeg(tf.fill((20, 20, 3), tf.constant(30 * i, tf.uint8))).numpy()
            for i in range(4)]
    no_frame_header = b"\xff\xd8" + bytes(64) + b"\xff\xd9"
    short_png = b"\x89PNG\r\n\x1a\n" + bytes(4)
    path = tmp_path / "early-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in [records.encode_clip(good[:2] + [no_frame_header], 0, "", "sof.mp4"),
                       b"not a SequenceExample",
                       records.encode_clip(good, 1, "good", "a.mp4"),
                       records.encode_clip([short_png] + good, 0, "", "png.mp4"),
                       records.encode_clip(good[:2], 50, "", "range.mp4"),
                       records.encode_clip(good, 2, "good", "b.mp4")]:
            writer.write(record)
    train = pipeline.train_dataset([str(path)], batch_size=2, clip_frames=2, crop_size=16, seed=0,
                                   num_classes=10, shuffle_buffer=0)
    batch = next(iter(train))
    assert batch["label"].numpy().tolist() == [1, 2]
    assert batch["skipped"].numpy().tolist() == [2, 4]


def test_bad_records_can_stop_the_run_naming_the_shard(tmp_path):
    files = bad_records_shard(tmp_path)[:1]
    ds = pipeline.eval_dataset(files, batch_size=4, clip_frames=4, crop_size=20, num_clips=1,
                               num_crops=1, num_classes=10, on_bad_record="raise")
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad record in.*bad-00000-of-00002.*empty.mp4"):
        list(ds)
    with pytest.raises(ValueError, match="on_bad_record"):
        pipeline.eval_dataset(files, batch_size=1, clip_frames=4, crop_size=20, on_bad_record="drop")


def test_train_batches_carry_soft_targets_with_mixup(shards):
    ds = pipeline.train_dataset(shards, batch_size=4, clip_frames=4, crop_size=24, seed=0,
                                num_classes=12, mixup_alpha=0.8, cutmix_alpha=1.0,
                                label_smoothing=0.1, randaugment_spec="rand-m7-n4-mstd0.5-inc1",
                                dtype=tf.bfloat16)
    batch = next(iter(ds))
    assert batch["video"].dtype == tf.bfloat16
    assert batch["targets"].shape == (4, 12)
    np.testing.assert_allclose(batch["targets"].numpy().sum(1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="need num_classes"):
        pipeline.train_dataset(shards, batch_size=4, clip_frames=4, crop_size=24, seed=0,
                               mixup_alpha=0.8)


class TinyVideos:
    """A TFDS dataset built here (no download): video i has frames filled with 10 * i."""

    @staticmethod
    def build(data_dir):
        import tensorflow_datasets as tfds

        class TinyVideoDataset(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "video": tfds.features.Video(shape=(None, 20, 28, 3)),
                    "label": tfds.features.ClassLabel(num_classes=6)}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i in range(6):
                    yield i, {"video": np.full((9, 20, 28, 3), 10 * i, np.uint8), "label": i}

        builder = TinyVideoDataset(data_dir=str(data_dir))
        builder.download_and_prepare()
        return builder.name


def test_tfds_datasets_go_through_the_same_pipeline(tmp_path):
    name = TinyVideos.build(tmp_path)
    source = sources.TFDSSource(name, "train", data_dir=str(tmp_path))
    seen = []
    steps = sources.eval_batches(source, batch_size=2, process_count=2)
    assert steps == 2  # 3 videos per host
    for host in range(2):
        ds = pipeline.eval_dataset(source, batch_size=2, clip_frames=4, crop_size=16,
                                   num_clips=2, num_crops=3, process_index=host, process_count=2,
                                   num_batches=steps)
        batches = list(ds)
        assert len(batches) == steps
        for batch in batches:
            assert batch["video"].shape == (2, 6, 4, 16, 16, 3)
            for video, label, mask in zip(batch["video"], batch["label"], batch["mask"]):
                if mask:
                    assert (frame_ids(video) == int(label)).all()  # frames carry 10 * label
                    seen.append(int(label))
    assert sorted(seen) == list(range(6))
    train = pipeline.train_dataset(source, batch_size=3, clip_frames=4, crop_size=16, seed=0)
    assert next(iter(train))["video"].shape == (3, 4, 16, 16, 3)


def test_train_stream_resumes_exactly_after_any_batch(shards):
    """12 clips, batch 5: batches cross epoch ends; a restart from (epoch, position + 1) of
    the last consumed example continues with the very same batches (videos, labels, mixes)."""
    kwargs = dict(batch_size=5, clip_frames=4, crop_size=16, seed=3, shuffle_buffer=8,
                  num_classes=12, mixup_alpha=0.8, repeated_augment=2)
    full = list(pipeline.train_dataset(shards, **kwargs).take(7).as_numpy_iterator())
    # Each epoch holds every clip twice (repeated augmentation), in a new order per epoch.
    epochs = np.concatenate([b["epoch"] for b in full])
    first_epoch = np.concatenate([b["label"] for b in full])[epochs == 0]
    assert sorted(first_epoch.tolist()) == sorted(list(range(12)) * 2)
    assert not np.array_equal(first_epoch, np.concatenate([b["label"] for b in full])[epochs == 1][:24])
    for k in (1, 4):  # batch 4 ends inside epoch 1
        start = (int(full[k]["epoch"][-1]), int(full[k]["position"][-1]) + 1)
        resumed = list(pipeline.train_dataset(shards, start=start, **kwargs).take(7 - k - 1)
                       .as_numpy_iterator())
        for a, b in zip(full[k + 1:], resumed):
            for key in ("video", "targets", "label", "epoch", "position"):
                np.testing.assert_array_equal(a[key], b[key])


def jpeg_with_undefined_huffman_table(jpeg: bytes) -> bytes:
    """A JPEG whose scan selects Huffman table 3, which it never defines: its header still
    parses (and ends in EOI), its pixels do not."""
    out, i = bytearray(jpeg), 2
    while i < len(out):
        marker, length = out[i + 1], int.from_bytes(out[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: Ns, then (component, DC/AC table) pairs
            for c in range(out[i + 4]):
                out[i + 6 + 2 * c] = 0x33
            return bytes(out)
        i += 2 + length
    raise ValueError("no start of scan")


def test_frames_that_pass_the_header_check_but_do_not_decode_are_counted(tmp_path):
    """good + bad = all records, in evaluation (``bad``) and training (``skipped``)."""
    frame = tf.fill((24, 32, 3), tf.constant(90, tf.uint8))
    jpeg, png = tf.io.encode_jpeg(frame).numpy(), tf.io.encode_png(frame).numpy()
    no_tables, cut_png = jpeg_with_undefined_huffman_table(jpeg), png[: len(png) // 2]
    assert tf.io.extract_jpeg_shape(no_tables).numpy().tolist() == [24, 32, 3]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(no_tables)
    clips = [records.encode_clip([jpeg] * 6, 0, "good"),
             records.encode_clip([cut_png] * 6, 1, "truncated png"),
             records.encode_clip([jpeg] * 6, 0, "good"),
             records.encode_clip([no_tables] * 6, 1, "undefined huffman table"),
             records.encode_clip([jpeg] * 6, 0, "good")]
    path = str(tmp_path / records.shard_name("undecodable", 0, 1))
    with tf.io.TFRecordWriter(path) as writer:
        for clip in clips:
            writer.write(clip)
    batches = list(pipeline.eval_dataset([path], batch_size=2, clip_frames=4, crop_size=16,
                                         num_clips=1, num_crops=1, num_classes=2))
    good = sum(int(b["mask"].numpy().sum()) for b in batches)
    bad = sum(int(b["bad"].numpy().sum()) for b in batches)
    assert (good, bad) == (3, 2)
    train = pipeline.train_dataset([path], batch_size=1, clip_frames=4, crop_size=16, seed=0,
                                   num_classes=2, shuffle_buffer=1)
    epoch0 = [b for b in train.take(4).as_numpy_iterator() if b["epoch"][0] == 0]
    assert [int(b["position"][0]) for b in epoch0] == [0, 2, 4]  # the bad ones never arrive
    assert [int(b["skipped"][0]) for b in epoch0] == [0, 1, 2]  # ... but are counted


def test_a_shard_truncated_without_a_counts_file_is_counted_and_named(tmp_path, caplog):
    frame = tf.io.encode_jpeg(tf.zeros((8, 8, 3), tf.uint8)).numpy()
    path = tmp_path / records.shard_name("cut", 0, 1)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in range(4):
            writer.write(records.encode_clip([frame] * 4, label, "x"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 5 // 8])  # inside the third record
    with caplog.at_level("WARNING"):
        counts = sources.record_counts([str(path)])
    assert counts == {str(path): 3}  # 2 readable + the damaged tail, one bad record
    assert f"{path}: framing damaged after 2 readable records" in caplog.text
    batches = list(pipeline.eval_dataset([str(path)], batch_size=2, clip_frames=2, crop_size=8,
                                         num_clips=1, num_crops=1, num_classes=4))
    assert sum(int(b["mask"].numpy().sum()) for b in batches) == 2
    assert sum(int(b["bad"].numpy().sum()) for b in batches) == 1


def encoded_frames(frame):
    """One frame in every encoding a record may hold: JPEG 4:2:0 (TF's default), 4:4:4,
    progressive, 4:2:2 and progressive 4:2:0 (PIL's encoder), greyscale JPEG, PNG."""
    import io

    from PIL import Image

    def pil(subsampling, progressive):
        out = io.BytesIO()
        Image.fromarray(frame).save(out, "JPEG", quality=90, subsampling=subsampling,
                                    progressive=progressive)
        return out.getvalue()

    return [tf.io.encode_jpeg(frame, quality=90).numpy(),
            tf.io.encode_jpeg(frame, quality=90, chroma_downsampling=False).numpy(),
            tf.io.encode_jpeg(frame, quality=90, progressive=True).numpy(),
            pil(1, False), pil(2, True), tf.io.encode_jpeg(frame[..., :1]).numpy(),
            tf.io.encode_png(frame).numpy()]


@pytest.mark.parametrize("h, w", [(256, 340), (97, 131)])
def test_decoding_only_the_crop_window_gives_the_pixels_of_decoding_all(h, w):
    rng = np.random.default_rng(h)
    blocks = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    frame = np.clip(blocks + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    frames = tf.constant(encoded_frames(frame))
    indices = tf.range(tf.size(frames))
    size = frame_headers.frame_size(frames[0])
    assert size.numpy().tolist() == [h, w] and frame_headers.frame_size(frames[-1]).numpy().tolist() == [h, w]
    whole = pipeline.decode_frames(frames, indices).numpy()
    windows = [[0, 0, h, w], [0, w - 9, h, 9], [h - 5, 0, 5, w]]  # the frame's edges
    windows += [[int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8)), 0, 0] for _ in range(30)]
    for top, left, height, width in windows:
        height = height or int(rng.integers(1, h - top + 1))
        width = width or int(rng.integers(1, w - left + 1))
        cut = pipeline.decode_window(frames, indices, size, tf.constant([top, left, height, width]))
        np.testing.assert_array_equal(cut.numpy(), whole[:, top:top + height, left:left + width])


def test_a_video_with_frames_of_different_sizes_is_skipped_and_counted(tmp_path):
    def frames(h, w):
        return [tf.io.encode_jpeg(tf.fill((h, w, 3), tf.constant(60, tf.uint8))).numpy()] * 4

    path = str(tmp_path / records.shard_name("sizes", 0, 1))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(records.encode_clip(frames(24, 32)[:2] + frames(30, 40)[:2], 1, "mixed", "mixed.mp4"))
        writer.write(records.encode_clip(frames(24, 32), 0, "good"))
    train = pipeline.train_dataset([path], batch_size=1, clip_frames=4, crop_size=16, seed=0,
                                   num_classes=2, shuffle_buffer=1)
    first = [b for b in train.take(2).as_numpy_iterator() if b["epoch"][0] == 0]
    assert [(int(b["label"][0]), int(b["position"][0]), int(b["skipped"][0])) for b in first] == [(0, 1, 1)]
    strict = pipeline.train_dataset([path], batch_size=1, clip_frames=4, crop_size=16, seed=0,
                                    num_classes=2, shuffle_buffer=1, on_bad_record="raise")
    with pytest.raises(tf.errors.InvalidArgumentError, match="different sizes in video.*mixed.mp4"):
        list(strict.take(2))
