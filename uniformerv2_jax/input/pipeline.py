"""tf.data pipelines: training clips and multi-view eval, from DMVR records or TFDS.

``source`` is a list of TFRecord shards or a :class:`sources.TFDSSource`; each host
(``process_index`` of ``process_count``, by default JAX's) reads its own share. Data flow:
this host's share -> (training) shuffle of the SERIALISED records (decoded frames in a
shuffle buffer would exhaust host RAM) -> parse and check -> sample frame
indices -> decode only those JPEGs (in training, only their crop window) -> augment ->
batch. Randomness is stateless and keyed by (seed, record position), so a pipeline is
deterministic given its seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import tensorflow as tf

from uniformerv2_jax.input import (
    frame_headers,
    mixing,
    randaugment,
    records,
    sampling,
    sources,
    transforms,
)

AUTOTUNE = tf.data.AUTOTUNE


# Columns decoded beyond each side of a crop window, cut after: libjpeg upsamples chroma at
# the edges of the decoded columns as at the frame's edges, which changes the pixels within
# one chroma sample (at most 4 pixels) of them.
JPEG_MARGIN = 16


def checked_clips(ds: tf.data.Dataset, num_classes: int | None, on_bad_record: str,
                  require_label: bool = True, label_names: Sequence[str] | None = None
                  ) -> tf.data.Dataset:
    """Parses records into ``(clip, valid)``.

    With ``label_names`` (the class list), a record that carries a label name
    (``clip/label/text`` or ``clip/label/string``) takes its label from the name's place
    in the list (:func:`records.label_key` matching), not from ``clip/label/index``; a
    name not in the list makes ``clip["name_error"]`` say so (with the shard and the
    video), for :func:`stop_at_unknown_names` to raise after the last ``ignore_errors``.
    A clip is bad when it has no frames, a frame that is not a whole JPEG or PNG or that
    declares a side over ``frame_headers.MAX_FRAME_SIDE``, no label (unless not ``require_label``), or a
    label outside [0, num_classes).
    ``on_bad_record="skip"`` lets the caller drop and count them (records that do not
    parse at all are dropped here and counted by the caller from what never arrives; a
    shard's damaged framing arrives as empty records, see :func:`sources.shard_records`);
    ``"raise"`` stops with an error naming the shard and the video.
    """
    if on_bad_record not in ("skip", "raise"):
        raise ValueError(f"on_bad_record={on_bad_record!r}: expected 'skip' or 'raise'")
    table = records.label_table(label_names) if label_names else None

    def check(shard, clip):
        unknown_name = tf.constant(False)
        if table is not None and "label_text" in clip:  # TFDS sources have no label names
            clip, unknown_name = _label_by_name(table, len(label_names), shard, clip)
        frames = clip["frames"]
        # Every frame a whole JPEG or a PNG, and no declared side too large: checked on
        # the headers before the decoder sees any frame.
        jpeg, png = frame_headers.kinds(frames)
        whole = (tf.size(frames) > 0) & tf.reduce_all(jpeg | png)
        sane = tf.cond(whole, lambda: tf.reduce_all(
            frame_headers.declared_side(frames, jpeg) <= frame_headers.MAX_FRAME_SIDE),
                       lambda: tf.constant(False))
        valid = whole & sane & ((clip["label"] >= 0) | (not require_label))
        if num_classes is not None:
            valid &= clip["label"] < num_classes
        valid |= whole & sane & unknown_name  # on to the error, not counted as bad
        if on_bad_record == "raise":
            check = tf.debugging.Assert(valid, [
                "bad record in", shard, "video", clip["filename"], "frames",
                tf.size(frames), "label", clip["label"], "num_classes", num_classes or -1])
            with tf.control_dependencies([check]):
                valid = tf.identity(valid)
        return clip, valid

    ds = ds.map(check, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=True) if on_bad_record == "skip" else ds


def _label_by_name(table: tf.lookup.StaticHashTable, num_names: int, shard: tf.Tensor,
                   clip: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """The clip with ``label`` from its name (when it has one) and ``name_error``; and
    whether the name is not in the list."""
    text = clip["label_text"]
    named = tf.strings.length(text) > 0
    by_name = table.lookup(records.label_key(text))
    unknown = named & (by_name < 0)
    # Backquotes: TF's assertion message escapes quote marks.
    error = tf.strings.join([
        "label name `", text, f"` is not in the class list ({num_names} names, "
        "config.data.class_names) in shard ", shard, ", video `", clip["filename"],
        "`: give the list the records were written with, or config.data.label_from=index"])
    return ({**clip, "label": tf.where(named, by_name, clip["label"]),
             "name_error": tf.where(unknown, error, "")}, unknown)


def _name_error(clip: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``name_error``, to carry on to :func:`stop_at_unknown_names`, if the clip has one."""
    return {"name_error": clip["name_error"]} if "name_error" in clip else {}


def stop_at_unknown_names(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Raises for an element whose ``name_error`` is set, and drops the field; to be
    applied after the last ``ignore_errors`` (which would swallow the error: a wrong class
    list is a mistake to stop at, not a bad record to skip)."""
    if "name_error" not in ds.element_spec:  # no class list, or a source without names
        return ds

    def check(example):
        example = dict(example)
        error = example.pop("name_error")
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(error, ""), [error])]):
            return {k: tf.identity(v) for k, v in example.items()}

    return ds.map(check, num_parallel_calls=AUTOTUNE, deterministic=True)


def decode_frames(images: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Decodes only the chosen frames: (N,) JPEG/PNG strings, (T,) indices -> (T, H, W, 3) uint8."""
    decode = lambda image: tf.io.decode_image(image, channels=3, expand_animations=False)  # noqa: E731
    return tf.map_fn(decode, tf.gather(images, indices), fn_output_signature=tf.uint8)


def decode_window(images: tf.Tensor, indices: tf.Tensor, size: tf.Tensor,
                  window: tf.Tensor, video: tf.Tensor | str = "") -> tf.Tensor:
    """Decodes only ``window`` (top, left, height, width) of the chosen frames, each of
    ``size`` (height, width), else an error naming ``video`` -> (T, height, width, 3) uint8.

    JPEGs are cut while decoding (``tf.io.decode_and_crop_jpeg``: the rows below the window
    are never decoded, and only the window's columns are upsampled and converted to RGB),
    with the same pixels as decoding the whole frame: chroma upsampling treats the edges
    of the decoded columns as the frame's edges, so ``JPEG_MARGIN`` more columns are
    decoded on each side and cut after. PNGs are decoded whole and cut.
    """
    def same_size(shape):
        return tf.debugging.Assert(tf.reduce_all(tf.equal(shape, size)), [
            "frames of different sizes in video", video, "first frame", size, "this frame", shape])

    def decode(image):
        def jpeg():
            left = tf.maximum(window[1] - JPEG_MARGIN, 0)
            right = tf.minimum(window[1] + window[3] + JPEG_MARGIN, size[1])
            with tf.control_dependencies([same_size(tf.io.extract_jpeg_shape(image)[:2])]):
                wide = tf.io.decode_and_crop_jpeg(
                    image, tf.stack([window[0], left, window[2], right - left]), channels=3)
            return wide[:, window[1] - left:window[1] - left + window[3]]

        def other():
            frame = tf.io.decode_image(image, channels=3, expand_animations=False)
            with tf.control_dependencies([same_size(tf.shape(frame)[:2])]):
                return frame[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]

        return tf.cond(frame_headers.is_jpeg(image), jpeg, other)

    return tf.map_fn(decode, tf.gather(images, indices), fn_output_signature=tf.uint8)


def train_dataset(source: Sequence[str] | sources.TFDSSource, *, batch_size: int,
                  clip_frames: int, crop_size: int,
                  seed: int, flip: bool = True, area: Sequence[float] = (0.08, 1.0),
                  ratio: Sequence[float] = (3 / 4, 4 / 3), dense_stride: int = 0,
                  mean: Sequence[float] = transforms.UNIFORMERV2_MEAN,
                  std: Sequence[float] = transforms.UNIFORMERV2_STD,
                  shuffle_buffer: int = 1024, process_index: int | None = None,
                  process_count: int | None = None,
                  num_classes: int | None = None, on_bad_record: str = "skip",
                  label_names: Sequence[str] | None = None,
                  mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                  mix_switch_prob: float = 0.5, label_smoothing: float = 0.0,
                  randaugment_spec: str | None = None, repeated_augment: int = 1,
                  start: tuple[int, int] = (0, 0),
                  dtype: tf.DType = tf.float32) -> tf.data.Dataset:
    """Endless training batches ``{'video': (B, T, S, S, 3), 'label': (B,), ...}`` for this host.

    Sparse (TSN) sampling by default; ``dense_stride`` selects dense sampling with that
    frame stride. ``flip`` must be off for direction-dependent labels (Something-Something).
    ``randaugment_spec`` (e.g. ``"rand-m7-n4-mstd0.5-inc1"``, the official setting) runs
    RandAugment on the cropped clip, rounded to uint8 frames, with PIL's arithmetic (the
    official code runs it on the PIL frames before cropping, at full resolution; same
    operations, a fraction of the cost), compiled with XLA. ``repeated_augment`` = k puts k
    differently augmented copies of each clip in the stream (the official SSv2 recipe uses
    2). With mixup, cutmix or label smoothing, batches also hold soft ``targets`` (B, C).

    The stream is a pure function of ``seed``: epoch e shuffles the shards and records
    with the key (seed, e), and each example's augmentation is keyed by (seed, e, its
    position in the epoch). Every example carries ``epoch`` and ``position``; a run that
    consumed up to (e, p) resumes exactly with ``start=(e, p + 1)``, replaying only the
    reading and parsing of epoch e up to there. With ``label_names`` the records' label
    names decide their labels (see :func:`checked_clips`; a name not in the list stops the
    stream with an error). Bad records are handled as
    ``on_bad_record`` says (see :func:`checked_clips`); ``skipped`` counts those met so far
    in the example's epoch on this host (bad records at an epoch's end, after its last
    good one, are in no example's count).
    """
    mixing_on = mixup_alpha > 0 or cutmix_alpha > 0 or label_smoothing > 0
    augment = randaugment.parse_spec(randaugment_spec) if randaugment_spec else None
    if mixing_on and not num_classes:
        raise ValueError("mixup_alpha/cutmix_alpha/label_smoothing need num_classes")
    if repeated_augment < 1:
        raise ValueError(f"repeated_augment={repeated_augment} must be at least 1")
    start_epoch, start_position = (int(v) for v in start)
    seed = tf.constant(seed, tf.int64)

    def count_bad(state, item):  # a running count of bad clips rides along each example
        skipped, previous = state
        clip, valid = item
        # Records that do not parse, or whose headers cannot be read, never arrive here:
        # the gap in the arrival numbers counts them.
        skipped += clip["arrival"] - previous - 1 + tf.cast(~valid, tf.int64)
        return (skipped, clip["arrival"]), (clip, valid, skipped)

    def epoch_examples(epoch):
        ds = sources.clips(source, process_index, process_count,
                           epoch_seed=tf.stack([seed, epoch]), shuffle_buffer=shuffle_buffer)
        # Numbered before parsing: a record that fails later still takes its number.
        ds = ds.enumerate().map(lambda arrival, item: (item[0], {**item[1], "arrival": arrival}))
        ds = checked_clips(ds, num_classes, on_bad_record, label_names=label_names).scan(
            (tf.constant(0, tf.int64), tf.constant(-1, tf.int64)), count_bad)
        ds = ds.filter(lambda clip, valid, skipped: valid)
        ds = ds.flat_map(lambda clip, valid, skipped: tf.data.Dataset.from_tensors(
            (clip, skipped)).repeat(repeated_augment))
        ds = ds.enumerate().map(lambda position, item: (epoch, position, *item))
        return ds.skip(tf.where(epoch == start_epoch, tf.constant(start_position, tf.int64), 0))

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)

    def load(epoch, position, clip, skipped):
        key = tf.random.experimental.stateless_fold_in(tf.stack([seed, epoch]), position)
        seeds = tf.random.experimental.stateless_split(key, 4)
        n = tf.shape(clip["frames"])[0]
        if not dense_stride:
            indices = sampling.sparse_train_indices(n, clip_frames, seeds[0])
        else:
            offset = sampling.dense_train_offset(n, clip_frames, dense_stride, seeds[0])
            indices = sampling.dense_indices(n, clip_frames, dense_stride, offset)
        frames = clip["frames"]
        size = frame_headers.frame_size(frames[indices[0]])
        video = transforms.random_resized_crop(
            size, lambda window: decode_window(frames, indices, size, window, clip["filename"]), crop_size,
            seeds[1], area, ratio)
        if augment:
            flipped = transforms.flip_draw(seeds[2]) if flip else tf.constant(False)
            video = transforms.augment_clip(video, flipped, randaugment.draw(seeds[3], augment),
                                            augment.increasing, mean, std)
        else:
            video = transforms.random_flip(video, seeds[2]) if flip else video
            video = transforms.normalize(video, mean, std)
        video = tf.ensure_shape(video, (clip_frames, crop_size, crop_size, 3))
        return {"video": tf.cast(video, dtype), "label": tf.cast(clip["label"], tf.int32),
                "skipped": skipped, "epoch": epoch, "position": position, **_name_error(clip)}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if on_bad_record == "skip":  # frames that pass the header check but do not decode
        ds = ds.ignore_errors(log_warning=True).scan(
            (tf.constant(start_epoch, tf.int64), tf.constant(start_position - 1, tf.int64),
             tf.constant(0, tf.int64)), _count_missing_positions)
    ds = stop_at_unknown_names(ds)
    ds = ds.batch(batch_size, drop_remainder=True)
    if mixing_on:
        def mix(batch):  # keyed by the batch's first example: the same after a resume
            key = tf.random.experimental.stateless_fold_in(
                tf.stack([seed, -1 - batch["epoch"][0]]), batch["position"][0])
            return mixing.mix_batch(batch, key, num_classes, mixup_alpha, cutmix_alpha,
                                    mix_switch_prob, label_smoothing)

        ds = ds.map(mix, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def _count_missing_positions(state, example):
    """Adds the examples that never arrived (positions skipped in the stream) to ``skipped``.

    ``state``: (epoch, position) of the previous example and the count so far this epoch.
    With ``repeated_augment`` > 1 each undecodable copy counts once.
    """
    last_epoch, last_position, missing = state
    new_epoch = example["epoch"] != last_epoch
    previous = tf.where(new_epoch, tf.constant(-1, tf.int64), last_position)
    missing = tf.where(new_epoch, tf.constant(0, tf.int64), missing) + example["position"] - previous - 1
    example = {**example, "skipped": example["skipped"] + missing}
    return (example["epoch"], example["position"], missing), example


def _with_missing_count(ds: tf.data.Dataset, records: int) -> tf.data.Dataset:
    """Appends one masked example whose ``bad`` counts the records that never arrived
    (unparseable, or a frame that passed the header check but did not decode): this host's
    ``records`` minus the examples that did. Good + bad = all, exactly."""
    end = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    marked = ds.map(lambda e: (e, False)).concatenate(tf.data.Dataset.from_tensors((end, True)))

    def step(arrived, item):
        example, is_end = item
        missing = tf.cast(records - arrived, tf.int32)
        example = {**example, "bad": tf.where(is_end, missing, example["bad"])}
        return arrived + 1, example

    return marked.scan(tf.constant(0, tf.int64), step)


def eval_dataset(source: Sequence[str] | sources.TFDSSource, *, batch_size: int,
                 clip_frames: int, crop_size: int,
                 num_clips: int = 4, num_crops: int = 3, dense_stride: int = 0,
                 mean: Sequence[float] = transforms.UNIFORMERV2_MEAN,
                 std: Sequence[float] = transforms.UNIFORMERV2_STD,
                 process_index: int | None = None, process_count: int | None = None,
                 num_classes: int | None = None, on_bad_record: str = "skip",
                 label_names: Sequence[str] | None = None, num_batches: int | None = None,
                 dtype: tf.DType = tf.float32) -> tf.data.Dataset:
    """One pass over this host's videos, each as ``num_clips x num_crops`` views.

    Batches: ``video`` (B, V, T, S, S, 3) with V = clips x crops (clip-major), ``label``
    (B,), ``mask`` (B,) — the last batch is padded with masked copies so that no video is
    dropped or counted twice — and ``bad`` (B,) int32, the bad records an example stands
    for (1 for a bad record, masked; the last example of the pass also carries those that
    never arrived), so that good + bad = this host's records.
    ``num_batches`` (from :func:`sources.eval_batches`) pads every host to the same number
    of batches, so that hosts of a multi-host eval stay in step. ``label_names``: as in
    :func:`train_dataset`.
    """
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    ds = checked_clips(sources.clips(source, process_index, process_count), num_classes,
                       on_bad_record, label_names=label_names)
    num_views = num_clips * num_crops
    views = functools.partial(evaluation_views, clip_frames=clip_frames, crop_size=crop_size,
                              num_clips=num_clips, num_crops=num_crops,
                              dense_stride=dense_stride, mean=mean, std=std)

    def load(clip, valid):
        # A bad clip stays in the stream as a masked, counted example: the views of every
        # good video are seen exactly once, and the count of bad ones is exact.
        shape = (num_views, clip_frames, crop_size, crop_size, 3)
        def good():
            frames = clip["frames"]
            return tf.ensure_shape(views(tf.shape(frames)[0], lambda i: decode_frames(frames, i)),
                                   shape)

        video = tf.cond(valid, good, lambda: tf.zeros(shape, tf.float32))
        return {"video": tf.cast(video, dtype), "label": tf.cast(clip["label"], tf.int32),
                "mask": valid, "bad": tf.cast(~valid, tf.int32), **_name_error(clip)}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if on_bad_record == "skip":
        ds = ds.ignore_errors(log_warning=True)
    ds = stop_at_unknown_names(ds)
    if on_bad_record == "skip":
        arrivals = sources.host_record_counts(source, process_count)[process_index]
        ds = _with_missing_count(ds, arrivals)
    return pad_batches(ds, batch_size, num_batches).prefetch(AUTOTUNE)


def evaluation_views(num_frames: tf.Tensor, frames_at: Callable[[tf.Tensor], tf.Tensor], *,
                     clip_frames: int, crop_size: int, num_clips: int, num_crops: int,
                     dense_stride: int = 0,
                     mean: Sequence[float] = transforms.UNIFORMERV2_MEAN,
                     std: Sequence[float] = transforms.UNIFORMERV2_STD) -> tf.Tensor:
    """The official test views of one video: (clips x crops, T, S, S, 3), clip-major.

    ``frames_at(indices)`` returns those frames as (T, H, W, 3) uint8 (decoding only them).
    """
    out = []
    for c in range(num_clips):
        if not dense_stride:
            indices = sampling.sparse_test_indices(num_frames, clip_frames, c, num_clips)
        else:
            offsets = sampling.dense_test_offsets(num_frames, clip_frames, dense_stride, num_clips)
            indices = sampling.dense_indices(num_frames, clip_frames, dense_stride, offsets[c])
        video = transforms.resize_short_side(frames_at(indices), crop_size)
        crops = [1] if num_crops == 1 else range(num_crops)
        out += [transforms.spatial_crop(video, crop_size, k) for k in crops]
    return transforms.normalize(tf.stack(out), mean, std)


def pad_batches(ds: tf.data.Dataset, batch_size: int, num_batches: int | None) -> tf.data.Dataset:
    """Batches of exactly ``batch_size``, the last filled with masked zero examples; with
    ``num_batches``, masked batches are added up to that count."""
    padding = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec))
    if num_batches is not None:
        return ds.concatenate(padding.repeat()).batch(batch_size).take(num_batches)
    batched = ds.concatenate(padding.repeat(batch_size - 1)).batch(batch_size, drop_remainder=True)
    # Padding-only batches (when the real count is a multiple of B) are dropped.
    return batched.filter(lambda b: tf.reduce_any(b["mask"] | (b["bad"] > 0)))
