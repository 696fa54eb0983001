"""uniformerv2_jax/cpu.py: the jemalloc preload of training processes, native bfloat16."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniformerv2_jax import cpu

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any preload (``make test`` runs under jemalloc)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", cpu.SWITCH)}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def fake_library(tmp_path: Path) -> str:
    path = tmp_path / "libjemalloc_fake.so"  # not an ELF file: ld.so says so and ignores it
    path.write_bytes(b"")
    return str(path)


def test_find_jemalloc_switch(tmp_path):
    library = fake_library(tmp_path)
    assert cpu.find_jemalloc({cpu.SWITCH: library}) == library
    assert cpu.find_jemalloc({cpu.SWITCH: str(tmp_path / "missing.so")}) is None
    for off in ("0", "off", "False"):
        assert cpu.find_jemalloc({cpu.SWITCH: off}) is None
    installed = next((lib for lib in cpu.JEMALLOC_LIBRARIES if Path(lib).is_file()), None)
    assert cpu.find_jemalloc({}) == installed == cpu.find_jemalloc({cpu.SWITCH: "1"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_jemalloc_env(tmp_path):
    library = fake_library(tmp_path)
    env = cpu.jemalloc_env({cpu.SWITCH: library, "LD_PRELOAD": "/lib/other.so", "HOME": "/h"})
    assert env == {cpu.SWITCH: library, "LD_PRELOAD": f"{library} /lib/other.so",
                   "MALLOC_CONF": cpu.JEMALLOC_CONF, "HOME": "/h"}
    # A MALLOC_CONF of the user's is kept; nothing happens where jemalloc is preloaded or off.
    assert cpu.jemalloc_env({cpu.SWITCH: library, "MALLOC_CONF": "narenas:2"})["MALLOC_CONF"] == "narenas:2"
    assert cpu.jemalloc_env({cpu.SWITCH: library, "LD_PRELOAD": "/x/libjemalloc.so.2"}) is None
    assert cpu.jemalloc_env({cpu.SWITCH: "0"}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_reexec_once(tmp_path):
    """The process replaces itself once, with the preload; then it goes on."""
    library = fake_library(tmp_path)
    code = ("import os; from uniformerv2_jax import cpu; print('start', flush=True); "
            "cpu.reexec_with_jemalloc(); print(os.environ.get('LD_PRELOAD'), os.environ.get('MALLOC_CONF'))")
    run = subprocess.run([sys.executable, "-c", code], env=clean_env(**{cpu.SWITCH: library}),
                         capture_output=True, text=True, check=True)
    assert run.stdout.split("\n") == ["start", "start", f"{library} {cpu.JEMALLOC_CONF}", ""]
    run = subprocess.run([sys.executable, "-c", code], env=clean_env(**{cpu.SWITCH: "0"}),
                         capture_output=True, text=True, check=True)
    assert run.stdout == "start\nNone None\n"


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_main_train_reexecutes(tmp_path):
    """``main.py train`` re-executes itself with the preload (ld.so names the fake library
    it cannot load), then fails as it would have: no --config."""
    library = fake_library(tmp_path)
    run = subprocess.run([sys.executable, "main.py", "train"], env=clean_env(**{cpu.SWITCH: library}),
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and library in run.stderr and "train needs --config" in run.stderr
    run = subprocess.run([sys.executable, "main.py", "train"], env=clean_env(**{cpu.SWITCH: "0"}),
                         capture_output=True, text=True, cwd=ROOT)
    assert library not in run.stderr and "train needs --config" in run.stderr


@pytest.mark.skipif(cpu.find_jemalloc({}) is None, reason="no jemalloc installed (libjemalloc2)")
def test_command_under_jemalloc():
    """``python -m uniformerv2_jax.cpu COMMAND`` runs COMMAND with jemalloc in its memory map."""
    code = "import sys; sys.exit(0 if 'jemalloc' in open('/proc/self/maps').read() else 3)"
    subprocess.run([sys.executable, "-m", "uniformerv2_jax.cpu", sys.executable, "-c", code],
                   env=clean_env(), check=True, cwd=ROOT)
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-c", code], env=clean_env(), check=True)


def test_native_bfloat16():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
    assert cpu.cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}
    assert cpu.native_bfloat16(cpu.cpu_flags(cpuinfo))
    assert cpu.native_bfloat16({"amx_bf16", "avx2"})
    assert not cpu.native_bfloat16({"avx2", "fma", "avx512f"})
    assert cpu.cpu_flags("") == set()
    assert isinstance(cpu.native_bfloat16(), bool)  # this host's
