"""Everything on gs://, against the GCS emulator of tests/support/gcs_emulator.py (real TF, tensorstore
and orbax clients): training with records, workdir and starting weights in a bucket, killed and
resumed, bitwise equal to the same run on local disk; eval, predict, convert, write_records;
transient storage errors retried, never taken for damage.
"""

import json
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import LOGITS_ATOL, ROOT, tiny_train_config
from test_checkpoint import ABSTRACT, state
from test_fault_injection import final_params, losses

from uniformerv2_jax import experiment, storage, train
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.convert.saved import save_converted
from uniformerv2_jax.input import synthetic

BUCKET = "runs"
TESTS = ROOT / "tests"
OVERRIDES = {"train_steps": 12, "checkpoint_every": 2, "log_every": 1, "eval_every": 12}


def upload(local_glob: str, prefix: str) -> str:
    """Copies local files into the bucket; returns the matching gs:// glob."""
    for path in tf.io.gfile.glob(local_glob):
        tf.io.gfile.copy(path, f"gs://{BUCKET}/{prefix}/{storage.path(path).name}", overwrite=True)
    return f"gs://{BUCKET}/{prefix}/{storage.path(local_glob).name}"


def isolated(cwd) -> dict[str, str]:
    """Home and temporary directory of a child process, inside the test's temporary directory
    (library caches go there); ``cwd`` itself must stay empty."""
    scratch = cwd.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    return {"HOME": str(scratch), "TMPDIR": str(scratch)}


def main_py(gcs, *args: str, cwd, timeout=300) -> str:
    result = gcs.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, timeout=timeout,
                     env={"PYTHONPATH": str(ROOT), **isolated(cwd)}, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def logged_steps(gcs, name: str) -> int:
    try:
        text = gcs.read_object(BUCKET, name).decode()
    except FileNotFoundError:  # not written yet
        return 0
    return text.count('"train/loss"')


