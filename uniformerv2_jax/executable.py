"""Compiled steps kept on disk: written by ``main.py compile --save``, loaded by
``train --compiled`` instead of compiling.

A saved step is two files: ``PATH`` (``jax.experimental.serialize_executable``'s payload,
a pickle: load only files you made) and ``PATH.json`` (the compile report, with the
fingerprint of the lowered program and the library versions). :func:`load` refuses, with
the reason, a step whose program, devices or libraries differ from the run's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from typing import Any

import jax

from uniformerv2_jax import storage


def program_fingerprint(lowered: jax.stages.Lowered) -> str:
    """sha256 of the lowered program's text: equal for the same step, shapes, shardings,
    model, optimiser and schedule."""
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    """The versions a compiled program depends on (None: not installed)."""
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"jax": jax.__version__, "jaxlib": version("jaxlib"), "libtpu": version("libtpu"),
            "jax_cuda12_plugin": version("jax-cuda12-plugin")}


def identity(lowered: jax.stages.Lowered, devices: list[Any]) -> dict[str, Any]:
    """What a compiled step must agree on with the run that loads it."""
    return {"program_sha256": program_fingerprint(lowered), "device_kind": devices[0].device_kind,
            "chips": len(devices), **library_versions()}


def save(compiled: jax.stages.Compiled, report: dict[str, Any], path: str) -> None:
    """Writes ``compiled`` to ``path`` and ``report`` (which holds its :func:`identity`)
    to ``path.json``."""
    from jax.experimental import serialize_executable

    payload, _, _ = serialize_executable.serialize(compiled)
    storage.write_atomic(storage.path(path), payload)
    storage.write_atomic(storage.path(f"{path}.json"), json.dumps(report, indent=1) + "\n")


def load(path: str, lowered: jax.stages.Lowered, devices: list[Any]) -> jax.stages.Compiled:
    """The step saved at ``path``, for the program ``lowered`` on ``devices``; a ValueError
    naming ``--compiled`` and every difference when it was compiled for something else."""
    from jax.experimental import serialize_executable

    saved = json.loads(storage.path(f"{path}.json").read_text())
    now = identity(lowered, devices)
    differences = [f"{key}: compiled for {saved.get(key)!r}, now {value!r}"
                   for key, value in now.items() if saved.get(key) != value]
    if differences:
        raise ValueError(f"--compiled={path} does not match this run (compile it again with the "
                         "same config, --config.data.train_examples and libraries): "
                         + "; ".join(differences))
    return serialize_executable.deserialize_and_load(storage.path(path).read_bytes(), lowered.in_tree,
                                                     lowered.out_tree, execution_devices=devices)
