"""Fuzzing the two parsers users feed files to: DMVR records and official checkpoints.

Random byte flips and truncations must end in a counted skip or a clear error; never a
crash of another kind, never a hang.
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniformerv2_jax.convert.io import WeightFileError, read_state_dict
from uniformerv2_jax.convert.mapping import CheckpointMismatchError
from uniformerv2_jax.convert.official import infer_official_kwargs, official_to_variables, strip_prefixes
from uniformerv2_jax.input import pipeline, records, sources
from uniformerv2_jax.presets import model_from_official_kwargs

FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def good_record(label):
    frames = [tf.io.encode_jpeg(tf.fill((24, 24, 3), tf.constant(40 * i, tf.uint8))).numpy()
              for i in range(6)]
    return records.encode_clip(frames, label, f"class{label}", f"video{label}.mp4")


def mutate(data: bytes, flips, cut):
    data = bytearray(data)
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data[: max(1, int(len(data) * cut))])


def eval_rows(path):
    ds = pipeline.eval_dataset([str(path)], batch_size=2, clip_frames=4, crop_size=16,
                               num_clips=1, num_crops=1, num_classes=3, process_index=0,
                               process_count=1)
    good = bad = 0
    for batch in ds.as_numpy_iterator():
        good += int(batch["mask"].sum())
        bad += int(batch["bad"].sum())
    return good, bad


flips = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


@FUZZ
@given(flips=flips, cut=st.floats(0.0, 1.0))
def test_a_damaged_record_is_skipped_and_its_neighbours_kept(tmp_path, flips, cut):
    path = tmp_path / "shard.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(good_record(0))
        writer.write(mutate(good_record(1), flips, cut))
        writer.write(good_record(2))
    good, bad = eval_rows(path)
    assert good + bad == 3 and good >= 2  # the damaged record is good or counted bad


@FUZZ
@given(flips=flips, cut=st.floats(0.3, 1.0))
def test_a_damaged_shard_file_never_crashes_the_reader(tmp_path, flips, cut):
    path = tmp_path / "shard.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in range(3):
            writer.write(good_record(label))
    path.write_bytes(mutate(path.read_bytes(), flips, cut))
    good, bad = eval_rows(path)  # framing damage is counted, never the end of the run
    assert good + bad == sources.record_counts([str(path)])[str(path)]


@pytest.fixture(scope="module")
def official_state():
    return strip_prefixes(read_state_dict(ROOT / "data" / "fixtures" / "tiny_a.safetensors"))


CLEAR_ERRORS = (CheckpointMismatchError, WeightFileError, ValueError)


@FUZZ
@given(data=st.data())
def test_a_mangled_state_dict_fails_clearly_or_loads(official_state, data):
    state = dict(official_state)
    keys = sorted(state)
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(keys))
        action = data.draw(st.sampled_from(["drop", "reshape", "junk", "transpose", "scalar"]))
        if action == "drop":
            state.pop(key, None)
        elif action == "reshape" and key in state:
            state[key] = state[key].reshape(-1)[: max(1, state[key].size - 1)]
        elif action == "junk":
            state[f"{key}.extra"] = np.zeros(3, np.float32)
        elif action == "transpose" and key in state:
            state[key] = state[key].T
        elif action == "scalar" and key in state:
            state[key] = np.float32(1.0)
    try:
        model = model_from_official_kwargs(**{"heads": 2, **infer_official_kwargs(state)})
        official_to_variables(model, state)
    except CLEAR_ERRORS as e:
        assert str(e)


@FUZZ
@given(flips=flips, cut=st.floats(0.0, 1.0))
def test_a_damaged_safetensors_file_is_refused_clearly(tmp_path, flips, cut):
    source = (ROOT / "data" / "fixtures" / "tiny_a.safetensors").read_bytes()
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(mutate(source, flips, cut))
    try:
        read_state_dict(path)
    except CLEAR_ERRORS as e:
        assert str(e)


def test_a_frame_declaring_a_huge_size_is_a_counted_bad_record(tmp_path):
    """A JPEG whose header claims 60000 x 60000 pixels (10 GB decoded) is never decoded."""
    frames = [bytearray(tf.io.encode_jpeg(tf.zeros((24, 24, 3), tf.uint8)).numpy()) for _ in range(6)]
    sof = frames[2].find(b"\xff\xc0")
    frames[2][sof + 5: sof + 9] = (60000).to_bytes(2, "big") * 2
    assert tf.io.extract_jpeg_shape(bytes(frames[2])).numpy()[:2].tolist() == [60000, 60000]
    path = tmp_path / "shard.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(good_record(0))
        writer.write(records.encode_clip([bytes(f) for f in frames], 1, "class1", "huge.mp4"))
    assert eval_rows(path) == (1, 1)
