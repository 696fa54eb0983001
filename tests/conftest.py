"""Shared test set-up: exact float32 matmuls, tiny models, the shared golden fixtures."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden() -> Path:
    """The official-code fixtures (../shared/golden beside the clone)."""
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures absent: {GOLDEN} (CI keeps shared/ beside the clone)")
    return GOLDEN


def tiny_fields(**overrides) -> dict:
    """A small UniFormerV2 exercising every path: LMHRA x2, 2 global blocks."""
    fields = dict(input_resolution=32, patch_size=8, width=32, layers=3, heads=2, t_size=4,
                  no_lmhra=False, double_lmhra=True, return_list=(1, 2), n_dim=32, n_head=2,
                  num_classes=5)
    fields.update(overrides)
    return fields


def random_video(model, batch=2, frames=None, seed=0) -> np.ndarray:
    frames = frames or model.t_size
    shape = (batch, frames, model.input_resolution, model.input_resolution, 3)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomize(variables: dict, seed: int = 1) -> dict:
    """Every variable set to non-trivial random values (zero-inits made non-zero too).

    BatchNorm variances stay positive.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        values = rng.standard_normal(np.shape(leaf)).astype(np.float32) * 0.2
        if any(getattr(k, "key", None) == "var" for k in path):
            values = np.abs(values) + 0.5
        out.append(jnp.asarray(values, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
