"""The path layer's judgement of errors: transient (retry) or damage (never retried)."""

import pytest
import tensorflow as tf

from uniformerv2_jax import storage

# Messages as the clients word them (tensorstore, TF's GCS file system, HTTP, sockets).
TRANSIENT = [
    ValueError("UNAVAILABLE: All 32 retry attempts failed: HTTP response code: 503"),
    tf.errors.UnavailableError(None, None, "Error executing an HTTP request: libcurl code 7"),
    OSError("Error executing an HTTP request: HTTP response code 429 with body 'Too Many Requests'"),
    ConnectionResetError("Connection reset by peer"),
]
DAMAGE = [
    ValueError('OUT_OF_RANGE: Error reading Byte range [0, 304) of gs://runs/ckpt/2/state/d/'
               'c67db49f1c28f429d85297c007cbd6df: Requested byte range [0, 304) was not satisfied'),
    FileNotFoundError("gs://runs/ckpt/2/state/manifest.ocdbt"),
    tf.errors.DataLossError(None, None, "truncated record at 232"),
    ValueError("non-finite values in ['w'] of gs://runs/ckpt/3"),
    ValueError("non-finite values in ['params'] of gs://runs/ckpt/500"),  # a step, not a status
    RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB"),
]


def test_transient_errors_are_told_from_damage():
    assert [storage.is_transient(e) for e in TRANSIENT] == [True] * len(TRANSIENT)
    assert [storage.is_transient(e) for e in DAMAGE] == [False] * len(DAMAGE)


def test_retry_repeats_transient_errors_only(caplog):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TRANSIENT[0]
        return "done"

    assert storage.retry(flaky, "reading x", first_delay=0.01) == "done" and len(calls) == 3
    assert "retrying" in caplog.text
    calls.clear()

    def damaged():
        calls.append(1)
        raise DAMAGE[0]

    with pytest.raises(ValueError, match="OUT_OF_RANGE"):
        storage.retry(damaged, "reading y", first_delay=0.01)
    assert len(calls) == 1  # damage is never retried
