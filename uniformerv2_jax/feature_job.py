"""Features of whole video sets to files (``main.py features``): a folder of videos or DMVR
records, whole videos or sliding windows, one file per video plus an index, chunk by
chunk, resumably, each host its own share of the chunks (:func:`extract`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np

from uniformerv2_jax import sharding, storage
from uniformerv2_jax.features import clip_features, feature_layers
from uniformerv2_jax.labels import read_class_names

if TYPE_CHECKING:  # TensorFlow is imported by extract
    from uniformerv2_jax.input.windows import Job, Sampling
    from uniformerv2_jax.predict import TrainedModel


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the outputs depend on: saved in ``OUT/features.json``, checked on a rerun."""
    checkpoint: str
    videos: str | None  # a folder, or
    records: str | None  # record globs
    feature: tuple[str, ...]
    sampling: Sampling
    keep_views: bool = False
    chunk_size: int = 64
    classes: str | None = None  # records: the class list whose names decide the labels

    def __post_init__(self):
        s = self.sampling
        if (s.window_seconds is not None and s.window_seconds <= 0) or (s.stride_seconds is not None and (
                s.window_seconds is None or s.stride_seconds <= 0)):
            raise ValueError("--window_seconds must be positive; --stride_seconds (positive) needs it")
        if s.num_crops not in (1, 3) or s.num_clips < 1 or self.chunk_size < 1:
            raise ValueError(f"--num_crops={s.num_crops} (1 or 3), --num_clips={s.num_clips} and "
                             f"--chunk_size={self.chunk_size} (at least 1)")
        if bool(self.videos) == bool(self.records):
            raise ValueError("give one of --videos=DIR or --records=GLOB")


def _meta(settings: Settings, jobs: Sequence[Job]) -> dict:
    ids = hashlib.sha256("\n".join(j.id for j in jobs).encode()).hexdigest()
    return json.loads(json.dumps({"settings": dataclasses.asdict(settings), "videos": len(jobs),
                                  "ids_sha256": ids}))


def _check_output(out: storage.epath.Path, meta: dict) -> None:
    """A rerun must have made the same outputs: refuse to mix settings or video sets."""
    path = out / "features.json"
    if storage.retry(path.exists, f"reading {path}"):
        old = json.loads(path.read_text())
        if old != meta:
            diff = {k: (old.get("settings", {}).get(k), v) for k, v in meta["settings"].items()
                    if old.get("settings", {}).get(k) != v}
            if old.get("ids_sha256") != meta["ids_sha256"]:
                diff["videos"] = (old.get("videos"), meta["videos"])
            raise ValueError(f"--out={out} holds features of other settings or videos (was, now: "
                             f"{diff}); use another --out")
    elif jax.process_index() == 0:
        storage.write_atomic(path, json.dumps(meta, indent=1))


def _save(path: storage.epath.Path, arrays: dict[str, np.ndarray]) -> None:
    """One array: ``.npy``; several: ``.safetensors`` keyed by feature name."""
    if len(arrays) == 1:
        buffer = io.BytesIO()
        np.save(buffer, next(iter(arrays.values())))
        data = buffer.getvalue()
    else:
        from safetensors.numpy import save

        data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    storage.write_atomic(path, data)


class _Chunk:
    """One chunk's videos: each video's file is written when its last clip arrives, the
    chunk's index part (its completion marker) after all of them."""

    def __init__(self, out: storage.epath.Path, part: storage.epath.Path,
                 jobs: Sequence[Job], settings: Settings, bar):
        self.out, self.part, self.jobs, self.settings, self.bar = out, part, jobs, settings, bar
        s = settings.sampling
        self.views = s.num_clips * s.num_crops
        self.suffix = ".npy" if len(settings.feature) == 1 else ".safetensors"
        self.clips: dict[int, dict] = {}  # video -> (window, view) -> features
        self.times: dict[int, dict] = {}  # video -> window -> (start, end)
        self.rows: dict[int, dict] = {}

    def add(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        for r in range(len(batch["mask"])):
            i = int(batch["index"][r])
            if not batch["mask"][r]:
                if batch["bad"][r] and i not in self.rows:  # a video that could not be read
                    self._fail(i, batch["error"][r].decode())
                continue
            w, v = int(batch["window"][r]), int(batch["view"][r])
            clips = self.clips.setdefault(i, {})
            clips[w, v] = {name: outputs[name][r] for name in self.settings.feature}
            self.times.setdefault(i, {})[w] = (float(batch["start"][r]), float(batch["end"][r]))
            if len(clips) == int(batch["windows"][r]) * self.views:
                self._write(i, {k: batch[k][r] for k in ("windows", "label", "label_text", "filename")})

    def _fail(self, i: int, error: str) -> None:
        self.rows[i] = {"video": self.jobs[i].id, "filename": self.jobs[i].path, "error": error}
        self.bar.update(1)

    def _write(self, i: int, meta: dict) -> None:
        clips, count = self.clips.pop(i), int(meta["windows"])
        arrays = {}
        for name in self.settings.feature:
            stacked = np.stack([np.stack([clips[w, v][name] for v in range(self.views)])
                                for w in range(count)])  # (windows, views, ...)
            arrays[name] = stacked if self.settings.keep_views else stacked.mean(axis=1)
        relative = f"features/{self.jobs[i].id}{self.suffix}"
        _save(self.out / relative, arrays)
        times = self.times.pop(i)
        label, text = int(meta["label"]), meta["label_text"].decode()
        self.rows[i] = {
            "video": self.jobs[i].id, "filename": meta["filename"].decode(),
            "label": label if label >= 0 else None, "label_text": text or None,
            "windows": count, "start": [round(times[w][0], 6) for w in range(count)],
            "end": [round(times[w][1], 6) for w in range(count)], "file": relative,
            "shapes": {name: list(a.shape) for name, a in arrays.items()}}
        self.bar.update(1)

    def close(self) -> None:
        for i in range(len(self.jobs)):
            if i not in self.rows:  # dropped in the pipeline: unparsable, or frames that fail to decode
                self._fail(i, "unreadable: the record does not parse or its frames do not decode")
        lines = [json.dumps(self.rows[i]) for i in range(len(self.jobs))]
        storage.write_atomic(self.part, "".join(line + "\n" for line in lines))


def _lockstep(items: Iterator) -> Iterator:
    """This host's items, then ``None`` while any other host still has some: every host
    runs the (collective) step the same number of times."""
    while True:
        item = next(items, None)
        more = item is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            more = bool(multihost_utils.process_allgather(np.int32(more)).any())
        if not more:
            return
        yield item


def _step(trained: TrainedModel, names: tuple[str, ...]):
    """The jitted step over the checkpoint's mesh (a training run's) or a data-parallel one
    over all devices, and the variables placed on it."""
    exp = trained.experiment
    if exp is not None:  # its layout and rules: the model's sharding constraints apply
        mesh, variables = exp.mesh, trained.variables
        context = functools.partial(sharding.activate, mesh, exp.rules)
    else:  # no rules: the constraints are no-ops, the batch's sharding propagates
        mesh, context = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}), contextlib.nullcontext
        replicated = sharding.replicated(mesh)
        variables = jax.tree.map(lambda x: jax.make_array_from_callback(
            np.shape(x), replicated, lambda index: np.asarray(x)[index]), trained.variables)
    fn = jax.jit(functools.partial(clip_features, model=trained.model, names=names),
                 out_shardings=sharding.batch_sharding(mesh))

    def step(video: np.ndarray) -> dict[str, np.ndarray]:
        from jax.experimental import multihost_utils

        with context():
            out = fn(variables, sharding.global_batch({"video": video}, mesh)["video"])
        local = multihost_utils.global_array_to_host_local_array(
            out, mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES))
        return jax.tree.map(np.asarray, local)

    return mesh, step


