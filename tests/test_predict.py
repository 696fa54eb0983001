"""main.py predict: any common container, the official test views, top-5 class names."""

import subprocess
import sys

import av
import jax
import numpy as np
import pytest
from helpers import ROOT, tiny_fields

from uniformerv2_jax import labels, predict
from uniformerv2_jax.convert.saved import save_converted
from uniformerv2_jax.input import synthetic
from uniformerv2_jax.model import UniFormerV2

CLASSES = ["rising", "falling", "spinning", "waving", "standing", "sitting", "jumping"]


def write(path, video, codec, fps=16):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = UniFormerV2(**tiny_fields(num_classes=len(CLASSES)))
    video = np.zeros((1, 4, 32, 32, 3), np.float32)
    variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), video))
    directory = save_converted(root / "model", model, variables)
    names = root / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    clip = synthetic.render_clip(0, np.random.default_rng(0), frames=24, size=48)
    files = {}
    for suffix, codec in ((".mp4", "libx264"), (".webm", "libvpx-vp9"), (".avi", "mpeg4")):
        files[suffix] = root / f"clip{suffix}"
        write(files[suffix], clip, codec)
    return model, variables, directory, names, files


def test_views_and_probabilities_match_a_per_view_computation(converted):
    model, variables, _, _, files = converted
    views = predict.video_views(files[".mp4"], clip_frames=4, crop_size=32, num_clips=2, num_crops=3)
    assert views.shape == (6, 4, 32, 32, 3)
    probs = predict.predict(model, variables, views)
    by_hand = np.mean([jax.nn.softmax(model.apply(variables, v[None]))[0] for v in views], axis=0)
    np.testing.assert_allclose(probs, by_hand, atol=1e-6)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_every_common_container_decodes_to_nearly_the_same_prediction(converted):
    model, variables, _, _, files = converted
    probs = {s: predict.predict(model, variables, predict.video_views(
        f, clip_frames=4, crop_size=32, num_clips=1, num_crops=3)) for s, f in files.items()}
    # Lossy codecs: close, not equal. Not float32 noise: PyAV's own decoders give the same
    # pixels on any CPU, so the bound is a choice (a twentieth of probability), not a floor.
    for suffix in (".webm", ".avi"):
        np.testing.assert_allclose(probs[suffix], probs[".mp4"], atol=0.05)


@pytest.mark.e2e
def test_predict_command_prints_the_top_5_class_names(converted):
    model, variables, directory, names, files = converted
    out = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "predict", f"--checkpoint={directory}",
         f"--video={files['.mp4']}", f"--class_names={names}", "--num_clips=2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = predict.predict(model, variables, predict.video_views(
        files[".mp4"], clip_frames=4, crop_size=32, num_clips=2, num_crops=3))
    lines = out.stdout.strip().splitlines()[-5:]
    assert [line.split(None, 1)[1] for line in lines] == [CLASSES[i] for i in np.argsort(-expected)[:5]]


def test_unreadable_videos_and_wrong_class_lists_are_named(converted, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(ValueError, match="broken.mp4: cannot decode"):
        predict.video_views(bad, clip_frames=4, crop_size=32, num_clips=1, num_crops=1)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        predict.video_views(tmp_path / "missing.mp4", clip_frames=4, crop_size=32, num_clips=1,
                            num_crops=1)
    with pytest.raises(ValueError, match="lists 7 classes, the model has 3"):
        labels.class_names_for(3, converted[3])


def test_probabilities_average_the_official_models_softmax_over_views(tiny_a_config):
    """The views of one video are the official fixture's clips: the prediction must be the
    mean of the softmax of the official logits (computed by the official PyTorch code)."""
    from uniformerv2_jax import from_official

    fixtures = ROOT / "data" / "fixtures"
    data = np.load(fixtures / "tiny_a.npz")
    model, variables = from_official(fixtures / "tiny_a.safetensors", config=tiny_a_config)
    views = np.transpose(data["input"], (0, 2, 3, 4, 1))  # (views, T, H, W, 3)
    logits = data["logits_f64"]
    expected = np.mean(np.exp(logits - logits.max(-1, keepdims=True))
                       / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(predict.predict(model, variables, views), expected, atol=2e-6)
