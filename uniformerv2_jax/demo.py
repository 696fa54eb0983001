"""The README's two self-checks: the demo (``make demo``) and official parity (``make parity``).

``run`` trains the temporal model and its order-blind ablation on the synthetic task and
prints them side by side; ``parity`` converts the shipped official fixture, saves and
reloads it, and prints our logits next to the official PyTorch model's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from uniformerv2_jax import storage

PARITY_BOUND = 1e-5  # max |ours - official| logit difference accepted (float32)


def run(get_config: Callable[[str], ml_collections.ConfigDict], data: Path,
        workdir: storage.epath.Path, workers: int | None = None) -> dict[str, dict[str, Any]]:
    """Makes the synthetic task in ``data`` (once), trains ``get_config("temporal")`` and
    ``get_config("order_blind")`` from scratch under ``workdir``; their results by name."""
    from uniformerv2_jax import train
    from uniformerv2_jax.input import synthetic

    if not (data / "classes.txt").is_file():
        print(f"making the synthetic dataset in {data} ...", flush=True)
        for line in synthetic.write_task(data, workers=workers):
            print(line)
    rows = {}
    for arg in ("temporal", "order_blind"):
        config = get_config(arg)
        config.data.train, config.data.val = str(data / "train-*.tfrecord"), str(data / "val-*.tfrecord")
        config.data.class_names = str(data / "classes.txt")
        directory = workdir / arg
        if directory.exists():
            directory.rmtree()  # the demo always trains from scratch
        print(f"\n== training {arg} (configs/synthetic.py:{arg}) in {directory}", flush=True)
        start = time.perf_counter()
        rows[arg] = train.train(config, directory) | {"seconds": time.perf_counter() - start}
    print("\nSynthetic temporal task (2 classes, chance 50%), validation videos x 6 views:")
    print(f"{'model':<14}{'top-1':>8}{'mean-class':>12}{'videos':>8}{'train+eval s':>14}")
    for arg, r in rows.items():
        print(f"{arg:<14}{r['top1']:>8.1%}{r['mean_class_accuracy']:>12.1%}{r['videos']:>8}"
              f"{r['seconds']:>14.0f}")
    print(f"plots: {workdir}/*/learning_curve.png, {workdir}/*/confusion_matrix.png")
    return rows


def tiny_a_args(fixtures: Path) -> dict[str, Any]:
    """tiny_a's official constructor arguments: the fixture generator also records the
    clip length as ``frames`` (beside ``t_size``), which is no official argument."""
    args = json.loads((fixtures / "tiny_a.json").read_text())
    args.pop("frames", None)
    return args


def parity(fixtures: Path, workdir: storage.epath.Path) -> float:
    """Prints tiny_a's logits, ours after an orbax round trip and the official ones;
    returns the largest difference."""
    import jax

    from uniformerv2_jax.convert import from_official
    from uniformerv2_jax.convert.official import param_count
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    jax.config.update("jax_default_matmul_precision", "highest")
    model, variables = from_official(fixtures / "tiny_a.safetensors", **tiny_a_args(fixtures))
    print(f"converted data/fixtures/tiny_a.safetensors: {param_count(variables):,} parameters")
    saved = save_converted(workdir / "tiny_a", model, variables, overwrite=True)
    model, variables = load_converted(saved)
    print(f"saved and reloaded the orbax checkpoint at {saved}")

    data = np.load(fixtures / "tiny_a.npz")
    video = np.transpose(data["input"], (0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
    logits = np.asarray(jax.jit(model.apply)(variables, video))
    print(f"\nlogits for {video.shape[0]} clips of shape {video.shape[1:]}:")
    print("clip  source     " + " ".join(f"{c:>7d}" for c in range(logits.shape[1])))
    for i in range(logits.shape[0]):
        print(f"{i:>4}  ours       " + " ".join(f"{v:7.4f}" for v in logits[i]))
        print(f"{i:>4}  official   " + " ".join(f"{v:7.4f}" for v in data["logits"][i]))
    error = float(np.abs(logits - data["logits"]).max())
    verdict = "OK" if error < PARITY_BOUND else "MISMATCH"
    print(f"\nmax |ours - official| = {error:.2e} ({verdict}, bound {PARITY_BOUND:g})")
    return error
