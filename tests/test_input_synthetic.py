"""The synthetic task: its classes differ only in the order of frames."""

import numpy as np

from uniformerv2_jax.input import synthetic


def clips(n_per_class, seed, frames=16, size=32):
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for _ in range(n_per_class):
        for label in range(len(synthetic.CLASSES)):
            videos.append(synthetic.render_clip(label, rng, frames, size))
            labels.append(label)
    return np.stack(videos).astype(np.float32), np.array(labels)


def ridge_accuracy(train_x, train_y, test_x, test_y):
    """One-vs-rest ridge regression: an independent linear probe."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    targets = np.eye(len(synthetic.CLASSES))[train_y]
    weights = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ targets)
    return float(((b @ weights).argmax(1) == test_y).mean())


def pooled(videos, size=8):
    """Frames downsampled to size x size, (N, T, size*size*3)."""
    n, t, h, w, c = videos.shape
    return videos.reshape(n, t, size, h // size, size, w // size, c).mean((3, 5)).reshape(n, t, -1)


def test_frame_averaged_and_single_frame_features_are_at_chance():
    train_x, train_y = clips(120, seed=0)
    test_x, test_y = clips(60, seed=1)
    features_train, features_test = pooled(train_x), pooled(test_x)
    averaged = ridge_accuracy(features_train.mean(1), train_y, features_test.mean(1), test_y)
    # A single-frame model sees a frame without knowing when it was taken.
    rng = np.random.default_rng(2)
    pick = lambda f: f[np.arange(len(f)), rng.integers(0, f.shape[1], len(f))]  # noqa: E731
    single = ridge_accuracy(pick(features_train), train_y, pick(features_test), test_y)
    assert averaged < 0.6 and single < 0.6  # chance is 0.5
    # The same probe given the frames' order (first half minus second half) solves it.
    halves = lambda f: f[:, :8].mean(1) - f[:, 8:].mean(1)  # noqa: E731
    ordered = ridge_accuracy(halves(features_train), train_y, halves(features_test), test_y)
    assert ordered > 0.9


def test_the_classes_are_time_reversals_of_each_other():
    """Brightness over time: one class's curve is the other's, reversed."""
    videos, labels = clips(150, seed=4)
    curves = [videos[labels == k].mean(axis=(0, 2, 3, 4)) for k in range(2)]  # (T,) each
    np.testing.assert_allclose(curves[0][::-1], curves[1], atol=1.5)
    assert curves[0][0] + 5 < curves[0][-1]  # brightening clips do get brighter


def test_clips_are_valid_videos_with_motion():
    video = synthetic.render_clip(0, np.random.default_rng(3), frames=16, size=32)
    assert video.shape == (16, 32, 32, 3) and video.dtype == np.uint8
    assert not np.array_equal(video[0], video[4])
