"""The DMVR record format: our writer, the reader, and records written by hand."""

import numpy as np
import pytest
import tensorflow as tf

from uniformerv2_jax.input import records


def jpeg_frames(count: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth images so that JPEG round trips stay close.
    base = rng.integers(0, 255, (count, 3, 4, 3)).astype(np.uint8)
    frames = np.asarray(tf.image.resize(base, (24, 32), "bilinear")).astype(np.uint8)
    return [tf.io.encode_jpeg(f, quality=95).numpy() for f in frames], frames


def test_written_clip_reads_back_with_frames_labels_and_metadata():
    jpegs, frames = jpeg_frames(5)
    record = records.encode_clip(jpegs, 7, "juggling", "videos/a.mp4", 1_500_000, 4_000_000, 10.0)
    parsed = records.parse_clip(tf.constant(record))
    assert parsed["frames"].shape == (5,)
    decoded = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), parsed["frames"],
                        fn_output_signature=tf.uint8).numpy()
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert error.max() < 3  # JPEG at quality 95
    # Each decoded frame is closest to its own original: order and identity are kept.
    distance = np.abs(decoded[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert distance.argmin(axis=1).tolist() == list(range(5))
    assert int(parsed["label"]) == 7 and parsed["labels"].numpy().tolist() == [7]
    assert parsed["label_text"].numpy() == b"juggling"
    assert parsed["filename"].numpy() == b"videos/a.mp4"
    assert int(parsed["start_us"]) == 1_500_000 and int(parsed["end_us"]) == 4_000_000
    assert float(parsed["frame_rate"]) == 10.0


def test_a_record_written_by_hand_in_dmvr_layout_reads_back():
    """Independent of our writer: MediaSequence's label key, no frame rate, multi-label."""
    jpegs, _ = jpeg_frames(3, seed=1)
    example = tf.train.SequenceExample()
    example.context.feature["clip/label/index"].int64_list.value[:] = [4, 9]
    example.context.feature["clip/label/string"].bytes_list.value[:] = [b"surfing"]
    example.context.feature["video/filename"].bytes_list.value[:] = [b"b.webm"]
    example.context.feature["clip/start/timestamp"].int64_list.value[:] = [0]
    example.context.feature["clip/end/timestamp"].int64_list.value[:] = [10_000_000]
    frames = example.feature_lists.feature_list["image/encoded"]
    for jpeg in jpegs:
        frames.feature.add().bytes_list.value[:] = [jpeg]
    parsed = records.parse_clip(tf.constant(example.SerializeToString()))
    assert parsed["frames"].shape == (3,)
    assert int(parsed["label"]) == 4 and parsed["labels"].numpy().tolist() == [4, 9]
    assert parsed["label_text"].numpy() == b"surfing"
    assert float(parsed["frame_rate"]) == 0.0


def test_all_frames_packed_into_one_feature_is_rejected():
    jpegs, _ = jpeg_frames(3)
    example = tf.train.SequenceExample()
    example.context.feature["clip/label/index"].int64_list.value[:] = [1]
    example.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value[:] = jpegs
    with pytest.raises(tf.errors.InvalidArgumentError):
        records.parse_clip(tf.constant(example.SerializeToString()))


def test_shard_names():
    assert records.shard_name("train", 3, 128) == "train-00003-of-00128.tfrecord"
