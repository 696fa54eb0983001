"""Converted weights on disk: an orbax checkpoint of the variables plus ``model.json``.

The layout a training run starts from (``--config.init_from=DIR``)::

    DIR/model.json    the model's fields (official names + implementation switches)
    DIR/variables/    orbax checkpoint of {"params": ..., "batch_stats": ...}

    DIR/COMPLETE      written last: a directory without it is not a checkpoint

The directory is assembled beside its destination (``.<name>.staging``), marked complete,
then moved into place, so a failed or interrupted conversion never leaves a half-written
checkpoint that passes for one, and an existing one is replaced only when asked to, after
the new one is complete. Local disks rename directories atomically; on object storage
(``gs://``), where a "rename" copies object by object, the marker moves last.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from uniformerv2_jax import storage
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import model_fields, model_from_fields

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def save_converted(directory: str | os.PathLike, model: UniFormerV2, variables: dict,
                   overwrite: bool = False) -> storage.epath.Path:
    """Writes ``model.json`` and the orbax checkpoint of ``variables`` to ``directory``."""
    with storage.staged_directory(directory, overwrite) as staging:
        storage.write_atomic(staging / MODEL_FILE, json.dumps(model_fields(model), indent=1))
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / VARIABLES_DIR, jax.tree.map(np.asarray, nn.unbox(variables)))
        checkpointer.wait_until_finished()
    return storage.absolute(directory)


def load_converted(directory: str | os.PathLike) -> tuple[UniFormerV2, dict]:
    """Reads what :func:`save_converted` wrote: ``(model, variables)`` as numpy arrays."""
    directory = storage.absolute(directory)
    spec = directory / MODEL_FILE
    if not spec.is_file():
        raise FileNotFoundError(f"{directory}: no {MODEL_FILE}; not a converted checkpoint")
    if not storage.is_complete(directory):
        raise FileNotFoundError(f"{directory}: no {storage.COMPLETE_MARKER} marker: the conversion "
                                "that wrote it did not finish; convert again")
    model = model_from_fields(json.loads(spec.read_text()))
    restored = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    return model, jax.tree.map(np.asarray, restored)
