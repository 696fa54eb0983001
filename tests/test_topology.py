"""Topologies by the names users rent, and the backend check (no libtpu needed)."""

import subprocess
import sys

import pytest
from helpers import ROOT

from uniformerv2_jax import topology


@pytest.mark.parametrize("name, chips, shape", [
    ("v4-32", 16, (2, 2, 4)), ("v5p-128", 64, (4, 4, 4)), ("v5p-256", 128, (4, 4, 8)),
    ("v5e-8", 8, (2, 4)), ("v5e-128", 128, (8, 16)), ("v6e-256", 256, (16, 16))])
def test_rented_names_give_cloud_tpu_topologies(name, chips, shape):
    """Cloud TPU's documented slice shapes; v4/v5p names count TensorCores, two a chip."""
    kind, size, _ = topology.parse_name(name)
    gen = topology.TPU_GENERATIONS[kind]
    assert topology.torus_shape(chips, gen.torus_dims) == shape
    assert (size // 2 if gen.counts_cores else size) == chips


def test_a_full_size_model_stops_on_the_cpu_backend_unless_allowed():
    with pytest.raises(RuntimeError, match=r"libtpu \(pip install -e '.\[tpu\]'\).*--allow_cpu"):
        topology.check_backend(768, allow_cpu=False)
    topology.check_backend(768, allow_cpu=True)
    topology.check_backend(96, allow_cpu=False)  # the demo's and tests' models


@pytest.mark.e2e
def test_train_refuses_a_full_size_model_on_the_cpu_and_says_why():
    process = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "train", "--config=configs/kinetics.py:k400/b16_8x224",
         "--workdir=/nonexistent/never-written"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert "backend cpu: " in process.stdout  # the start-up line
    assert "full-size model (width 768) on the CPU backend" in process.stderr
    assert "--allow_cpu" in process.stderr
