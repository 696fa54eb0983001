"""Training and evaluation from a config: data, model, optimiser, mesh and checkpoints.

``train(config, workdir)`` runs (or resumes) an experiment: it restores the newest
readable checkpoint of ``workdir`` (state, step, RNG and every host's position in the
data stream) or initialises from ``config.init_from``, then loops over one jitted train
step, logging to TensorBoard, ``metrics.jsonl`` and the console, evaluating and saving
as the config says. SIGTERM (a preemption) saves at the next step boundary and returns;
a non-finite loss stops the run (or is skipped) without touching the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import evaluate, plots, sharding, storage
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.input import pipeline, sources
from uniformerv2_jax.labels import read_class_names
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.optim import learning_rate_schedule, make_optimizer
from uniformerv2_jax.presets import model_from_fields
from uniformerv2_jax.train_step import TrainState, train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients stopped being finite (``config.nonfinite = "stop"``)."""


@dataclasses.dataclass
class Experiment:
    """What a config builds, shared by training, evaluation and prediction."""
    config: ml_collections.ConfigDict
    model: UniFormerV2
    mesh: jax.sharding.Mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings: the restore target
    steps_per_epoch: int
    total_steps: int

    @property
    def rules(self):
        return tuple(tuple(rule) for rule in self.config.axis_rules)

    def boxed_state(self, rng: jax.Array) -> TrainState:
        """A random initial state whose parameters carry their logical axes."""
        m = self.model
        video = jnp.zeros((1, m.t_size, m.input_resolution, m.input_resolution, 3), jnp.float32)
        params_rng, state_rng = jax.random.split(rng)
        variables = self.model.init(params_rng, video)
        # Raw key data (uint32): checkpoints hold plain arrays.
        return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=self.tx.init(variables["params"]),
                          rng=jax.random.key_data(state_rng))


def resolve_source(spec: str, field: str, tfds_data_dir: str = "") -> list[str] | sources.TFDSSource:
    """``tfds:NAME/SPLIT`` (prepared in ``tfds_data_dir``, default TFDS's) or
    comma-separated globs of record shards (which must exist), local or ``gs://``."""
    if not spec:
        raise ValueError(f"config.{field} is empty: give record shards (globs) or tfds:NAME/SPLIT")
    if spec.startswith("tfds:"):
        name, _, split = spec[5:].partition("/")
        return sources.TFDSSource(name, split or "train", tfds_data_dir or None)
    files = storage.glob(spec)
    if not files:
        raise FileNotFoundError(f"config.{field}={spec!r}: no file matches this path")
    return files


def epoch_size(source: list[str] | sources.TFDSSource, config: ml_collections.ConfigDict) -> int:
    """Training clips per epoch (with repeated augmentation's copies)."""
    examples = config.data.train_examples
    if not examples:
        if isinstance(source, sources.TFDSSource):
            import tensorflow_datasets as tfds
            info = tfds.builder(source.name, data_dir=source.data_dir).info
            examples = info.splits[source.split].num_examples
        else:
            examples = sum(sources.record_counts(source).values())
    return examples * config.data.repeated_augment


