"""Training from a config: the loop around one jitted train step.

``train(config, workdir)`` runs (or resumes) an experiment: it restores the newest
readable checkpoint of ``workdir`` (state, step, RNG and every host's position in the
data stream) or initialises from ``config.init_from``, then loops over one jitted train
step (compiled once, ahead of time, from the first batch), logging to TensorBoard,
``metrics.jsonl`` and the console (with model TFLOP/s and MFU per device, and the time
spent waiting for input: :mod:`perf`), profiling the steps of ``config.profile_steps``,
evaluating and saving as the config says (:func:`due` decides every periodic action and
the profiled window). SIGTERM (a preemption) saves at the next step boundary and
returns; a non-finite loss stops the run (or is skipped) without touching the checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import evaluate, executable, perf, run_dir, sharding, storage
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.experiment import Experiment, build, random_state
from uniformerv2_jax.input import pipeline, sources
from uniformerv2_jax.train_step import TrainState, train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients stopped being finite (``config.nonfinite = "stop"``)."""


def due(step: int, every: int = 0, total_steps: int | None = None, window: range = range(0)) -> bool:
    """Whether a periodic action runs at ``step``: every ``every`` steps (0: never), at
    the last step when ``total_steps`` is given, and at each step of ``window``."""
    return (every > 0 and step % every == 0) or step == total_steps or step in window


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


def initial_state(exp: Experiment) -> TrainState:
    """A fresh state, created sharded (never whole on one device), then overwritten with
    the pretrained weights of ``config.init_from`` unless it is ``scratch``."""
    config_lib.validate_init_from(exp.config)
    rng = jax.random.key(exp.config.seed)
    with sharding.activate(exp.mesh, exp.rules):
        state = jax.jit(lambda r: nn.unbox(random_state(exp.model, exp.tx, r)),
                        out_shardings=exp.state_shardings)(rng)
    if exp.config.init_from == config_lib.SCRATCH:
        return state
    from uniformerv2_jax.pretrained import load_pretrained

    params, batch_stats = load_pretrained(exp.config.init_from, exp.config.head_map, exp.model,
                                          state.params, state.batch_stats, exp.config.seed)
    # AdamW's state does not depend on the parameters' values: the fresh one stays valid.
    return state.replace(
        params=jax.device_put(params, exp.state_shardings.params),
        batch_stats=jax.device_put(batch_stats, exp.state_shardings.batch_stats))


def train_stream(exp: Experiment, source, start: tuple[int, int]) -> Iterator[dict]:
    """This host's training batches from position ``start`` = (epoch, example)."""
    c, m = exp.config, exp.model
    ds = pipeline.train_dataset(
        source, **config_lib.pipeline_args(pipeline.train_dataset, c),
        batch_size=sharding.local_batch_size(c.batch_size, exp.mesh), clip_frames=m.t_size,
        crop_size=m.input_resolution, num_classes=m.num_classes,
        label_names=config_lib.label_names(c), seed=c.seed, start=start)
    return ds.as_numpy_iterator()


def jit_train_step(exp: Experiment) -> Callable:
    """``(state, global batch) -> (state, metrics)``, the state donated; call (and lower)
    it inside ``sharding.activate(exp.mesh, exp.rules)``."""
    return jax.jit(functools.partial(train_step, model=exp.model, tx=exp.tx),
                   in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                   out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                   donate_argnums=0)


def lower_train_step(exp: Experiment, batch: Any) -> jax.stages.Lowered:
    """:func:`jit_train_step` lowered for ``exp.abstract_state`` and the shapes and
    shardings of ``batch`` (arrays or ``ShapeDtypeStruct``s)."""
    with sharding.activate(exp.mesh, exp.rules):
        return jit_train_step(exp).lower(exp.abstract_state, batch)


