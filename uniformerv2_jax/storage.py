"""One path layer for every path a user passes or the program writes: local or ``gs://``.

Paths are ``etils.epath.Path`` (TensorFlow's file systems underneath, which read and
write ``gs://`` natively, as tf.data and orbax do). Two facts of object storage shape the
helpers here:

* there is no atomic rename, but an object becomes visible only once its upload is
  complete: :func:`write_atomic` writes the final object in one upload (local disks:
  write aside, then rename), and anything made of several files is published with a
  completion marker written last (:func:`mark_complete`, :func:`is_complete`), as orbax
  does for checkpoints;
* the network fails now and then: :func:`retry` repeats an operation on transient errors
  (unavailable, timeouts, throttling) with bounded, logged backoff, and never on errors
  that say the data itself is missing or damaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from etils import epath

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
T = TypeVar("T")

COMPLETE_MARKER = "COMPLETE"  # written last into a directory published in pieces
# Message fragments of transient failures, as TensorFlow's file systems, tensorstore and
# HTTP clients word them (status names, HTTP codes, socket errors).
TRANSIENT_MARKERS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED",
                     "Service Unavailable", "Too Many Requests",
                     "Connection refused", "Connection reset", "connection reset",
                     "Couldn't connect", "Could not connect", "timed out", "Timeout was reached",
                     "Failed to connect", "SSL connect error", "Empty reply from server")
# HTTP statuses worth a retry, only where the message says it is a status: paths hold
# step numbers ("ckpt/500") and hex digests ("f429d").
TRANSIENT_STATUS = re.compile(r"(?:HTTP|status|code)[^0-9\n]{0,16}\b(408|429|500|502|503|504)\b",
                              re.IGNORECASE)


def path(p: PathLike) -> epath.Path:
    """``p`` as a path of the layer (local, ``gs://``, or any scheme epath knows)."""
    return epath.Path(p)


def is_remote(p: PathLike) -> bool:
    return "://" in os.fspath(p)


def glob(patterns: str) -> list[str]:
    """Sorted, distinct matches of comma-separated globs, local or remote
    (``gs://b/k400/train-*,gs://b/k400/extra-*``)."""
    import tensorflow as tf

    found = set()
    for pattern in filter(None, (p.strip() for p in patterns.split(","))):
        found.update(retry(lambda p=pattern: tf.io.gfile.glob(p), f"listing {pattern}"))
    return sorted(found)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says "try again" (network, throttling) rather than "bad data"."""
    import tensorflow as tf

    # Not ResourceExhaustedError: out of memory is not the network (throttling says 429).
    if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                          tf.errors.AbortedError, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, (FileNotFoundError, tf.errors.NotFoundError, tf.errors.DataLossError)):
        return False
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or error.__context__
    return (any(m in text for m in TRANSIENT_MARKERS) or bool(TRANSIENT_STATUS.search(text))
            or (cause is not None and is_transient(cause)))


def retry(operation: Callable[[], T], what: str, attempts: int = 6, first_delay: float = 1.0,
          max_delay: float = 30.0) -> T:
    """``operation()``, repeated on transient errors with exponential backoff.

    ``attempts`` bounds the tries (about a minute in all with the defaults); the last
    transient error, and any other error at once, propagates.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as e:
            if attempt == attempts or not is_transient(e):
                raise
            log.warning("%s failed (%s: %s); retrying in %.0f s (attempt %d of %d)", what,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "", delay,
                        attempt + 1, attempts)
            time.sleep(delay)
            delay = min(2 * delay, max_delay)
    raise AssertionError("unreachable")


def write_atomic(p: PathLike, data: bytes | str) -> None:
    """Writes ``p`` so that readers see the old content or the new, never a part of it."""
    p = path(p)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(p):
        retry(lambda: p.write_bytes(payload), f"writing {p}")  # one upload: atomic
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    aside = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        aside.write_bytes(payload)
        os.replace(aside, p)
    finally:
        if aside.exists():
            aside.unlink()


def publish(local_file: PathLike, p: PathLike) -> None:
    """Moves a finished local file to ``p`` atomically (an upload for remote ``p``).

    A local ``p`` takes the permissions of any new file (0666 less the umask), not the
    private mode of the staging file, so that other users of a shared disk can read it.
    """
    import tensorflow as tf

    p = path(p)
    if is_remote(p):
        retry(lambda: tf.io.gfile.copy(os.fspath(local_file), os.fspath(p), overwrite=True),
              f"uploading {p}")
        os.remove(local_file)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(local_file, 0o666 & ~current_umask())
    try:
        os.replace(local_file, p)
    except OSError:  # another file system: copy beside the target, then rename
        aside = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copyfile(local_file, aside)
        os.replace(aside, p)
        os.remove(local_file)


@contextlib.contextmanager
def staging_file(p: PathLike, suffix: str = "") -> Iterator[str]:
    """A local filename to write ``p``'s content into; :func:`publish` it when complete.

    Local targets stage beside themselves (the rename is then atomic); remote ones in the
    temporary directory. The staging file is always removed if not published.
    """
    p = path(p)
    directory = None if is_remote(p) else os.fspath(p.parent)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix or ".tmp", dir=directory)
    os.close(fd)
    try:
        yield name
    finally:
        if os.path.exists(name):
            os.remove(name)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
    """A local filename with ``p``'s content: ``p`` itself when local, else a temporary
    download that is always removed (for readers that need a real file, e.g. PyAV)."""
    import tensorflow as tf

    if not is_remote(p):
        yield os.fspath(p)
        return
    fd, name = tempfile.mkstemp(prefix="uniformerv2_", suffix=path(p).suffix)
    os.close(fd)
    try:
        retry(lambda: tf.io.gfile.copy(os.fspath(p), name, overwrite=True), f"downloading {p}")
        yield name
    finally:
        os.remove(name)


