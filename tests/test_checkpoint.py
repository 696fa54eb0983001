"""Checkpoint integrity: damaged steps are named and skipped, good ones never lost."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniformerv2_jax.checkpoint import CheckpointError, Checkpoints


def state(value):
    return {"w": jnp.full((64, 64), value, jnp.float32), "b": jnp.arange(10.0) + value,
            "step": jnp.asarray(int(value), jnp.int32)}


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=jax.sharding.SingleDeviceSharding(
                                                           jax.devices()[0])), state(0))


def truncate_arrays(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def delete_manifests(step_dir):
    for p in (step_dir / "state").rglob("manifest.ocdbt"):
        p.unlink()


def saved(tmp_path, steps=(1, 2, 3)):
    checkpoints = Checkpoints(tmp_path / "ckpt", keep=5)
    for s in steps:
        checkpoints.save(s, state(s), {"data": [[0, s, 0]]})
    checkpoints.wait()
    return checkpoints


@pytest.mark.parametrize("damage", [truncate_arrays, delete_manifests])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(damage, tmp_path, caplog):
    checkpoints = saved(tmp_path)
    damage(tmp_path / "ckpt" / "3")
    with caplog.at_level(logging.ERROR):
        step, restored, meta = checkpoints.restore(ABSTRACT)
    assert step == 2 and meta == {"data": [[0, 2, 0]]}
    np.testing.assert_array_equal(restored["w"], np.full((64, 64), 2.0))
    assert f"{tmp_path / 'ckpt' / '3'} is damaged" in caplog.text
    # The damaged step is moved aside, so the resumed run can save step 3 again.
    assert (tmp_path / "ckpt" / "3.damaged").is_dir() and checkpoints.steps() == [1, 2]
    checkpoints.save(3, state(30), {"data": []})
    checkpoints.wait()
    assert checkpoints.restore(ABSTRACT)[0] == 3
    checkpoints.close()


def test_when_every_checkpoint_is_damaged_the_restore_fails_naming_them(tmp_path):
    checkpoints = saved(tmp_path, steps=(1, 2))
    for s in (1, 2):
        truncate_arrays(tmp_path / "ckpt" / str(s))
    with pytest.raises(CheckpointError, match=r"(?s)ckpt/2: .*ckpt/1: "):
        checkpoints.restore(ABSTRACT)
    checkpoints.close()


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    checkpoints = Checkpoints(tmp_path / "empty", keep=2)
    assert checkpoints.restore(ABSTRACT) is None
    checkpoints.close()


def test_the_best_checkpoint_outlives_the_last_n(tmp_path):
    checkpoints = Checkpoints(tmp_path / "ckpt", keep=2)
    for s, top1 in ((1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, None)):
        checkpoints.save(s, state(s), {}, metrics=None if top1 is None else {"top1": top1})
    checkpoints.wait()
    assert checkpoints.steps() == [2, 4, 5] and checkpoints.best_step() == 2
    checkpoints.close()


def test_a_save_that_cannot_be_written_stops_clearly_and_keeps_the_earlier_steps(tmp_path):
    """A file-size limit (setrlimit) makes every write past 64 KiB fail, as a full disk
    does; 64 MiB of random (incompressible) floats cannot be written."""
    import resource
    import signal

    checkpoints = saved(tmp_path, steps=(1,))
    noise = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    big = {"w": jnp.asarray(noise), "b": jnp.zeros(10), "step": jnp.asarray(2)}
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(CheckpointError, match=r"could not write .*previous checkpoints \[1\] are intact"):
            checkpoints.save(2, big, {})
            checkpoints.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    step, restored, _ = checkpoints.restore(ABSTRACT)
    assert step == 1
    np.testing.assert_array_equal(restored["w"], np.full((64, 64), 1.0))
    checkpoints.close()


def test_the_metrics_warning_filter_lives_as_long_as_the_checkpoints(tmp_path):
    """Importing the module changes no logging; a Checkpoints quiets orbax until closed."""
    absl = logging.getLogger("absl")
    before = list(absl.filters)
    checkpoints = Checkpoints(tmp_path / "ckpt", keep=2)
    assert len(absl.filters) == len(before) + 1
    record = absl.makeRecord("absl", logging.WARNING, __file__, 0, "Step 1 did not provide metrics",
                             (), None)
    assert not absl.filter(record)
    checkpoints.close()
    assert absl.filters == before and absl.filter(record)
