"""The real GCS clients (tf.io.gfile, tf.data, etils.epath, tensorstore, orbax) against the local
emulator of tests/support/gcs_emulator.py, transient failures included."""

import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from etils import epath

ROOT = "gs://test-bucket"


def test_gfile(gcs):
    g = tf.io.gfile
    g.makedirs(f"{ROOT}/gfile/sub")
    with g.GFile(f"{ROOT}/gfile/a.txt", "w") as f:
        f.write("alpha")
    big = np.random.default_rng(0).bytes(3_000_000)
    with g.GFile(f"{ROOT}/gfile/sub/big.bin", "wb") as f:
        f.write(big)
    assert gcs.read_object("test-bucket", "gfile/sub/big.bin") == big
    assert g.GFile(f"{ROOT}/gfile/sub/big.bin", "rb").read() == big
    assert g.stat(f"{ROOT}/gfile/sub/big.bin").length == len(big)
    assert g.isdir(f"{ROOT}/gfile/sub") and g.exists(f"{ROOT}/gfile/a.txt")
    assert sorted(g.listdir(f"{ROOT}/gfile")) == ["a.txt", "sub/"]
    assert g.glob(f"{ROOT}/gfile/*.txt") == [f"{ROOT}/gfile/a.txt"]
    g.rename(f"{ROOT}/gfile/a.txt", f"{ROOT}/gfile/b.txt")
    g.copy(f"{ROOT}/gfile/b.txt", f"{ROOT}/gfile/c.txt")
    g.remove(f"{ROOT}/gfile/b.txt")
    assert not g.exists(f"{ROOT}/gfile/a.txt") and not g.exists(f"{ROOT}/gfile/b.txt")
    assert g.GFile(f"{ROOT}/gfile/c.txt").read() == "alpha"
    g.rmtree(f"{ROOT}/gfile")
    assert gcs.list_objects("test-bucket", "gfile/") == []
    # TF's resumable uploads (a POST with Transfer-Encoding: identity, then a PUT) went through.
    assert {(r.method, r.status) for r in gcs.requests if "uploadType=resumable" in r.path} == {
        ("POST", 200), ("PUT", 200)}


def test_tf_data_reads_tfrecords(gcs):
    with tf.io.TFRecordWriter(f"{ROOT}/records/data-00000-of-00001") as writer:
        for i in range(50):
            writer.write(f"record {i}".encode())
    files = tf.data.Dataset.list_files(f"{ROOT}/records/data-*")
    got = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    assert got == [f"record {i}".encode() for i in range(50)]


def test_epath(gcs):
    p = epath.Path(ROOT) / "epath"
    (p / "x").mkdir(parents=True, exist_ok=True)
    (p / "x" / "one.txt").write_text("one")
    (p / "two.json").write_text("{}")
    assert (p / "x" / "one.txt").read_text() == "one" and (p / "two.json").exists()
    assert sorted(q.name for q in p.iterdir()) == ["two.json", "x"]
    assert [q.name for q in p.glob("*.json")] == ["two.json"]
    (p / "two.json").rename(p / "three.json")
    assert not (p / "two.json").exists() and (p / "three.json").read_text() == "{}"
    (p / "three.json").unlink()
    p.rmtree()
    assert not p.exists()


def test_orbax_checkpoint_manager(gcs):
    import orbax.checkpoint as ocp

    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": {"c": jnp.ones(5, jnp.int32)}}
    options = ocp.CheckpointManagerOptions(max_to_keep=1)
    with ocp.CheckpointManager(f"{ROOT}/ckpt", options=options) as manager:
        for step in (1, 2):
            manager.save(step, args=ocp.args.StandardSave(tree))
            tree = {"w": tree["w"] * 2, "b": {"c": tree["b"]["c"] * 2}}
        manager.wait_until_finished()
    assert any(r.host == "storage.googleapis.com" and r.method == "POST" for r in gcs.requests)  # tensorstore
    with ocp.CheckpointManager(f"{ROOT}/ckpt") as manager:
        assert manager.all_steps() == [2]
        restored = manager.restore(2, args=ocp.args.StandardRestore())
    np.testing.assert_array_equal(restored["w"], np.arange(12.0).reshape(3, 4) * 2)
    np.testing.assert_array_equal(restored["b"]["c"], np.full(5, 2))


def test_subprocess_sees_the_emulator(gcs):
    code = ("import tensorstore as ts; "
            "kv = ts.KvStore.open({'driver': 'gcs', 'bucket': 'test-bucket'}).result(); "
            "kv.write('from-subprocess', b'hi').result()")
    gcs.run([sys.executable, "-c", code], timeout=120)
    assert gcs.read_object("test-bucket", "from-subprocess") == b"hi"


@pytest.mark.parametrize("status", [503, 0])  # 0: connections dropped without an answer
def test_outage_is_retried(gcs, status):
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "gcs", "bucket": "test-bucket"}).result()
    kv.write("outage/ts", b"tensorstore").result()
    with tf.io.gfile.GFile(f"{ROOT}/outage/tf", "w") as f:
        f.write("tensorflow")
    gcs.reset()
    start = time.monotonic()
    gcs.outage(1.0, status)
    # Both clients back off (about 1 s, then 2 s, ...) and get through once the outage is over.
    assert tf.io.gfile.GFile(f"{ROOT}/outage/tf").read() == "tensorflow"
    assert kv.read("outage/ts").result().value == b"tensorstore"
    assert time.monotonic() - start >= 1.0
    statuses = [r.status for r in gcs.requests]
    assert statuses[0] == status and statuses[-1] in (200, 206)


def test_fail_next_matches_and_client_errors_are_not_retried(gcs):
    with tf.io.gfile.GFile(f"{ROOT}/errors/obj", "w") as f:
        f.write("data")
    gcs.reset()
    gcs.fail_next(1, 403, match=r"^GET www\.googleapis\.com/storage/v1/b/test-bucket/o/errors%2Fmissing")
    with pytest.raises(tf.errors.OpError, match="403"):
        tf.io.gfile.stat(f"{ROOT}/errors/missing")
    assert [(r.path.split("?")[0], r.status) for r in gcs.requests] == [
        ("/storage/v1/b/test-bucket/o/errors%2Fmissing", 403)]