def compile_train_step(exp: Experiment, batch: Any, saved: str | None = None) -> jax.stages.Compiled:
    """:func:`lower_train_step` compiled ahead of time: a run's one compilation, whose cost
    analysis gives the FLOPs (:func:`perf.step_flops`). With ``saved`` (``main.py compile
    --save``), that executable instead, after :func:`executable.load`'s checks."""
    lowered = lower_train_step(exp, batch)
    if saved:
        return executable.load(saved, lowered, list(exp.mesh.devices.flat))
    return lowered.compile()


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
        # Rows past the restored step were logged by a run that died before saving.
        self.rows = [r for r in run_dir.read_metrics(workdir) if r["step"] <= resume_step]
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


def check_finite_metrics(fetched: list[tuple[int, dict]], config: ml_collections.ConfigDict,
                         checkpoints: Checkpoints) -> None:
    """Stops the run at a non-finite step unless ``config.nonfinite`` says skip."""
    bad = [s for s, m in fetched if m["finite"] < 1]
    if bad and config.nonfinite == "stop":
        last = checkpoints.steps()
        raise NonFiniteLossError(
            f"non-finite loss or gradients at step {bad[0]}; stopping without saving "
            f"(last checkpoint: {f'step {last[-1]}' if last else 'none'}, untouched). "
            "Set config.nonfinite='skip' to skip such updates instead")


def train_log_values(exp: Experiment, step: int, fetched: list[tuple[int, dict]], skipped: int,
                     speed: dict[str, float]) -> dict[str, float]:
    """The logged row: training metrics averaged over the fetched steps, and ``speed``
    (:func:`perf.speed_values`)."""
    values = {f"train/{k}": float(np.mean([m[k] for _, m in fetched]))
              for k in ("loss", "top1", "top5", "grad_norm", "param_norm")}
    return values | {
        "train/lr": float(exp.schedule(step)),
        "train/skipped_updates": float(sum(1 - m["finite"] for _, m in fetched)),
        "train/bad_records_this_epoch": float(skipped)} | speed


def console(line: str) -> None:
    """A line on process 0's console, above the progress bar."""
    if jax.process_index() == 0:
        tqdm.write(line)


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


