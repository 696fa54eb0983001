"""Where clips come from: DMVR TFRecord shards or any TFDS video dataset.

Both yield ``(origin, clip)`` pairs, ``clip`` holding ``frames`` (N,) encoded images
(JPEG from records, PNG or JPEG from TFDS), ``label`` and ``filename``, for this host's
share of the data only. Frames stay encoded: the pipeline decodes only the sampled ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Sequence

import tensorflow as tf

from uniformerv2_jax import storage
from uniformerv2_jax.input import records

AUTOTUNE = tf.data.AUTOTUNE
REMOTE_READ_BUFFER = 8 << 20  # bytes per open gs:// shard


@dataclasses.dataclass(frozen=True)
class TFDSSource:
    """A TFDS dataset with ``video`` and ``label`` features, e.g. ``ucf101``."""
    name: str
    split: str
    data_dir: str | None = None
    video_key: str = "video"
    label_key: str = "label"


def resolve(spec: str, field: str, tfds_data_dir: str = "") -> list[str] | TFDSSource:
    """``tfds:NAME/SPLIT`` (prepared in ``tfds_data_dir``, default TFDS's) or
    comma-separated globs of record shards (which must exist), local or ``gs://``;
    ``field`` is the config field named in errors."""
    if not spec:
        raise ValueError(f"config.{field} is empty: give record shards (globs) or tfds:NAME/SPLIT")
    if spec.startswith("tfds:"):
        name, _, split = spec[5:].partition("/")
        return TFDSSource(name, split or "train", tfds_data_dir or None)
    return record_files(spec, f"config.{field}")


def record_files(spec: str, what: str) -> list[str]:
    """The record shards that ``spec`` (comma-separated globs) matches, without the files
    a records folder also holds (sidecars, class lists: :func:`records.is_record_file`);
    ``what`` (a flag or config field) is named in the error when there are none."""
    matched = storage.glob(spec)
    files = [f for f in matched if records.is_record_file(storage.path(f).name)]
    if len(files) < len(matched):
        logging.info("%s=%r: %d matching files are not record shards and are not read",
                     what, spec, len(matched) - len(files))
    if not files:
        raise FileNotFoundError(f"{what}={spec!r}: no record file matches this path"
                                + (f" (only {len(matched)} sidecar or list files)" if matched else ""))
    return files


def host_shard(files: Sequence[str], process_index: int, process_count: int
               ) -> tuple[list[str], bool]:
    """This host's files, and whether records must be split instead.

    Files are dealt round-robin. With fewer files than hosts every host reads all files
    and keeps every ``process_count``-th record (slower, but never a host without data).
    """
    files = sorted(files)
    if not files:
        raise FileNotFoundError("no input files")
    if len(files) >= process_count:
        return files[process_index::process_count], False
    logging.warning("%d files for %d hosts: splitting by record; write at least one file per "
                    "host for faster reading", len(files), process_count)
    return files, True


def record_clips(files: Sequence[str], process_index: int, process_count: int,
                 order_seed: tf.Tensor | None = None) -> tf.data.Dataset:
    """(shard path, serialised record) from this host's DMVR shards, one pass.

    ``order_seed`` ((2,) int64) shuffles the file order statelessly: the same seed gives
    the same order in every run, which is what makes a resumed epoch identical.
    """
    for path in files:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"input file not found: {path}")
    counts = shard_counts(files)
    files, by_record = host_shard(files, process_index, process_count)
    order = tf.range(len(files))
    if order_seed is not None:
        order = tf.random.experimental.stateless_shuffle(order, order_seed)
    readable, total = zip(*(counts[f] for f in files))
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.gather(files, order), tf.gather(tf.constant(readable, tf.int64), order),
         tf.gather(tf.constant(total, tf.int64), order)))
    # Object stores answer each request with ~tens of ms of latency: read remote shards in
    # large blocks, several at once; deterministic=True keeps the order (and resume) exact.
    buffer = REMOTE_READ_BUFFER if any(storage.is_remote(f) for f in files) else None
    ds = ds.interleave(lambda f, r, t: shard_records(f, r, t, buffer),
                       cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE,
                       deterministic=True)
    if by_record:
        ds = ds.shard(process_count, process_index)
    return ds


def shard_records(path: tf.Tensor, readable: tf.Tensor, total: tf.Tensor,
                  buffer_size: int | None = None) -> tf.data.Dataset:
    """(path, serialised record) for each of the ``total`` records of one shard.

    Only the first ``readable`` are read: past a shard's damaged framing (a truncated file,
    a bad length or checksum) the reader must not go (TF's reader may retry the damaged
    record forever). Each record lost to the damage comes out as
    :func:`records.lost_record`, a clip without frames: a bad record, counted downstream
    like any other (good + bad = all).
    """
    read = tf.data.TFRecordDataset(path, buffer_size=buffer_size).take(readable)
    lost = tf.data.Dataset.from_tensors(tf.constant(records.lost_record())).repeat(total - readable)
    return read.concatenate(lost).map(lambda r: (path, r))


def tfds_clips(source: TFDSSource, process_index: int, process_count: int) -> tf.data.Dataset:
    """(dataset name, clip) from this host's even share of a TFDS split, in file order."""
    import tensorflow_datasets as tfds

    split = tfds.even_splits(source.split, n=process_count)[process_index]
    ds = tfds.load(source.name, split=split, data_dir=source.data_dir, download=False,
                   shuffle_files=False, decoders={source.video_key: tfds.decode.SkipDecoding()})
    name = tf.constant(f"tfds:{source.name}/{source.split}")
    return ds.map(lambda ex: (name, {"frames": ex[source.video_key],
                                     "label": tf.cast(ex[source.label_key], tf.int64),
                                     "filename": tf.constant(b"")}))


