"""Video features: the API's intermediates, and main.py features over videos and records."""

import functools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    LOGITS_ATOL,
    ROOT,
    TOKENS_ATOL,
    random_video,
    randomize,
    tiny_fields,
    write_synthetic_records,
)
from safetensors.numpy import load_file

from uniformerv2_jax import predict
from uniformerv2_jax.convert.saved import save_converted
from uniformerv2_jax.feature_job import Settings, extract
from uniformerv2_jax.features import features
from uniformerv2_jax.input import pipeline, records, synthetic, transforms, writer
from uniformerv2_jax.input.windows import Sampling
from uniformerv2_jax.model import UniFormerV2, layer_layout


def test_features_are_the_models_intermediates_with_and_without_scan():
    model = UniFormerV2(**tiny_fields(temporal_downsample=True))
    video = random_video(model)
    variables = nn.unbox(randomize(jax.eval_shape(model.init, jax.random.key(0), video)))
    out = features(model, variables, video, patch_tokens=True)
    assert np.array_equal(out["logits"], model.apply(variables, video))
    # head_input is what head_norm and the head turn into the logits.
    norm = nn.LayerNorm(epsilon=1e-5).apply({"params": variables["params"]["head_norm"]},
                                            out["head_input"])
    head = variables["params"]["head"]
    np.testing.assert_allclose(norm @ head["kernel"] + head["bias"], out["logits"], atol=LOGITS_ATOL)
    n, t, c = 2, model.t_size // 2, model.width  # stride 2 in time
    assert {k: v.shape for k, v in out.items()} == {
        **{f"layer_{i}/cls": (n, t, c) for i in range(3)},
        **{f"layer_{i}/patches": (n, t, 16, c) for i in range(3)},
        "layer_1/query": (n, c), "layer_2/query": (n, c), "head_input": (n, c), "logits": (n, 5)}

    scanned = UniFormerV2(**tiny_fields(temporal_downsample=True, scan=True))
    stacked = {k: layer_layout(scanned, v, stacked=True) for k, v in variables.items()}
    out_scan = jax.jit(functools.partial(features, scanned, patch_tokens=True))(stacked, video)
    assert out_scan.keys() == out.keys()
    for key in out:
        np.testing.assert_allclose(out_scan[key], out[key], atol=TOKENS_ATOL, err_msg=key)
    assert set(jax.eval_shape(functools.partial(features, scanned, layers=[1]), stacked, video)) == {
        "layer_1/cls", "layer_1/query", "head_input", "logits"}
    with pytest.raises(ValueError, match=r"layers=\[3\]"):
        features(model, variables, video, layers=[3])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    model = UniFormerV2(**tiny_fields())
    video = np.zeros((1, 4, 32, 32, 3), np.float32)
    variables = jax.tree.map(np.asarray, nn.unbox(randomize(jax.eval_shape(model.init, jax.random.key(0),
                                                                       video))))
    return model, variables, save_converted(root / "model", model, variables)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """long.mp4: 32 frames at 16 fps (2 s, 40x48); a/short.mp4: 20 frames (1.25 s); b/broken.mp4."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    (root / "a").mkdir()
    (root / "b").mkdir()
    synthetic.write_video(root / "long.mp4", synthetic.render_clip(0, rng, 32, 48)[:, 4:44], fps=16)
    synthetic.write_video(root / "a" / "short.mp4", synthetic.render_clip(1, rng, 20, 48), fps=16)
    (root / "b" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    return root


def run_cli(*args):
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "features", *map(str, args)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_sliding_windows_of_a_video_folder_resume_to_the_same_files(converted, videos, tmp_path):
    model, variables, directory = converted
    out = tmp_path / "out"
    args = [f"--checkpoint={directory}", f"--videos={videos}", f"--out={out}",
            "--window_seconds=1", "--stride_seconds=0.5", "--chunk_size=1"]
    stdout = run_cli(*args)
    assert "3 videos (0 of 3 chunks kept" in stdout and "2 written, 1 failed" in stdout
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    failures = json.loads((out / "failures.json").read_text())
    assert [r["video"] for r in index] == ["long.mp4", "a/short.mp4"]
    assert [f["video"] for f in failures] == ["b/broken.mp4"] and "InvalidData" in failures[0]["error"]
    long, short = index
    assert (long["windows"], long["start"], long["end"]) == (3, [0.0, 0.5, 1.0], [1.0, 1.5, 2.0])
    assert (long["label"], short["label"], short["label_text"]) == (None, 0, "a")
    assert (short["windows"], short["start"], short["end"]) == (1, [0.0], [1.0])
    feats = np.load(out / long["file"])
    assert feats.shape == (3, model.width) and long["shapes"] == {"head_input": [3, model.width]}

    # Window 1 (0.5-1.5 s) is frames 8..23; the eval sampler's 4 of its 16 frames, by hand:
    # seg 15/4, round(seg * i) = 0, 4, 8, 11, plus the centre offset int(seg / 2) = 1.
    frames = writer.read_video(str(videos / "long.mp4"), fps=16, short_side=32).frames[[9, 13, 17, 20]]
    view = transforms.normalize(transforms.spatial_crop(
        transforms.resize_short_side(tf.constant(frames), 32), 32, 1))
    expected = features(model, variables, view.numpy()[None])["head_input"][0]
    np.testing.assert_allclose(feats[1], expected, atol=TOKENS_ATOL)

    # A run killed before chunk 1 finished: its part, its file and the index are missing.
    before = tree_bytes(out)
    written = (out / long["file"]).stat().st_mtime_ns
    for name in ("parts/chunk-00001-of-00003.jsonl", short["file"], "index.jsonl"):
        (out / name).unlink()
    assert "(2 of 3 chunks kept" in run_cli(*args)
    assert tree_bytes(out) == before
    assert (out / long["file"]).stat().st_mtime_ns == written  # finished chunks are not redone
    with pytest.raises(ValueError, match="other settings"):
        extract(predict.load_trained(directory),
                Settings(str(directory), str(videos), None, ("logits",), Sampling(4, 32)), out)
    with pytest.raises(ValueError, match="--stride_seconds"):
        Settings(str(directory), str(videos), None, ("logits",), Sampling(4, 32, stride_seconds=1))
    with pytest.raises(ValueError, match="--feature='layer_0/query'"):
        extract(predict.load_trained(directory),
                Settings(str(directory), str(videos), None, ("layer_0/query",), Sampling(4, 32)), out)


def test_records_keep_views_and_several_features(converted, tmp_path):
    model, variables, directory = converted
    pattern = write_synthetic_records(tmp_path / "records", per_class=2, seed=3, num_shards=1)
    bad = tmp_path / "records" / records.shard_name("clips-bad", 0, 1)
    with tf.io.TFRecordWriter(str(bad)) as shard:
        shard.write(records.encode_clip([b"\xff\xd8 not a jpeg"], 0, "x"))  # a broken frame
        jpeg = tf.io.encode_jpeg(np.zeros((32, 32, 3), np.uint8)).numpy()
        shard.write(records.encode_clip([jpeg] * 6, [], "", "unlabelled.mp4", 0, 2_000_000))
    settings = Settings(str(directory), None, pattern, ("head_input", "logits"),
                        Sampling(4, 32, num_clips=2, num_crops=1), keep_views=True, chunk_size=4)
    report = extract(predict.load_trained(directory), settings, str(tmp_path / "out"))
    assert (report["videos"], report["written"], report["failed"]) == (6, 5, 1)
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [f["video"] for f in failures] == ["clips-bad-00000-of-00001.tfrecord/000000"]
    assert [r["label"] for r in index] == [0, 1, 0, 1, None]
    assert (index[4]["filename"], index[4]["end"]) == ("unlabelled.mp4", [2.0])  # 6 frames in 2 s
    assert index[0]["end"] == [1.6]  # 16 frames with no rate recorded: 10 fps assumed
    arrays = load_file(tmp_path / "out" / index[0]["file"])
    assert {k: v.shape for k, v in arrays.items()} == {"head_input": (1, 2, 32), "logits": (1, 2, 5)}

    # The same views as evaluation takes of that record.
    raw = next(iter(tf.data.TFRecordDataset(pattern.replace("*", "00000-of-00001.tfrecord"))))
    frames = records.parse_clip(raw)["frames"]
    views = pipeline.evaluation_views(16, lambda i: pipeline.decode_frames(frames, i), clip_frames=4,
                                      crop_size=32, num_clips=2, num_crops=1)
    expected = features(model, variables, views.numpy())
    for name in arrays:
        np.testing.assert_allclose(arrays[name][0], expected[name], atol=TOKENS_ATOL, err_msg=name)


@pytest.mark.parametrize("scan", [False, True])
def test_features_are_the_official_models_intermediates(golden, scan):
    """Against the official PyTorch forward of data/fixtures/tiny_a_layers: every layer's
    class and patch tokens, every global block's query, the fused head input."""
    from uniformerv2_jax import from_official

    data = np.load(golden / "tiny_a_layers.npz")
    args = json.loads((golden / "tiny_a_layers.json").read_text())["constructor_args"]
    model, variables = from_official(golden / "tiny_a_layers.safetensors", scan=scan, **args)
    video = np.transpose(data["input"], (0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
    out = jax.jit(functools.partial(features, model, patch_tokens=True))(variables, video)
    n, t = video.shape[:2]
    for i in range(model.layers):  # official block outputs: (L, N*T, C), class token first
        tokens = data["block_outputs"][i].transpose(1, 0, 2).reshape(n, t, -1, model.width)
        np.testing.assert_allclose(out[f"layer_{i}/cls"], tokens[:, :, 0], atol=TOKENS_ATOL)
        np.testing.assert_allclose(out[f"layer_{i}/patches"], tokens[:, :, 1:], atol=TOKENS_ATOL)
    for j, i in enumerate(model.return_list):
        np.testing.assert_allclose(out[f"layer_{i}/query"], data["dec_outputs"][j], atol=TOKENS_ATOL)
    np.testing.assert_allclose(out["head_input"], data["head_input"], atol=TOKENS_ATOL)
    np.testing.assert_allclose(out["logits"], data["logits"], atol=LOGITS_ATOL)