def build(config: ml_collections.ConfigDict, train_examples: int | None = None,
          devices: list[jax.Device] | None = None) -> Experiment:
    """Validates the config and builds the model, mesh, optimiser and state shardings.

    ``train_examples`` (clips per epoch) sets the schedule's length in steps; without it
    (evaluation, prediction) the schedule is a placeholder of ``config.train_steps`` or 1.
    ``devices`` (default: all) are those the mesh spans.
    """
    # What a run starts from is checked by train(); evaluation does not need it.
    config_lib.validate(config, training=False)
    model = model_from_fields(config_lib.model_fields(config))
    mesh = sharding.make_mesh(config.mesh, devices)
    # Before anything is traced: a split the mesh cannot make would fail at the first jit.
    config_lib.check_mesh(config, model, mesh.shape, training=train_examples is not None)
    # The official loader drops the last partial batch: an epoch is whole batches.
    steps_per_epoch = max(1, (train_examples or config.batch_size) // config.batch_size)
    o = config.optim
    total = config.train_steps or max(1, round(o.epochs * steps_per_epoch))
    epochs = config.train_steps / steps_per_epoch if config.train_steps else o.epochs
    schedule = learning_rate_schedule(o.lr, steps_per_epoch, epochs, min(o.warmup_epochs, epochs),
                                      o.warmup_start_lr, o.end_lr)
    tx = make_optimizer(model, schedule, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                        eps=o.eps, clip_norm=o.clip_norm or None)
    exp = Experiment(config, model, mesh, tx, schedule, None, None, steps_per_epoch, total)
    with sharding.activate(mesh, exp.rules):
        boxed = jax.eval_shape(exp.boxed_state, jax.random.key(0))
        exp.state_shardings = sharding.logical_shardings(boxed, mesh, exp.rules)
    exp.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), exp.state_shardings)
    return exp


def initial_state(exp: Experiment) -> TrainState:
    """A fresh state, created sharded (never whole on one device), then overwritten with
    the pretrained weights of ``config.init_from`` unless it is ``scratch``."""
    config_lib.validate_init_from(exp.config)
    rng = jax.random.key(exp.config.seed)
    with sharding.activate(exp.mesh, exp.rules):
        state = jax.jit(lambda r: nn.unbox(exp.boxed_state(r)),
                        out_shardings=exp.state_shardings)(rng)
    if exp.config.init_from == config_lib.SCRATCH:
        return state
    from uniformerv2_jax.convert.pretrained import load_pretrained

    params, batch_stats = load_pretrained(exp.config.init_from, exp.config.head_map, exp.model,
                                          state.params, state.batch_stats, exp.config.seed)
    # AdamW's state does not depend on the parameters' values: the fresh one stays valid.
    return state.replace(
        params=jax.device_put(params, exp.state_shardings.params),
        batch_stats=jax.device_put(batch_stats, exp.state_shardings.batch_stats))


class StopSignal:
    """SIGTERM (a preemption notice) -> stop at the next step boundary, with a checkpoint.

    One process: a Python handler sets a flag. Several: JAX's preemption service (set up
    by ``jax.distributed.initialize``) catches the signal, and its sync point makes every
    process stop at the same step.
    """

    def __init__(self):
        self.received: int | None = None
        self.multihost = jax.process_count() > 1
        if not self.multihost:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = signum

    def __call__(self, step: int) -> bool:
        if self.multihost:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def restore(self) -> None:
        if not self.multihost:
            signal.signal(signal.SIGTERM, self._previous)


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard, written by process 0 only."""

    def __init__(self, workdir: storage.epath.Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self.rows: list[dict] = []
        if self.path.exists():
            # Rows past the restored step were logged by a run that died before saving.
            self.rows = [r for r in map(json.loads, self.path.read_text().splitlines())
                         if r["step"] <= resume_step]
        if self.enabled:
            self._write_rows()
            import tensorflow as tf
            self.summary = tf.summary
            self.writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        if not self.enabled:
            return
        self._write_rows()
        with self.writer.as_default(step=step):
            for key, value in values.items():
                self.summary.scalar(key, value)
        self.writer.flush()

    def _write_rows(self) -> None:
        # The whole file each time: object stores cannot append, and readers must never
        # see a half-written line (a few thousand short rows per run).
        storage.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch, as :func:`train_stream` yields it over all hosts."""
    d, m, b = config.data, config.model, config.batch_size
    clip = (m.t_size, m.input_resolution, m.input_resolution, 3)
    spec = {"video": jax.ShapeDtypeStruct((b, *clip), jnp.float32),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    if d.mixup > 0 or d.cutmix > 0 or d.label_smoothing > 0:
        spec["targets"] = jax.ShapeDtypeStruct((b, m.num_classes), jnp.float32)
    return spec


def eval_batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """The global evaluation batch: every video with its clips x crops views."""
    d, m, b = config.data, config.model, config.eval_batch_size
    views = d.test_clips * d.test_crops
    clip = (m.t_size, m.input_resolution, m.input_resolution, 3)
    return {"video": jax.ShapeDtypeStruct((b, views, *clip), jnp.float32),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32),
            "mask": jax.ShapeDtypeStruct((b,), jnp.bool_),
            "bad": jax.ShapeDtypeStruct((b,), jnp.int32)}


