"""One of the processes of tests/test_multihost.py (not a test itself).

  python tests/multihost_worker.py MODE PORT PROCESS_ID NUM_PROCESSES OUT_JSON RECORDS_JSON \
      [WORKDIR CONFIG_OVERRIDES_JSON]

MODE ``step``: three train steps on fixed global batches, each process feeding its rows.
MODE ``train``: ``train.train`` on the tiny config (each process reads its own shards).
Also the victim of tests/test_fault_injection.py (one process, killed and restarted).
"""

import json
import os
import sys

mode, port, process_id, num_processes, out = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
records = json.loads(sys.argv[6])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)

import numpy as np  # noqa: E402
from conftest import tiny_train_config  # noqa: E402

from uniformerv2_jax import sharding, train  # noqa: E402

config = tiny_train_config(records, **(json.loads(sys.argv[8]) if len(sys.argv) > 8 else {}))
result = {"devices": jax.device_count(), "local_devices": jax.local_device_count()}
if mode == "step":
    exp = train.build(config, 64)
    state = train.initial_state(exp)
    with sharding.activate(exp.mesh, exp.rules):
        step = jax.jit(lambda s, b: train.train_step(s, b, exp.model, exp.tx),
                       in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                       out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)))
        losses = []
        for i in range(3):
            rng = np.random.default_rng(i)
            video = rng.standard_normal((8, 4, 32, 32, 3)).astype(np.float32)
            label = rng.integers(0, 2, 8).astype(np.int32)
            rows = slice(process_id * 8 // num_processes, (process_id + 1) * 8 // num_processes)
            state, metrics = step(state, sharding.global_batch(
                {"video": video[rows], "label": label[rows]}, exp.mesh))
            losses.append(float(metrics["loss"]))
    result["losses"] = losses
    result["param_sum"] = float(sum(np.asarray(jax.device_get(x), np.float64).sum()
                                    for x in jax.tree.leaves(state.params)))
else:
    result["eval"] = train.train(config, sys.argv[7])
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump(result, f)