def restore_or_initialise(exp: Experiment, checkpoints: Checkpoints
                           ) -> tuple[int, TrainState, tuple[int, int], int]:
    """(step, state, data position, bad records so far this epoch) to start from."""
    restored = checkpoints.restore(exp.abstract_state)
    if not restored:
        return 0, initial_state(exp), (0, 0), 0
    step, state, meta = restored
    log.warning("resumed from %s/%d", checkpoints.directory, step)
    return step, state, *resume_position(meta)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
          compiled: str | None = None) -> dict[str, Any]:
    """Trains (or resumes) and returns the last evaluation's results. ``compiled``: a train
    step saved by ``main.py compile --save``, run instead of compiling one."""
    config_lib.validate(config)
    workdir = storage.path(workdir)
    d = config.data
    train_source = sources.resolve(d.train, "data.train", d.tfds_data_dir)
    val_source = sources.resolve(d.val, "data.val", d.tfds_data_dir) if d.val else None
    class_names = evaluate.class_names(config)
    exp = build(config, epoch_size(train_source, config))
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        storage.write_atomic(workdir / "config.json", config.to_json(indent=1))
    val_batches = evaluate.eval_batch_count(exp, val_source) if val_source is not None else 0

    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.keep)
    start_step, state, position, skipped = restore_or_initialise(exp, checkpoints)
    history = MetricsLog(workdir, start_step)
    batches = train_stream(exp, train_source, position)
    step_fn, flops = None, None  # compiled from the first batch
    peak = perf.peak_tflops(exp.mesh.devices.flat[0], exp.model.dtype)  # None on CPU
    if exp.model.scan:
        log.warning("config.model.scan=True: XLA counts a scanned run of layers once, so "
                    "TFLOP/s and MFU are not logged")
    profile, profiler = config_lib.profile_window(config), perf.Profiler(workdir / "profile")
    eval_every = config.eval_every or exp.steps_per_epoch
    # A live progress bar (with ETA) on terminals; log files get the periodic lines only.
    bar = tqdm(total=exp.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not sys.stderr.isatty())
    stop = StopSignal()
    meter = perf.StepMeter(start_step)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        step = start_step
        while step < exp.total_steps:
            # PROFILE: a trace while the step about to run is in config.profile_steps.
            meter.exclude(profiler.follow(due(step + 1, window=profile), state))
            # INPUT: the host's wait for the next batch. The transfer to the devices is not
            # waited for: blocking on it would stop the next step's dispatch until this one ends.
            waiting = time.perf_counter()
            local = next(batches)
            input_wait = time.perf_counter() - waiting
            fields = ("video", "label", "targets") if "targets" in local else ("video", "label")
            batch = sharding.global_batch({k: local[k] for k in fields}, exp.mesh)
            if step_fn is None:
                compiling = time.perf_counter()
                step_fn = compile_train_step(exp, batch, compiled)
                flops = perf.step_flops(step_fn, exp.model)
                compile_seconds = time.perf_counter() - compiling
                meter.exclude(compile_seconds)  # speed excludes compilation
                console(f"compiled the train step in {compile_seconds:.1f} s"
                        + (f": {flops / 1e9:.4g} GFLOP a step per device" if flops else ""))
            state, metrics = step_fn(state, batch)
            step += 1
            bar.update(1)
            position = (int(local["epoch"][-1]), int(local["position"][-1]) + 1)
            skipped = int(local["skipped"][-1])
            meter.add(step, metrics, input_wait)
            preempted = stop(step)
            evaluating = val_source is not None and due(step, eval_every, exp.total_steps)
            saving = preempted or evaluating or due(step, config.checkpoint_every, exp.total_steps)

            # LOG: every log_every steps, and before anything that pauses training.
            if saving or due(step, config.log_every):
                fetched, seconds_per_step, input_wait = meter.fetch(step)
                check_finite_metrics(fetched, config, checkpoints)
                speed = perf.speed_values(seconds_per_step, config.batch_size, flops, peak,
                                          input_wait)
                values = train_log_values(exp, step, fetched, skipped, speed)
                history.write(step, values)
                bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)
                eta = format_seconds((exp.total_steps - step) * seconds_per_step)
                console(f"step {step}/{exp.total_steps}  loss {values['train/loss']:.4f}  "
                        f"top1 {values['train/top1']:.3f}  lr {values['train/lr']:.2e}  "
                        f"{perf.speed_line(values)}  ETA {eta}")

            # EVAL
            scores = None
            if evaluating and not preempted:
                results = evaluate.run_eval(exp, state, val_source, class_names, val_batches)
                history.write(step, {f"val/{k}": results[k]
                                     for k in ("top1", "top5", "mean_class_accuracy")})
                console(f"step {step}: validation top1 {results['top1']:.4f} top5 "
                        f"{results['top5']:.4f} mean-class {results['mean_class_accuracy']:.4f} "
                        f"({results['videos']} videos)")
                scores = {"top1": results["top1"]}

            # CHECKPOINT
            if saving:
                checkpoints.save(step, state, {"data": data_meta(position, skipped), "step": step},
                                 metrics=scores)
            if preempted:
                checkpoints.wait()
                log.warning("SIGTERM: saved step %d to %s; exiting", step, checkpoints.directory)
                return {"preempted_at": step}
            if evaluating:
                meter.restart_clock(step)  # speed excludes evaluation
        profiler.follow(False, state)
        checkpoints.wait()
    finally:
        profiler.close()
        bar.close()
        stop.restore()
        checkpoints.close()
    if results:
        run_dir.write_outputs(workdir, results, class_names, history.rows)
    if jax.process_index() == 0:
        print(f"trained {step - start_step} steps in {format_seconds(time.perf_counter() - t0)}")
    return {k: v for k, v in results.items() if k != "confusion"}


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
