"""tf.data pipelines over DMVR records: shapes, views, determinism, hosts, padding."""

import numpy as np
import pytest
import tensorflow as tf

from uniformerv2_jax.input import pipeline, records, sampling


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


def labels_seen(ds):
    seen = []
    for batch in ds:
        seen += batch["label"].numpy()[batch["mask"].numpy()].tolist()
    return seen


@pytest.mark.parametrize("num_files, hosts", [(4, 2), (1, 2), (4, 3)])
def test_every_video_is_evaluated_exactly_once_across_hosts(tmp_path, num_files, hosts):
    files = write_videos(tmp_path, num_files, videos_per_file=12 // num_files, num_frames=8)
    seen, per_host = [], []
    for host in range(hosts):
        ds = pipeline.eval_dataset(files, batch_size=5, clip_frames=4, crop_size=32,
                                   num_clips=1, num_crops=1, process_index=host,
                                   process_count=hosts)
        labels = labels_seen(ds)
        per_host.append(labels)
        seen += labels
    assert sorted(seen) == list(range(12))
    assert all(per_host)  # no host without data, even with fewer files than hosts


def test_hosts_read_disjoint_files_covering_all():
    files = [f"f{i}" for i in range(5)]
    parts = [pipeline.host_shard(files, h, 2) for h in range(2)]
    assert parts[0] == (["f0", "f2", "f4"], False) and parts[1] == (["f1", "f3"], False)
    assert pipeline.host_shard(files[:1], 1, 2) == (["f0"], True)
    with pytest.raises(FileNotFoundError):
        pipeline.host_shard([], 0, 1)
