"""The DMVR record format: one ``tf.train.SequenceExample`` per clip.

Byte-compatible with DMVR's generator (``examples/generate_from_file.py``) and readers:
one JPEG per frame in the sequence feature list ``image/encoded``; context features
``clip/label/index`` (int64), ``clip/label/text`` (bytes), ``video/filename`` (bytes),
``clip/start/timestamp`` and ``clip/end/timestamp`` (int64, microseconds). We also write
``image/frame_rate`` (float, MediaSequence's key), which DMVR omits. The reader accepts
MediaSequence's ``clip/label/string`` for the label text as well.

Shards are ``NAME-00000-of-00128.tfrecord`` (ours) or ``NAME-00000-of-00128`` (DMVR's
generator). The writer's sidecars, ``NAME.counts.json`` and ``NAME.failures.json``, are
named so that no shard glob (``NAME-*``, ``NAME-*-of-*``, ``*.tfrecord``) matches them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tensorflow as tf

FRAMES = "image/encoded"
LABEL_INDEX = "clip/label/index"
LABEL_TEXT = "clip/label/text"
LABEL_STRING = "clip/label/string"  # MediaSequence's name for the label text
FILENAME = "video/filename"
START = "clip/start/timestamp"
END = "clip/end/timestamp"
FRAME_RATE = "image/frame_rate"


# Files that globs over a records folder may match but that hold no records: our sidecars
# (also as earlier versions named them, NAME-counts.json), a Beam run's staged video list,
# class lists, CSVs.
NOT_RECORDS = (".json", ".jsonl", ".txt", ".csv")
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}(\.tfrecord)?$")


def shard_name(basename: str, index: int, num_shards: int) -> str:
    """``name-00000-of-00128.tfrecord``."""
    return f"{basename}-{index:05d}-of-{num_shards:05d}.tfrecord"


def counts_name(basename: str) -> str:
    """The writer's records-per-shard sidecar: ``name.counts.json``."""
    return f"{basename}.counts.json"


def failures_name(basename: str) -> str:
    """The writer's list of videos that failed to decode: ``name.failures.json``."""
    return f"{basename}.failures.json"


def counts_sidecars(shard: str) -> tuple[str, str]:
    """The names the counts sidecar of the shard file ``shard`` may have, newest first
    (``train-00003-of-00016[.tfrecord]`` -> ``train.counts.json``, ``train-counts.json``)."""
    basename = _SHARD_SUFFIX.sub("", shard)
    return counts_name(basename), f"{basename}-counts.json"


def is_record_file(name: str) -> bool:
    """Whether a file a glob matched may hold records (not a sidecar, class list or CSV)."""
    return not name.lower().endswith(NOT_RECORDS)


def encode_clip(jpeg_frames: Sequence[bytes], label_index: int | Sequence[int],
                label_text: str = "", filename: str = "", start_us: int = 0, end_us: int = 0,
                frame_rate: float | None = None) -> bytes:
    """A serialised SequenceExample for one clip; ``jpeg_frames`` are encoded JPEGs."""
    labels = [label_index] if isinstance(label_index, int) else list(label_index)
    context = {
        LABEL_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=labels)),
        LABEL_TEXT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label_text.encode()])),
        FILENAME: tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
        START: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(start_us)])),
        END: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(end_us)])),
    }
    if frame_rate is not None:
        context[FRAME_RATE] = tf.train.Feature(float_list=tf.train.FloatList(value=[frame_rate]))
    frames = tf.train.FeatureList(feature=[
        tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])) for jpeg in jpeg_frames])
    example = tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(feature_list={FRAMES: frames}))
    # Map fields in key order: the same bytes in every process (a Beam worker or this host).
    return example.SerializeToString(deterministic=True)


_CONTEXT_SPEC = {
    LABEL_INDEX: tf.io.VarLenFeature(tf.int64),
    LABEL_TEXT: tf.io.VarLenFeature(tf.string),
    LABEL_STRING: tf.io.VarLenFeature(tf.string),
    FILENAME: tf.io.VarLenFeature(tf.string),
    START: tf.io.VarLenFeature(tf.int64),
    END: tf.io.VarLenFeature(tf.int64),
    FRAME_RATE: tf.io.VarLenFeature(tf.float32),
}
# One string per frame: a record that packs several JPEGs into one Feature fails here.
_SEQUENCE_SPEC = {FRAMES: tf.io.FixedLenSequenceFeature((), tf.string)}


def _first(sparse: tf.sparse.SparseTensor, default):
    dense = tf.sparse.to_dense(sparse)
    return tf.cond(tf.size(dense) > 0, lambda: dense[0], lambda: tf.constant(default, dense.dtype))


def lost_record() -> bytes:
    """What stands in for a record lost to a shard's framing damage: a clip without frames
    or label, which every consumer counts as a bad record."""
    example = tf.train.SequenceExample()
    example.feature_lists.feature_list.get_or_create(FRAMES)
    return example.SerializeToString()


def parse_clip(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A serialised record -> its fields (graph-mode, for ``tf.data``).

    Returns ``frames`` (T,) JPEG strings, ``label`` the first class index (-1 if none),
    ``labels`` all of them (multi-label), ``label_text`` (from ``clip/label/text`` or
    ``clip/label/string``), ``filename``, ``start_us``, ``end_us``, ``frame_rate``
    (0 when not recorded).
    """
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=_CONTEXT_SPEC, sequence_features=_SEQUENCE_SPEC)
    labels = tf.sparse.to_dense(context[LABEL_INDEX])
    text = tf.sparse.to_dense(context[LABEL_TEXT])
    text = tf.cond(tf.size(text) > 0, lambda: text, lambda: tf.sparse.to_dense(context[LABEL_STRING]))
    return {
        "frames": sequence[FRAMES],
        "label": tf.cond(tf.size(labels) > 0, lambda: labels[0], lambda: tf.constant(-1, tf.int64)),
        "labels": labels,
        "label_text": tf.cond(tf.size(text) > 0, lambda: text[0], lambda: tf.constant(b"")),
        "filename": _first(context[FILENAME], b""),
        "start_us": _first(context[START], 0),
        "end_us": _first(context[END], 0),
        "frame_rate": _first(context[FRAME_RATE], 0.0),
    }


def label_key(text: tf.Tensor) -> tf.Tensor:
    """A class name as it is matched against a class list: lower case, each run of spaces
    and underscores one space, trimmed (``Air_Drumming`` -> ``air drumming``)."""
    text = tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), "[_ ]+", " ")
    return tf.strings.strip(text)


def label_table(class_names: Sequence[str], source: str = "the class list"
                ) -> tf.lookup.StaticHashTable:
    """:func:`label_key` of a name -> its index in ``class_names`` (-1 when not there).
    Two names with one key are refused, naming ``source``."""
    with tf.init_scope():  # eagerly, also while a tf.data function is traced
        keys = [k.decode() for k in label_key(tf.constant(list(class_names), tf.string)).numpy()]
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"{source}: {class_names[seen[key]]!r} and {class_names[index]!r} are "
                             "the same name once case, spaces and underscores are ignored")
        seen[key] = index
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(keys), dtype=tf.int64)), -1)