def extract(trained: TrainedModel, settings: Settings, out: str, batch_size: int | None = None,
            progress: bool = False) -> dict:
    """Features of every video of ``settings.videos`` or ``settings.records`` into ``out``.

    ``out/features/<video id>.npy`` (``.safetensors`` with several features):
    (windows, [views,] ...) float32; ``out/parts/chunk-K-of-N.jsonl``: each chunk's index
    rows, written after its files (a rerun skips the chunks that have one);
    ``out/index.jsonl`` and ``out/failures.json``: all of them, written at the end by
    process 0. ``batch_size``: clips per step over all hosts (default 8 per device).
    """
    from tqdm import tqdm

    from uniformerv2_jax.input import windows

    out = storage.path(out)
    names = tuple(settings.feature)
    feature_layers(trained.model, names)  # names checked before anything is read
    jobs = (windows.file_jobs(settings.videos) if settings.videos
            else windows.record_jobs(settings.records))
    _check_output(out, _meta(settings, jobs))
    size = settings.chunk_size
    chunks = [jobs[k:k + size] for k in range(0, len(jobs), size)]
    parts = [out / "parts" / f"chunk-{k:05d}-of-{len(chunks):05d}.jsonl" for k in range(len(chunks))]
    done = [storage.retry(p.exists, f"reading {p}") for p in parts]
    todo = [k for k in range(jax.process_index(), len(chunks), jax.process_count()) if not done[k]]

    mesh, step = _step(trained, names)
    batch_size = batch_size or 8 * jax.device_count()
    local_batch = sharding.local_batch_size(batch_size, mesh, "--batch_size")
    bar = tqdm(total=sum(len(chunks[k]) for k in todo), unit="video", desc="features",
               disable=not progress)
    if settings.videos:
        read = windows.file_videos
    else:
        names = read_class_names(settings.classes) if settings.classes else None
        read = functools.partial(windows.record_videos, label_names=names)

    def items():
        for k in todo:
            chunk = _Chunk(out, parts[k], chunks[k], settings, bar)
            for batch in windows.clip_batches(read(chunks[k], settings.sampling), settings.sampling,
                                              local_batch).as_numpy_iterator():
                yield batch, chunk
            chunk.close()

    s = settings.sampling
    padding = np.zeros((local_batch, s.clip_frames, s.crop_size, s.crop_size, 3), np.float32)
    for item in _lockstep(items()):
        outputs = step(padding if item is None else item[0]["video"])
        if item is not None:
            item[1].add(item[0], outputs)
    bar.close()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("features: all chunks written")
    report = {"videos": len(jobs), "chunks": len(chunks), "chunks_kept": sum(done),
              "index": str(out / "index.jsonl"), "failures_file": str(out / "failures.json")}
    if jax.process_index() == 0:
        report.update(_merge(out, parts))
    return report


def _merge(out: storage.epath.Path, parts: Sequence[storage.epath.Path]) -> dict:
    """``index.jsonl`` (the videos written) and ``failures.json`` from the chunks' parts."""
    rows = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    index = [r for r in rows if "error" not in r]
    failures = [r for r in rows if "error" in r]
    storage.write_atomic(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in index))
    storage.write_atomic(out / "failures.json", json.dumps(failures, indent=1))
    if failures:
        logging.warning("%d videos could not be read and were skipped; see %s", len(failures),
                        out / "failures.json")
    return {"written": len(index), "failed": len(failures)}