def train_stream(exp: Experiment, source, start: tuple[int, int]) -> Iterator[dict]:
    c, d, m = exp.config, exp.config.data, exp.model
    local = sharding.local_batch_size(c.batch_size, exp.mesh)
    ds = pipeline.train_dataset(
        source, batch_size=local, clip_frames=m.t_size, crop_size=m.input_resolution, seed=c.seed,
        flip=d.flip, area=tuple(d.area), dense_stride=d.dense_stride or None,
        shuffle_buffer=d.shuffle_buffer, num_classes=m.num_classes, on_bad_record=d.on_bad_record,
        mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, label_smoothing=d.label_smoothing,
        randaugment_spec=d.randaugment or None, repeated_augment=d.repeated_augment, start=start)
    return ds.as_numpy_iterator()


def eval_batch_count(exp: Experiment, source) -> int:
    """Batches every host runs over ``source`` (reads record counts: once per run)."""
    local = sharding.local_batch_size(exp.config.eval_batch_size, exp.mesh, "config.eval_batch_size")
    return sources.eval_batches(source, local, jax.process_count())


def run_eval(exp: Experiment, state: TrainState, source, class_names=None,
             num_batches: int | None = None) -> dict[str, Any]:
    """Multi-view evaluation of ``state`` over ``source``: counts and accuracies.

    ``num_batches``: :func:`eval_batch_count` of ``source``, if already known.
    """
    c, d, m = exp.config, exp.config.data, exp.model
    local = sharding.local_batch_size(c.eval_batch_size, exp.mesh, "config.eval_batch_size")
    batches = pipeline.eval_dataset(
        source, batch_size=local, clip_frames=m.t_size, crop_size=m.input_resolution,
        num_clips=d.test_clips, num_crops=d.test_crops, dense_stride=d.dense_stride or None,
        num_classes=m.num_classes, on_bad_record=d.on_bad_record,
        num_batches=num_batches or eval_batch_count(exp, source))
    with sharding.activate(exp.mesh, exp.rules):
        step = jax.jit(functools.partial(evaluate.eval_counts, model=exp.model),
                       in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                       out_shardings=sharding.replicated(exp.mesh))
        counts = evaluate.accumulate(
            lambda b: step(state, sharding.global_batch(b, exp.mesh)),
            ({k: b[k] for k in ("video", "label", "mask", "bad")}
             for b in batches.as_numpy_iterator()))
    return {**evaluate.summarize(counts, class_names), "confusion": counts["confusion"]}


def write_eval_outputs(workdir: storage.epath.Path, results: dict, class_names, history) -> None:
    """eval.json, the confusion-matrix and learning-curve PNGs (process 0)."""
    if jax.process_index() != 0:
        return
    confusion = results["confusion"]
    summary = {k: v for k, v in results.items() if k != "confusion"}
    summary["confusion"] = confusion.tolist()
    storage.write_atomic(workdir / "eval.json", json.dumps(summary, indent=1))
    plots.confusion_matrix_png(confusion, class_names, workdir / "confusion_matrix.png")
    plots.learning_curve_png(history, workdir / "learning_curve.png")


def data_meta(position: tuple[int, int], skipped: int) -> list[list[int]]:
    """Every process's (epoch, next position, skipped) row, gathered for the checkpoint."""
    row = np.asarray([position[0], position[1], skipped], np.int64)
    if jax.process_count() == 1:
        return [row.tolist()]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(row)).tolist()


