"""Kill training at random moments (SIGKILL, SIGTERM), restart it, and demand the exact
result of a run that was never interrupted: the same loss at every step, the same final
parameters, bit for bit.

``python tests/test_fault_injection.py --kills 30`` is the long soak version.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # whole programs: main.py commands, worker processes

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "support" / "multihost_worker.py"
# 12 steps, a checkpoint after every one (so that kills land inside saves), one eval.
OVERRIDES = {"train_steps": 12, "checkpoint_every": 1, "log_every": 1, "eval_every": 12}


def start(records, workdir, out):
    return subprocess.Popen(
        [sys.executable, str(WORKER), "train", "0", "0", "1", str(out), json.dumps(records),
         str(workdir), json.dumps(OVERRIDES)],
        cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"train/loss"' in line)


def saving(workdir):
    checkpoints = workdir / "checkpoints"
    return checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir())


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def final_params(workdir):
    import jax

    from uniformerv2_jax import run_dir

    config = run_dir.load_config(workdir)
    config.mesh.data = -1
    _, state, step = run_dir.restore(workdir, config, "latest")
    return step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def run_with_faults(records, workdir, out, faults, rng, timeout=600):
    """Restarts training after each fault until it completes; returns what happened."""
    history = []
    deadline = time.time() + timeout
    for fault in [*faults, None]:
        proc = start(records, workdir, out)
        if fault is not None:
            sig, when = fault
            before = logged_steps(workdir)
            target = before + int(rng.integers(1, 5))
            while proc.poll() is None and time.time() < deadline:
                if (when == "save" and logged_steps(workdir) > before and saving(workdir)) or \
                        (when == "step" and logged_steps(workdir) >= target):
                    time.sleep(float(rng.uniform(0, 0.05)))
                    proc.send_signal(sig)
                    break
                time.sleep(0.005)
        log = proc.communicate(timeout=max(deadline - time.time(), 1))[0]
        if fault is None or sig == signal.SIGTERM:
            assert proc.returncode == 0, log[-3000:]
        result = json.loads(out.read_text())["eval"] if proc.returncode == 0 else None
        out.unlink(missing_ok=True)
        resumed = re.search(r"resumed from \S+/checkpoints/(\d+)", log)
        history.append((fault, proc.returncode, result, int(resumed.group(1)) if resumed else None))
        if result and "top1" in result:
            break
    return history


@pytest.fixture(scope="module")
def reference(synthetic_records, tmp_path_factory):
    """The uninterrupted run, in this process (the same XLA program as the workers')."""
    from helpers import tiny_train_config

    from uniformerv2_jax import train

    workdir = tmp_path_factory.mktemp("reference") / "run"
    train.train(tiny_train_config(synthetic_records, **OVERRIDES), workdir)
    return losses(workdir), final_params(workdir)


def test_interrupted_runs_end_exactly_like_the_uninterrupted_one(reference, synthetic_records,
                                                                 tmp_path):
    """A SIGKILL inside a checkpoint save, then a SIGTERM at a random step."""
    rng = np.random.default_rng(0)
    faults = [(signal.SIGKILL, "save"), (signal.SIGTERM, "step")]
    workdir = tmp_path / "run"
    history = run_with_faults(synthetic_records, workdir, tmp_path / "out.json", faults, rng)
    assert history[0][1] == -signal.SIGKILL, history
    assert "preempted_at" in history[1][2], history  # SIGTERM: saved and exited cleanly
    # The run after the SIGTERM resumed where that one saved, not from scratch.
    assert history[2][3] == history[1][2]["preempted_at"] >= 1, history
    reference_losses, (reference_step, reference_params) = reference
    assert losses(workdir) == reference_losses
    step, params = final_params(workdir)
    assert step == reference_step == 12
    for a, b in zip(params, reference_params):
        np.testing.assert_array_equal(a, b)
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def soak(kills: int, seed: int = 0) -> None:
    """Many random SIGKILL/SIGTERM faults against one reference; prints a summary table."""
    import tempfile

    sys.path.insert(0, str(TESTS))
    from helpers import write_synthetic_records

    root = Path(tempfile.mkdtemp(prefix="soak_"))
    records = {"train": write_synthetic_records(root / "train", 8, seed=0),
               "val": write_synthetic_records(root / "val", 5, seed=1)}
    rng = np.random.default_rng(seed)
    ref_dir = root / "reference"
    proc = start(records, ref_dir, root / "ref.json")
    proc.communicate()
    ref_losses, (_, ref_params) = losses(ref_dir), final_params(ref_dir)
    runs = mismatches = survived = 0
    while survived < kills:
        batch = [(rng.choice([signal.SIGKILL, signal.SIGTERM]), rng.choice(["save", "step"]))
                 for _ in range(min(4, kills - survived))]
        workdir = root / f"run{runs}"
        history = run_with_faults(records, workdir, root / f"out{runs}.json", batch, rng)
        survived += len(history) - 1
        _, params = final_params(workdir)
        same = losses(workdir) == ref_losses and all(
            np.array_equal(a, b) for a, b in zip(params, ref_params))
        mismatches += not same
        runs += 1
        shutil.rmtree(workdir)
    print(f"| runs | faults survived | mismatching runs |\n|---|---|---|\n"
          f"| {runs} | {survived} | {mismatches} |")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=30)
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    soak(parser.parse_args().kills)
