"""Converted weights on disk: an orbax checkpoint of the variables plus ``model.json``.

The layout a training run starts from (``--config.init_from=DIR``)::

    DIR/model.json    the model's fields (official names + implementation switches)
    DIR/variables/    orbax checkpoint of {"params": ..., "batch_stats": ...}

The directory is assembled beside its destination and renamed into place, so a failed
or interrupted conversion never leaves a half-written checkpoint, and an existing one is
replaced only when asked to, after the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import MODEL_FIELDS, model_from_fields

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def model_fields(model: UniFormerV2) -> dict:
    """The model's fields as JSON-serialisable values (dtype by name)."""
    out = {}
    for name in MODEL_FIELDS:
        value = getattr(model, name)
        if name == "dtype":
            value = jnp.dtype(value).name
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def save_converted(directory: str | os.PathLike, model: UniFormerV2, variables: dict,
                   overwrite: bool = False) -> Path:
    """Writes ``model.json`` and the orbax checkpoint of ``variables`` to ``directory``."""
    directory = Path(directory).resolve()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / MODEL_FILE).write_text(json.dumps(model_fields(model), indent=1))
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / VARIABLES_DIR, jax.tree.map(np.asarray, nn.unbox(variables)))
        checkpointer.wait_until_finished()
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old)
        else:
            staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_converted(directory: str | os.PathLike) -> tuple[UniFormerV2, dict]:
    """Reads what :func:`save_converted` wrote: ``(model, variables)`` as numpy arrays."""
    directory = Path(directory).resolve()
    spec = directory / MODEL_FILE
    if not spec.is_file():
        raise FileNotFoundError(f"{directory}: no {MODEL_FILE}; not a converted checkpoint")
    fields = json.loads(spec.read_text())
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    model = model_from_fields(fields)
    restored = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    return model, jax.tree.map(np.asarray, restored)
