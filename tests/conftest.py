"""Test set-up (exact float32 matmuls, the CPU backend) and the shared fixtures; the helpers
tests import are in helpers.py."""

import json
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest
from helpers import FIXTURES, write_synthetic_records

from uniformerv2_jax import topology

# The CPU backend, and libtpu (where installed) only for described TPUs: in this process
# and in the commands the tests start.
topology.deviceless_environment()
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def golden() -> Path:
    """The official-code fixtures, shipped in data/fixtures (copies of shared/golden)."""
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_a_config(tmp_path_factory) -> Path:
    """tiny_a's official constructor arguments as a JSON config file."""
    from uniformerv2_jax.demo import tiny_a_args

    path = tmp_path_factory.mktemp("fixture_config") / "tiny_a.json"
    path.write_text(json.dumps(tiny_a_args(FIXTURES)))
    return path


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory) -> dict:
    """Small train (16 clips) and validation (10 clips) sets of the synthetic task."""
    root = tmp_path_factory.mktemp("synthetic")
    return {"train": write_synthetic_records(root / "train", 8, seed=0),
            "val": write_synthetic_records(root / "val", 5, seed=1)}


@pytest.fixture(scope="module")
def gcs_server():
    """A GCS emulator (tests/support/gcs_emulator.py) for one test module, with the clients'
    variables set in this process; buckets ``test-bucket`` and ``runs``."""
    from support.gcs_emulator import GcsEmulator

    with GcsEmulator(buckets=["test-bucket", "runs"]) as emulator, emulator.activated():
        yield emulator


@pytest.fixture
def gcs(gcs_server):
    """The module's emulator, without faults or recorded requests from earlier tests."""
    gcs_server.reset()
    yield gcs_server
    gcs_server.reset()