def resume_position(meta: dict) -> tuple[tuple[int, int], int]:
    rows = meta.get("data", [])
    if len(rows) == jax.process_count():
        epoch, position, skipped = rows[jax.process_index()]
        return (int(epoch), int(position)), int(skipped)
    # Another number of hosts wrote it: their positions do not map onto ours.
    epoch = min(int(r[0]) for r in rows) + 1 if rows else 0
    log.warning("checkpoint written by %d processes, running %d: data restarts at epoch %d",
                len(rows), jax.process_count(), epoch)
    return (epoch, 0), 0


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) and returns the last evaluation's results."""
    config_lib.validate(config)
    workdir = storage.path(workdir)
    d = config.data
    train_source = resolve_source(d.train, "data.train", d.tfds_data_dir)
    val_source = resolve_source(d.val, "data.val", d.tfds_data_dir) if d.val else None
    class_names = read_class_names(config.data.class_names) if config.data.class_names else None
    exp = build(config, epoch_size(train_source, config))
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        storage.write_atomic(workdir / "config.json", config.to_json(indent=1))

    val_batches = eval_batch_count(exp, val_source) if val_source is not None else None
    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.keep)
    restored = checkpoints.restore(exp.abstract_state)
    if restored:
        start_step, state, meta = restored
        position, skipped = resume_position(meta)
        log.warning("resumed from %s/%d", checkpoints.directory, start_step)
    else:
        start_step, state, position, skipped = 0, initial_state(exp), (0, 0), 0
    history = MetricsLog(workdir, start_step)
    batches = train_stream(exp, train_source, position)

    with sharding.activate(exp.mesh, exp.rules):
        step_fn = jax.jit(functools.partial(train_step, model=exp.model, tx=exp.tx),
                          in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                          out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                          donate_argnums=0)
    eval_every = config.eval_every or exp.steps_per_epoch
    # A live progress bar (with ETA) on terminals; log files get the periodic lines only.
    bar = tqdm(total=exp.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not sys.stderr.isatty())
    stop = StopSignal()
    pending: list[tuple[int, dict]] = []
    results: dict[str, Any] = {}
    clock, clock_step, t0 = time.perf_counter(), start_step, time.perf_counter()

    def flush(step: int) -> None:
        """Fetches the metrics of the steps since the last flush; the NaN check."""
        nonlocal clock, clock_step
        if not pending:
            return
        fetched = [(s, jax.device_get(m)) for s, m in pending]
        pending.clear()
        bad = [s for s, m in fetched if m["finite"] < 1]
        if bad and config.nonfinite == "stop":
            last = checkpoints.steps()
            raise NonFiniteLossError(
                f"non-finite loss or gradients at step {bad[0]}; stopping without saving "
                f"(last checkpoint: {f'step {last[-1]}' if last else 'none'}, untouched). "
                "Set config.nonfinite='skip' to skip such updates instead")
        now = time.perf_counter()
        elapsed, done = now - clock, step - clock_step
        clock, clock_step = now, step
        values = {f"train/{k}": np.mean([m[k] for _, m in fetched])
                  for k in ("loss", "top1", "top5", "grad_norm", "param_norm")}
        values.update({"train/lr": float(exp.schedule(step)),
                       "train/skipped_updates": float(sum(1 - m["finite"] for _, m in fetched)),
                       "train/bad_records_this_epoch": float(skipped),
                       "perf/step_seconds": elapsed / max(done, 1),
                       "perf/clips_per_second": done * config.batch_size / max(elapsed, 1e-9)})
        history.write(step, values)
        eta = (exp.total_steps - step) * values["perf/step_seconds"]
        bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)
        if jax.process_index() == 0:
            tqdm.write(f"step {step}/{exp.total_steps}  loss {values['train/loss']:.4f}  "
                       f"top1 {values['train/top1']:.3f}  lr {values['train/lr']:.2e}  "
                       f"{values['perf/clips_per_second']:.1f} clips/s  "
                       f"{values['perf/step_seconds']:.2f} s/step  ETA {format_seconds(eta)}")

    def save(step: int, metrics: dict | None = None) -> None:
        flush(step)
        checkpoints.save(step, state, {"data": data_meta(position, skipped), "step": step},
                         metrics=metrics)

    try:
        step = start_step
        while step < exp.total_steps:
            local = next(batches)
            fields = ("video", "label", "targets") if "targets" in local else ("video", "label")
            batch = sharding.global_batch({k: local[k] for k in fields}, exp.mesh)
            with sharding.activate(exp.mesh, exp.rules):
                state, metrics = step_fn(state, batch)
            step += 1
            bar.update(1)
            position = (int(local["epoch"][-1]), int(local["position"][-1]) + 1)
            skipped = int(local["skipped"][-1])
            pending.append((step, metrics))
            if step % config.log_every == 0:
                flush(step)
            if stop(step):
                save(step)
                checkpoints.wait()
                log.warning("SIGTERM: saved step %d to %s; exiting", step, checkpoints.directory)
                return {"preempted_at": step}
            if val_source is not None and (step % eval_every == 0 or step == exp.total_steps):
                flush(step)
                results = run_eval(exp, state, val_source, class_names, val_batches)
                history.write(step, {f"val/{k}": results[k]
                                     for k in ("top1", "top5", "mean_class_accuracy")})
                if jax.process_index() == 0:
                    tqdm.write(f"step {step}: validation top1 {results['top1']:.4f} top5 "
                               f"{results['top5']:.4f} mean-class "
                               f"{results['mean_class_accuracy']:.4f} ({results['videos']} videos)")
                save(step, {"top1": results["top1"]})
                clock, clock_step = time.perf_counter(), step  # speed excludes evaluation
            elif step % config.checkpoint_every == 0 or step == exp.total_steps:
                save(step)
        flush(step)
        checkpoints.wait()
    finally:
        bar.close()
        stop.restore()
        checkpoints.close()
    if results:
        write_eval_outputs(workdir, results, class_names, history.rows)
    if jax.process_index() == 0:
        print(f"trained {step - start_step} steps in {format_seconds(time.perf_counter() - t0)}")
    return {k: v for k, v in results.items() if k != "confusion"}


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def load_workdir_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    path = storage.path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_for_eval(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                     which: str = "best") -> tuple[Experiment, TrainState, int]:
    """The experiment and the ``best`` (by validation top-1), ``latest`` or numbered step."""
    exp = build(config)
    checkpoints = Checkpoints(storage.path(workdir) / "checkpoints", keep=config.keep,
                              asynchronous=False)
    try:
        # "best" falls back to the newest when no step has a validation score.
        step = (checkpoints.best_step() if which == "best" else None if which == "latest"
                else int(which))
        restored = checkpoints.restore(exp.abstract_state, step)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{storage.path(workdir) / 'checkpoints'}: no checkpoint to evaluate")
    step, state, _ = restored
    return exp, state, step


def evaluate_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                     which: str = "best") -> dict[str, Any]:
    """``main.py eval``: evaluates a checkpoint of ``workdir`` on ``config.data.val``."""
    source = resolve_source(config.data.val, "data.val", config.data.tfds_data_dir)
    exp, state, step = restore_for_eval(workdir, config, which)
    class_names = read_class_names(config.data.class_names) if config.data.class_names else None
    results = run_eval(exp, state, source, class_names)
    history_path = storage.path(workdir) / "metrics.jsonl"
    history = ([json.loads(line) for line in history_path.read_text().splitlines()]
               if history_path.exists() else [])
    write_eval_outputs(storage.path(workdir), {**results, "step": step}, class_names, history)
    return {k: v for k, v in results.items() if k != "confusion"} | {"step": step}

