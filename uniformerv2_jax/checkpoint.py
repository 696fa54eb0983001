"""Training checkpoints: orbax, asynchronous, atomic, last N plus the best, self-healing.

Each step directory holds the train state (every array, sharded as on the mesh that
saved it; restored onto the current mesh, whatever its shape) and a JSON ``meta`` item
(the data position of every process, the config). Orbax writes a step to a temporary
directory and renames it when complete, so a process killed mid-save leaves no step
behind (on object storage, orbax commits a step with a marker written last). A step
whose files were damaged afterwards is reported by name at restore and moved aside, and
the previous step is used instead. A transient storage error (a network hiccup, a
throttled request) is not damage: the read is retried with backoff, and if the storage
stays unreachable the run stops without touching any checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from uniformerv2_jax import storage

log = logging.getLogger(__name__)


class _NoMetricsNoise(logging.Filter):
    """Orbax warns at every save without metrics; here most saves have none, by design.

    Installed on the ``absl`` logger (orbax's) by each :class:`Checkpoints` for its lifetime
    (asynchronous saves log from other threads), removed by ``close()``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


class CheckpointError(RuntimeError):
    """No usable checkpoint where some exist, or a save that could not complete."""


class Checkpoints:
    """The checkpoints of one run, in ``directory/<step>``."""

    def __init__(self, directory: str | os.PathLike, keep: int, asynchronous: bool = True):
        self.directory = storage.path(directory)
        if not storage.is_remote(self.directory):
            self.directory = self.directory.absolute()
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda metrics: metrics["top1"], reverse=False, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write each step's metrics to disk, so that "best" survives
        # restarts; the preservation policy decides what is kept.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, best_fn=lambda metrics: metrics["top1"],
            best_mode="max", enable_async_checkpointing=asynchronous, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
        self._quiet = _NoMetricsNoise()
        logging.getLogger("absl").addFilter(self._quiet)

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Starts saving ``state`` and ``meta`` as ``step`` (returns before the write ends).

        ``metrics`` with ``top1`` make the step a candidate for "best".
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:
            raise self._failed(e) from e

    def wait(self) -> None:
        """Blocks until the last save is on disk; raises :class:`CheckpointError` if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(e) from e

    def _failed(self, error: Exception) -> CheckpointError:
        """A save that did not complete (disk full, quota, permissions): orbax commits a step
        by renaming it into place only once written, so the earlier steps are untouched."""
        return CheckpointError(
            f"could not write a checkpoint to {self.directory} ({type(error).__name__}: "
            f"{error}); the previous checkpoints {self.steps()} are intact. Free space (or fix "
            "the path) and restart: training resumes from the newest of them")

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the highest validation top-1, if any step has one."""
        scored = [s for s in self.steps() if self.manager.metrics(s)]
        return self.manager.best_step() if scored else None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` from ``step``, or from the newest readable checkpoint.

        ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings) fixes where
        every array goes. Returns None when there is no checkpoint at all; raises
        :class:`CheckpointError` when there are some and none can be read.
        """
        storage.retry(self.manager.reload, f"listing {self.directory}")
        candidates = [step] if step is not None else self.steps()[::-1]
        errors, damaged = [], []
        for candidate in candidates:
            where = self.directory / str(candidate)
            try:
                restored = storage.retry(lambda c=candidate: self._read(c, abstract_state),
                                         f"restoring {where}")
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if storage.is_transient(e):
                    raise CheckpointError(
                        f"cannot read {where}: the storage is unreachable ({reason}); no "
                        "checkpoint was changed. Restart when it is back.") from e
                log.error("checkpoint %s is damaged or unreadable (%s)%s", where, reason,
                          "; falling back to the previous one" if step is None else "")
                errors.append(f"{where}: {reason}")
                damaged.append(candidate)
                continue
            if damaged:
                self._quarantine(damaged)
            return candidate, restored.state, dict(restored.meta)
        if errors:
            raise CheckpointError("no readable checkpoint:\n  " + "\n  ".join(errors))
        return None

    def _read(self, step: int, abstract_state: Any):
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        check_finite_state(restored.state, self.directory / str(step))
        return restored

    def _quarantine(self, steps: list[int]) -> None:
        """Moves damaged steps aside (``<step>.damaged``), kept for inspection: the run
        that resumes from an older step must be free to save those step numbers again."""
        if jax.process_index() == 0:
            for step in steps:
                path = self.directory / str(step)
                target = self.directory / f"{step}.damaged"
                suffix = 1
                while target.exists():
                    target, suffix = self.directory / f"{step}.damaged{suffix}", suffix + 1
                storage.move(path, target)
                log.error("moved the damaged checkpoint %s to %s", path, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("checkpoint quarantine")
        self.manager.reload()

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            logging.getLogger("absl").removeFilter(self._quiet)


def check_finite_state(state: Any, where: storage.epath.Path) -> None:
    """Rejects a restored state with NaN/Inf in any floating array (a damaged file)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if jax.numpy.issubdtype(leaf.dtype, np.floating) and not bool(jax.numpy.isfinite(leaf).all()):
            raise ValueError(f"non-finite values in {jax.tree_util.keystr(path)} of {where}")