def clips(source, process_index: int | None = None, process_count: int | None = None,
          epoch_seed: tf.Tensor | None = None, shuffle_buffer: int | None = None
          ) -> tf.data.Dataset:
    """One pass over this host's ``(origin, clip)`` pairs; hosts default to JAX's.

    With ``epoch_seed`` ((2,) int64, e.g. ``[seed, epoch]``) the pass is shuffled as a pure
    function of it: record shards in a seeded order, then records in a buffer of
    ``shuffle_buffer``, while still serialised (decoded frames in a shuffle buffer would
    exhaust host RAM), and parsed after. TFDS splits keep their file order.
    """
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    if isinstance(source, TFDSSource):
        ds = tfds_clips(source, process_index, process_count)
    else:
        ds = record_clips(source, process_index, process_count, epoch_seed)
    if epoch_seed is not None and shuffle_buffer:
        buffer_seed = tf.cast(tf.random.experimental.stateless_fold_in(epoch_seed, 1)[0], tf.int64)
        ds = ds.shuffle(shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False)
    if isinstance(source, TFDSSource):
        return ds
    return ds.map(lambda shard, r: (shard, records.parse_clip(r)), num_parallel_calls=AUTOTUNE,
                  deterministic=True)


def record_counts(files: Sequence[str]) -> dict[str, int]:
    """Records per shard: from the writer's ``<name>.counts.json``, else by reading them
    (a damaged tail counts as one more record, a bad one)."""
    return {path: total for path, (_, total) in shard_counts(files).items()}


@tf.autograph.experimental.do_not_convert  # plain Python file I/O, also inside a tf.data trace
def shard_counts(files: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(readable, total) records per shard. The writer's ``<name>.counts.json`` (or, as
    earlier versions named it, ``<name>-counts.json``) is trusted (readable = total); a
    shard without one is read, up to any framing damage, which is logged with the shard's
    name and counts as one bad record."""
    counts: dict[str, tuple[int, int]] = {}
    sidecars: dict[str, dict] = {}  # each sidecar read once, not once per shard
    for path in sorted(files):
        total = _sidecar_count(storage.path(path), sidecars)
        if total is not None:
            counts[path] = (total, total)
            continue
        logging.warning("no record count for %s: reading it to count", path)
        counts[path] = storage.retry(lambda p=path: _count_records(p), f"counting the records of {path}")
    return counts


def _sidecar_count(shard, sidecars: dict[str, dict]) -> int | None:
    """The records the writer's sidecar lists for ``shard`` (None if none does);
    ``sidecars`` caches each sidecar's content by path."""
    for name in records.counts_sidecars(shard.name):
        sidecar = shard.with_name(name)
        if os.fspath(sidecar) not in sidecars:
            exists = storage.retry(sidecar.exists, f"reading {sidecar}")
            sidecars[os.fspath(sidecar)] = json.loads(sidecar.read_text()) if exists else {}
        if shard.name in sidecars[os.fspath(sidecar)]:
            return int(sidecars[os.fspath(sidecar)][shard.name])
    return None


def _count_records(path: str) -> tuple[int, int]:
    """(readable, total) records of a shard, read up to the first framing damage.

    The epoch size, the training stream, the eval stream and the eval plan all ask: the
    shard is read once per version of the file (its length and modification time).
    """
    if storage.is_remote(path):
        stat = tf.io.gfile.stat(path)
        return _count_version(path, stat.length, stat.mtime_nsec)
    stat = os.stat(path)  # nanoseconds: tf.io.gfile's local stat keeps whole seconds only
    return _count_version(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _count_version(path: str, length: int, mtime_nsec: int) -> tuple[int, int]:
    del length, mtime_nsec  # the cache key: a rewritten shard is counted again
    with tf.init_scope():  # eagerly, also when a tf.data function is being traced
        return _count_eagerly(path)


def _count_eagerly(path: str) -> tuple[int, int]:
    readable, records = 0, iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            next(records)
        except StopIteration:
            return readable, readable
        except tf.errors.DataLossError as e:
            logging.warning("%s: framing damaged after %d readable records (%s); the damaged tail "
                            "counts as one bad record", path, readable, str(e).splitlines()[0])
            return readable, readable + 1
        readable += 1


def host_record_counts(source, process_count: int) -> list[int]:
    """The records of each host's share (its files, or its records of a shared file or split)."""
    if isinstance(source, TFDSSource):
        import tensorflow_datasets as tfds
        info = tfds.builder(source.name, data_dir=source.data_dir).info
        return [info.splits[s].num_examples for s in tfds.even_splits(source.split, n=process_count)]
    counts = record_counts(source)
    shares = []
    for index in range(process_count):
        files, by_record = host_shard(list(counts), index, process_count)
        total = sum(counts[f] for f in files)
        shares.append(len(range(index, total, process_count)) if by_record else total)
    return shares


def eval_batches(source, batch_size: int, process_count: int) -> int:
    """Batches every host must run so that all hosts stay in step: the largest share, plus
    the masked example that carries the count of records dropped on the way.

    Pass it to ``eval_dataset(num_batches=...)`` on every host of a multi-host eval.
    """
    return max(math.ceil((share + 1) / batch_size) for share in host_record_counts(source, process_count))