def move(source: PathLike, target: PathLike) -> None:
    """Renames a file or directory. Object stores have no directories and no rename: there
    every object is copied and deleted, and a completion marker moves last, so the target
    is complete only once everything has arrived (the source stops being so first)."""
    import tensorflow as tf

    source, target = path(source), path(target)
    if not is_remote(source):
        source.rename(target)
        return
    if not source.is_dir():
        retry(lambda: tf.io.gfile.rename(os.fspath(source), os.fspath(target)), f"moving {source}")
        return
    marker = source / COMPLETE_MARKER
    complete = retry(marker.exists, f"reading {source}")
    if complete:
        marker.unlink()
    for directory, _, files in tf.io.gfile.walk(os.fspath(source)):
        relative = directory[len(os.fspath(source)):].strip("/")
        for name in files:
            destination = target / relative / name if relative else target / name
            retry(lambda d=directory, n=name, t=destination: tf.io.gfile.rename(
                f"{d.rstrip('/')}/{n}", os.fspath(t), overwrite=True), f"moving {source}")
    if complete:
        mark_complete(target)


def absolute(p: PathLike) -> epath.Path:
    """``p`` as a path of the layer, resolved when local (remote paths are already absolute)."""
    p = path(p)
    return p if is_remote(p) else p.resolve()


@contextlib.contextmanager
def staged_directory(directory: PathLike, overwrite: bool = False) -> Iterator[epath.Path]:
    """A directory to assemble ``directory`` in, published when the block ends without error.

    The staging directory (``.<name>.staging``) sits beside its destination; on success it is
    marked complete, then moved into place, so an interrupted writer never leaves a directory
    that passes for complete. An existing ``directory`` is replaced only with ``overwrite``,
    and only after the new one is complete.
    """
    directory = absolute(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
    staging = directory.with_name(f".{directory.name}.staging")
    if staging.exists():
        staging.rmtree()  # a writer interrupted earlier
    staging.mkdir(parents=True)
    yield staging
    mark_complete(staging)
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        if old.exists():
            old.rmtree()
        move(directory, old)
        move(staging, directory)
        old.rmtree()
    else:
        move(staging, directory)


def mark_complete(directory: PathLike) -> None:
    """Publishes a directory written in pieces: the marker is its last object."""
    write_atomic(path(directory) / COMPLETE_MARKER, "")


def is_complete(directory: PathLike) -> bool:
    return retry(lambda: (path(directory) / COMPLETE_MARKER).exists(), f"reading {directory}")
