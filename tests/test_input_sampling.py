"""Frame sampling against the official formulas, transcribed independently in NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from uniformerv2_jax.input import sampling


def official_segments(num_frames: int, clip_frames: int):
    seg = max(0.0, (num_frames - 1) / clip_frames)
    return seg, [(int(np.round(seg * i)), int(np.round(seg * (i + 1)))) for i in range(clip_frames)]


@pytest.mark.parametrize("num_frames", [1, 5, 8, 9, 17, 100, 251])
@pytest.mark.parametrize("clip_frames", [8, 16])
def test_test_views_equal_the_official_indices(num_frames, clip_frames):
    seg, bounds = official_segments(num_frames, clip_frames)
    for num_clips in (1, 2, 4):
        for clip in range(num_clips):
            expected = [min(start + int(seg / (num_clips + 1) * (clip + 1)), num_frames - 1)
                        for start, _ in bounds]
            got = sampling.sparse_test_indices(tf.constant(num_frames), clip_frames, clip, num_clips)
            assert got.numpy().tolist() == expected, (num_frames, clip_frames, clip, num_clips)


@pytest.mark.parametrize("num_frames", [3, 8, 30, 250])
def test_training_frames_fall_in_their_segments_and_cover_them(num_frames):
    clip_frames = 8
    _, bounds = official_segments(num_frames, clip_frames)
    seen = [set() for _ in range(clip_frames)]
    for s in range(300):
        got = sampling.sparse_train_indices(tf.constant(num_frames), clip_frames,
                                            tf.constant([s, 1])).numpy()
        for i, index in enumerate(got):
            low, high = bounds[i]
            assert low <= index <= min(high, num_frames - 1)
            seen[i].add(int(index))
    for i, (low, high) in enumerate(bounds):  # every allowed frame is drawn
        assert seen[i] == set(range(low, min(high, num_frames - 1) + 1))


def test_training_sampling_is_deterministic_given_the_seed():
    a = sampling.sparse_train_indices(tf.constant(100), 8, tf.constant([3, 4]))
    b = sampling.sparse_train_indices(tf.constant(100), 8, tf.constant([3, 4]))
    np.testing.assert_array_equal(a, b)


def test_dense_sampling_wraps_short_videos_and_spreads_test_clips():
    got = sampling.dense_indices(tf.constant(5), 4, 2, tf.constant(1)).numpy().tolist()
    assert got == [1, 3, 0, 2]
    offsets = sampling.dense_test_offsets(tf.constant(100), 8, 2, 4).numpy().tolist()
    assert offsets == [int(x) for x in np.linspace(0, 100 - 16, 4)]
    for s in range(50):
        offset = int(sampling.dense_train_offset(tf.constant(20), 8, 2, tf.constant([s, 0])))
        assert 0 <= offset < 20 - 7 * 2
