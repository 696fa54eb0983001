"""CPU hosts: jemalloc as the allocator of training processes, native bfloat16 detection.

XLA:CPU allocates the temporary buffer of a jitted step afresh on every call (gigabytes
for a full-size train step). glibc's malloc serves a block that large with ``mmap`` and
gives it back with ``munmap``, so every step faults all its pages in again, costing
system time. jemalloc with :data:`JEMALLOC_CONF` keeps freed pages and hands them out
again, so the faults drop to about zero and the step runs faster (figures in
docs/performance.md, "CPU: jemalloc, and float32 or bfloat16"; ``benchmarks/cpu_step.py``).
It has to be there from the process's start (``LD_PRELOAD``), so the training entry point
re-executes itself once with it (:func:`reexec_with_jemalloc`), and ``python -m
uniformerv2_jax.cpu COMMAND ...`` runs any command with it (the Makefile's tests and
benchmarks).

The library is Debian/Ubuntu's ``libjemalloc2`` (``apt-get install libjemalloc2``), or
``jemalloc`` on Fedora/RHEL/Arch; :envvar:`UNIFORMERV2_JEMALLOC` = ``0`` turns the
preload off, a path chooses the library. Nothing here imports JAX.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SWITCH = "UNIFORMERV2_JEMALLOC"  # "0"/"off": never preload; a path: that library
JEMALLOC_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",  # Debian / Ubuntu: libjemalloc2
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",  # Fedora / RHEL: jemalloc
    "/usr/lib/libjemalloc.so.2",  # Arch: jemalloc
    "/usr/local/lib/libjemalloc.so.2",  # built from source
)
# Every allocation from the same pool of extents, and freed pages never returned to the
# system (the process's memory stays at its peak, which a training process reaches at
# its first step anyway).
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
OFF = ("0", "off", "false", "no")
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo: native bfloat16 dot products


def find_jemalloc(environ: Mapping[str, str] = os.environ) -> str | None:
    """The jemalloc library to preload: :envvar:`UNIFORMERV2_JEMALLOC`'s path, else the
    first of :data:`JEMALLOC_LIBRARIES` present; None when switched off or missing."""
    choice = environ.get(SWITCH, "").strip()
    if choice.lower() in OFF:
        return None
    if choice and choice.lower() not in ("1", "on", "true", "yes"):
        return choice if Path(choice).is_file() else None
    return next((lib for lib in JEMALLOC_LIBRARIES if Path(lib).is_file()), None)


def jemalloc_loaded(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LD_PRELOAD`` names a jemalloc (this process's, by default)."""
    return "jemalloc" in environ.get("LD_PRELOAD", "")


def jemalloc_env(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """``environ`` with jemalloc preloaded (first in ``LD_PRELOAD``; ``MALLOC_CONF``
    :data:`JEMALLOC_CONF` unless set), or None when it is preloaded already, switched off
    or not installed."""
    if jemalloc_loaded(environ) or not sys.platform.startswith("linux"):
        return None
    library = find_jemalloc(environ)
    if library is None:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library} {environ.get('LD_PRELOAD', '')}".strip()
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def reexec_with_jemalloc() -> None:
    """Replaces this process with the same command under jemalloc where
    :func:`jemalloc_env` gives an environment (the new process finds jemalloc preloaded
    and goes on); otherwise, or if the exec fails, returns. Call it before any thread
    or accelerator is started."""
    env = jemalloc_env()
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as error:  # carry on with the system allocator
        print(f"note: could not re-execute with jemalloc ({error}); using the system allocator",
              file=sys.stderr)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of this host's first CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bfloat16(flags: set[str] | None = None) -> bool:
    """Whether the CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16):
    without them bfloat16 compute is emulated and slower than float32."""
    return bool(BFLOAT16_FLAGS & (cpu_flags() if flags is None else flags))


def main(argv: list[str]) -> None:
    """``python -m uniformerv2_jax.cpu COMMAND [ARGS...]``: COMMAND under jemalloc when it
    is installed (and not switched off), else as it is."""
    if not argv:
        sys.exit("usage: python -m uniformerv2_jax.cpu COMMAND [ARGS...]: runs COMMAND with "
                 "jemalloc preloaded when it is installed")
    env = jemalloc_env() or dict(os.environ)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
