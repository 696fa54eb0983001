"""Two processes on localhost (jax.distributed + gloo), 4 CPU devices each."""

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from uniformerv2_jax import evaluate, run_dir
from uniformerv2_jax.input import sources

pytestmark = pytest.mark.e2e  # whole programs: main.py commands, worker processes

WORKER = ROOT / "tests" / "support" / "multihost_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(mode, num_processes, records, tmp_path, *extra):
    out = tmp_path / f"{mode}_{num_processes}.json"
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(port), str(i), str(num_processes), str(out),
         json.dumps(records), *map(str, extra)],
        cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(num_processes)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return json.loads(out.read_text())


def test_two_processes_take_the_same_steps_as_one(synthetic_records, tmp_path):
    """The reference is this process: one process with the same 8 (simulated) devices."""
    from helpers import tiny_train_config
    from support.multihost_worker import fixed_steps

    one = fixed_steps(tiny_train_config(synthetic_records), 0, 1)
    two = launch("step", 2, synthetic_records, tmp_path)
    assert two["devices"] == 8 and two["local_devices"] == 4
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert two["param_sum"] == pytest.approx(one["param_sum"], rel=1e-5)


def test_two_processes_train_checkpoint_resume_and_evaluate_every_video_once(synthetic_records,
                                                                             tmp_path):
    workdir = tmp_path / "run"
    first = launch("train", 2, synthetic_records, tmp_path, workdir,
                   json.dumps({"train_steps": 4, "eval_every": 4}))
    assert first["eval"]["videos"] == 10  # 5 + 5 over the two hosts' shards, none twice
    resumed = launch("train", 2, synthetic_records, tmp_path, workdir,
                     json.dumps({"train_steps": 8, "eval_every": 4}))
    assert resumed["eval"]["videos"] == 10
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows if "train/loss" in r}) == [2, 4, 6, 8]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6, 8]

    # The two hosts' files are disjoint and cover the set ...
    files = sources.record_counts(sources.resolve(synthetic_records["val"], "data.val"))
    shares = [set(sources.host_shard(list(files), i, 2)[0]) for i in range(2)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(files)
    # ... and their evaluation is exactly one process's evaluation of the same checkpoint.
    two = json.loads((workdir / "eval.json").read_text())
    alone = tmp_path / "alone"
    shutil.copytree(workdir, alone)
    evaluate.evaluate_workdir(alone, run_dir.load_config(alone), "latest")
    one = json.loads((alone / "eval.json").read_text())
    assert one["step"] == 8 and (one["videos"], one["bad_records"]) == (10, 0)
    assert (one["confusion"], one["top1"], one["top5"]) == (two["confusion"], two["top1"], two["top5"])