@pytest.mark.e2e
def test_a_run_entirely_on_gcs_equals_the_local_run_and_every_command_works(
        gcs, synthetic_records, tmp_path, tiny_a_config):
    # Starting weights: a converted checkpoint, written straight to the bucket.
    config = tiny_train_config(synthetic_records, **OVERRIDES)
    exp = experiment.build(config, 16)
    initial = jax.device_get(train.initial_state(exp))
    variables = {"params": initial.params, "batch_stats": initial.batch_stats}
    save_converted(tmp_path / "init", exp.model, variables)
    save_converted(f"gs://{BUCKET}/init/tiny", exp.model, variables)

    reference = tmp_path / "reference"  # the same run on local disk, uninterrupted
    train.train(tiny_train_config(synthetic_records, **OVERRIDES,
                                  init_from=f"converted:{tmp_path / 'init'}"), reference)

    records = {"train": upload(synthetic_records["train"], "data/train"),
               "val": upload(synthetic_records["val"], "data/val")}
    overrides = {**OVERRIDES, "init_from": f"converted:gs://{BUCKET}/init/tiny"}
    workdir = f"gs://{BUCKET}/run"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def start():
        return subprocess.Popen(
            [sys.executable, str(TESTS / "support" / "multihost_worker.py"), "train", "0", "0", "1",
             str(tmp_path / "out.json"), json.dumps(records), workdir, json.dumps(overrides)],
            cwd=cwd, env={**gcs.env(), **isolated(cwd), "PATH": "/usr/bin:/bin",
                          "PYTHONPATH": f"{TESTS}:{ROOT}",
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Killed once mid-run (at step 5: checkpoints of step 2, maybe 4), then resumed to the end.
    victim, deadline = start(), time.time() + 300
    while victim.poll() is None and time.time() < deadline and logged_steps(gcs, "run/metrics.jsonl") < 5:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    gcs.fail_next(3, 503, match=r"^GET .*train.*clips-.*tfrecord")  # transient read errors
    resumed = start()
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    resumed_at = re.search(r"resumed from gs://runs/run/checkpoints/(\d+)", log)
    assert resumed_at and 2 <= int(resumed_at.group(1)) < 12, log[-3000:]  # not from scratch
    assert [r for r in gcs.requests if r.status == 503]  # the faults were met, and retried

    local_copy = tmp_path / "from_gcs"
    tf.io.gfile.makedirs(str(local_copy))
    for name in ("metrics.jsonl", "config.json"):
        tf.io.gfile.copy(f"{workdir}/{name}", str(local_copy / name))
    assert losses(local_copy) == losses(reference)
    rows = [json.loads(line) for line in (local_copy / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/bad_records_this_epoch"] == 0 for r in rows if "train/loss" in r)  # retried
    step, params = final_params(workdir)
    reference_step, reference_params = final_params(reference)
    assert step == reference_step == 12
    for a, b in zip(params, reference_params):
        np.testing.assert_array_equal(a, b)
    eval_result = json.loads((tmp_path / "out.json").read_text())["eval"]
    assert storage.path(f"{workdir}/eval.json").exists()
    assert storage.path(f"{workdir}/learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert tf.io.gfile.glob(f"{workdir}/tensorboard/events.out.tfevents.*")

    # eval and predict read the workdir (and the video) from the bucket.
    out = main_py(gcs, "eval", f"--workdir={workdir}", "--checkpoint=latest", cwd=cwd)
    assert f"top1 {eval_result['top1']:.4f}" in out
    synthetic.write_video(f"gs://{BUCKET}/videos/clip.mp4",
                          synthetic.render_clip(1, np.random.default_rng(3), 16, 32))
    out = main_py(gcs, "predict", f"--checkpoint={workdir}",
                  f"--video=gs://{BUCKET}/videos/clip.mp4", cwd=cwd)
    assert "class_0" in out and "class_1" in out, out  # the run has no class list: both ranked

    # convert: an official checkpoint in the bucket to a converted one in the bucket.
    source = upload(str(ROOT / "data/fixtures/tiny_a.safetensors"), "official")
    spec = upload(str(tiny_a_config), "official")
    main_py(gcs, "convert", "--from=official", f"--src={source}", f"--model_config={spec}",
            f"--out=gs://{BUCKET}/converted/tiny_a", cwd=cwd)
    from uniformerv2_jax.convert.saved import load_converted
    model, converted = load_converted(f"gs://{BUCKET}/converted/tiny_a")
    fixture = np.load(ROOT / "data/fixtures/tiny_a.npz")
    logits = jax.jit(model.apply)(converted, np.transpose(fixture["input"], (0, 2, 3, 4, 1)))
    np.testing.assert_allclose(logits, fixture["logits"], atol=LOGITS_ATOL)

    # write_records: videos in the bucket -> shards in the bucket.
    synthetic.write_dataset(f"gs://{BUCKET}/videos/train", 2, frames=16, size=32)
    main_py(gcs, "write_records", f"--videos=gs://{BUCKET}/videos/train",
            f"--out=gs://{BUCKET}/records", "--name=train", "--num_shards=2", "--workers=0", cwd=cwd)
    counts = json.loads(storage.path(f"gs://{BUCKET}/records/train.counts.json").read_text())
    assert sum(counts.values()) == 4 and len(tf.io.gfile.glob(f"gs://{BUCKET}/records/train-*.tfrecord")) == 2

    # Nothing of the run landed on local disk outside the temporary directory: the processes
    # ran in cwd, and the temporary downloads (the video, the weights) were all removed.
    assert list(cwd.iterdir()) == [], list(cwd.iterdir())
    assert not list((tmp_path / "scratch").glob("uniformerv2_*"))


def saved_on_gcs(root: str) -> Checkpoints:
    checkpoints = Checkpoints(root, keep=5)
    for s in (1, 2):
        checkpoints.save(s, state(s), {"data": [[0, s, 0]]})
    checkpoints.wait()
    return checkpoints


def test_a_checkpoint_unreachable_for_a_few_seconds_is_retried_not_quarantined(gcs, caplog):
    checkpoints = saved_on_gcs(f"gs://{BUCKET}/ckpt_outage")
    gcs.outage(4.0)
    step, restored, _ = checkpoints.restore(ABSTRACT)
    assert step == 2 and float(restored["w"][0, 0]) == 2.0
    assert [r for r in gcs.requests if r.status == 503]  # the outage was met
    assert checkpoints.steps() == [1, 2] and "damaged" not in caplog.text
    assert not tf.io.gfile.glob(f"gs://{BUCKET}/ckpt_outage/*.damaged*")


def test_a_truncated_checkpoint_on_gcs_is_still_quarantined(gcs, caplog):
    root = f"gs://{BUCKET}/ckpt_truncated"
    checkpoints = saved_on_gcs(root)
    files = tf.io.gfile.glob(f"{root}/2/state/*/d/*") + tf.io.gfile.glob(f"{root}/2/state/d/*")
    assert files
    for f in files:
        data = tf.io.gfile.GFile(f, "rb").read()
        with tf.io.gfile.GFile(f, "wb") as out:
            out.write(data[: len(data) // 2])
    with caplog.at_level("ERROR"):
        step, _, _ = checkpoints.restore(ABSTRACT)
    assert step == 1 and f"{root}/2 is damaged" in caplog.text
    assert tf.io.gfile.exists(f"{root}/2.damaged")
