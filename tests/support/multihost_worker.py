"""One of the processes of tests/test_multihost.py (not a test itself).

  python tests/support/multihost_worker.py MODE PORT PROCESS_ID NUM_PROCESSES OUT_JSON RECORDS_JSON \\
      [WORKDIR CONFIG_OVERRIDES_JSON]

MODE ``step``: three train steps on fixed global batches, each process feeding its rows.
MODE ``train``: ``train.train`` on the tiny config (each process reads its own shards).
Also the victim of tests/test_fault_injection.py (one process, killed and restarted).
"""

import json
import os
import sys


def fixed_steps(config, process_id: int, num_processes: int) -> dict:
    """Losses of three steps on fixed global batches; this process feeds its rows."""
    import jax
    import numpy as np

    from uniformerv2_jax import experiment, sharding, train

    exp = experiment.build(config, 64)
    state = train.initial_state(exp)
    rows = slice(process_id * 8 // num_processes, (process_id + 1) * 8 // num_processes)
    losses = []
    with sharding.activate(exp.mesh, exp.rules):
        step = train.jit_train_step(exp)
        for i in range(3):
            rng = np.random.default_rng(i)
            video = rng.standard_normal((8, 4, 32, 32, 3)).astype(np.float32)
            label = rng.integers(0, 2, 8).astype(np.int32)
            state, metrics = step(state, sharding.global_batch(
                {"video": video[rows], "label": label[rows]}, exp.mesh))
            losses.append(float(metrics["loss"]))
    param_sum = sum(np.asarray(jax.device_get(x), np.float64).sum()
                    for x in jax.tree.leaves(state.params))
    return {"losses": losses, "param_sum": float(param_sum)}


def main(argv: list[str]) -> None:
    mode, port, process_id, num_processes, out = argv[1], *map(int, argv[2:5]), argv[5]
    records = json.loads(argv[6])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    if num_processes > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    from helpers import tiny_train_config

    from uniformerv2_jax import train

    config = tiny_train_config(records, **(json.loads(argv[8]) if len(argv) > 8 else {}))
    result = {"devices": jax.device_count(), "local_devices": jax.local_device_count()}
    if mode == "step":
        result.update(fixed_steps(config, process_id, num_processes))
    else:
        result["eval"] = train.train(config, argv[7])
    if jax.process_index() == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
