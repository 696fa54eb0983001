"""Every script of benchmarks/ run whole at its smallest size: it exits cleanly and prints its
table with real figures. Nothing else runs them, so without these they could break unseen.

Each takes 20-60 s on 2 busy cores (tiny models, one timed step or repeat; about 4 minutes
in all). The figures are checked for being figures (positive times, rates, bytes), not
against expected values, except where one is a check of correctness (the kernel forms
agree, bfloat16 logits lie near float32's). Left out, at a minute more each:
``input_speed.py --gcs`` and ``memory.py --one-device``.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import GRADIENT_RTOL, ROOT

pytestmark = pytest.mark.e2e

TIMEOUT = 300  # seconds: a few times what each takes on 2 busy cores


def run_benchmark(script: str, *args: str) -> str:
    """The stdout of ``benchmarks/SCRIPT args``, asserting exit status 0."""
    # One CPU device, as the scripts run by hand (conftest simulates 8 for the tests);
    # memory.py sets its own.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def markdown_table(stdout: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header starts with ``| first_column |``, as
    {header: cell}; asserts the header, its separator and at least one row."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"\| {re.escape(first_column)} +\|", line)]
    assert starts, f"no table headed {first_column!r} in:\n{stdout[-3000:]}"
    header = [cell.strip() for cell in lines[starts[0]].strip("|").split("|")]
    assert lines[starts[0] + 1].startswith("|-"), lines[starts[0] + 1]
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    assert rows, f"table {first_column!r} has no rows:\n{stdout[-3000:]}"
    return rows


def number(cell: str) -> float:
    """A table's figure: ``1,234.5``, ``1.3x``, ``0.7%`` -> float."""
    return float(cell.replace(",", "").rstrip("x%"))


def test_train_speed_times_the_tiny_step(tmp_path):
    out = run_benchmark("train_speed.py", "--tiny", "--steps=1", "--warmup=0", f"--json={tmp_path}/r.json")
    [row] = markdown_table(out, "model")
    assert (row["model"], row["compute"], row["mesh"]) == ("tiny (64w x 2, 4x32)", "bfloat16", "1x1x1")
    assert number(row["clips/s"]) > 0 and row["MFU"].endswith("%")  # the CPU's measured peak
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["step_seconds"] > 0 and result["gflop_per_step_per_device"] > 0


def test_cpu_step_runs_a_variant_in_a_child_process(tmp_path):
    out = run_benchmark("cpu_step.py", "--tiny", "--allocators=system", "--steps=1", "--warmup=0",
                        f"--json={tmp_path}/r.json")
    [row] = markdown_table(out, "allocator")
    assert (row["allocator"], row["compute"]) == ("system", "float32")
    assert "jemalloc" not in row["loaded"]  # the child's own memory map
    assert number(row["step s"]) > 0 and row["speed (first row = 1)"] == "1.00x"
    [result] = json.loads((tmp_path / "r.json").read_text())
    assert len(result["step_seconds"]) == 1 and result["compile_seconds"] > 0


def test_forward_speed_tables_of_the_tiny_model():
    out = run_benchmark("forward_speed.py", "--tiny", "--repeats=1")
    assert re.search(r"^setting +compute +compile s +s/clip +GFLOP/clip", out, re.M), out
    rows = re.findall(r"^(K400 \(no local MHRA\)|local MHRA x2) +(float32|bfloat16|bf16\+bf16 w) +"
                      r"([\d.]+) +([\d.]+) +[\d.]+ +\d+ *(\S*)$", out, re.M)
    assert len(rows) == 6, out
    for _, compute, compile_seconds, _, deviation in rows:
        assert float(compile_seconds) > 0
        # bfloat16 logits near float32's: a real deviation, neither zero nor garbage. The
        # bound: test_model's for bfloat16 compute, 0.05 of the logits' scale (a dozen
        # roundings of 2^-8 in sequence), twice over for the bfloat16-weights row; the tiny
        # model's logits (random weights, perturbed) have a scale below 1.
        assert (deviation == "") if compute == "float32" else (0 < float(deviation) < 0.1)
    assert re.search(r"^component \(tiny 4x32\) +f32 ms +bf16 ms$", out, re.M), out
    assert re.search(r"^global block \(DPE \+ cross-attention\) +[\d.]+ +[\d.]+$", out, re.M), out
    loop, scan = (float(re.search(rf"^{name} +([\d.]+)$", out, re.M)[1]) for name in ("plain loop", "scan"))
    assert loop > 0 and scan > 0


def test_kernels_compares_every_operations_forms():
    out = run_benchmark("kernels.py", "--repeats=1")
    rows = markdown_table(out, "operation")
    assert {r["operation"] for r in rows} == {"self-attention", "local MHRA conv (3,1,1)", "DPE conv (3,3,3)"}
    assert {r["form"] for r in rows} >= {"two matmuls (ours)", "shifted sums (ours)", "grouped conv"}
    for r in rows:
        assert number(r["fwd+bwd ms"]) > 0 and number(r["speed vs ours"]) > 0
        # float32: the forms agree as two float32 computations of a gradient do, relative
        # to the array's largest magnitude (the suite's bound from the official fixtures)
        assert number(r["max rel dev"]) < GRADIENT_RTOL
    assert re.search(r"^kernels='auto' here \(float32, head_dim 64\): \w+\+\w+$", out, re.M), out


def test_memory_plans_the_tiny_step_under_fsdp():
    out = run_benchmark("memory.py", "--tiny", "--fsdp", "8")
    [row] = markdown_table(out, "model")
    assert (row["model"], row["fsdp"]) == ("tiny", "8")
    arguments, temporaries = number(row["arguments (state + batch)"]), number(row["temporaries"])
    assert arguments > 0 and temporaries > 0 and number(row["total"]) == arguments + temporaries


def test_tpu_plan_plans_the_tiny_model_on_a_described_v5e(tmp_path):
    pytest.importorskip("libtpu", reason="compiling for TPUs needs the tpu extra")
    out = run_benchmark("tpu_plan.py", "--models=tiny", "--chips=v5e", "--probe=1,2", "--max_batch=2",
                        f"--json={tmp_path}/r.json")
    [row] = markdown_table(out, "model")
    assert (row["model"], row["chip"], row["remat"]) == ("tiny", "TPU v5 lite", "no")
    assert row["clips a chip"] == "2"  # --max_batch
    assert row["peak GiB of HBM"].endswith("of 15.75") and number(row["est. clips/s a chip"]) > 0
    [report] = json.loads((tmp_path / "r.json").read_text())
    assert report["fits"] and report["estimated_step_seconds"] > 0


def baseline_args() -> list[str]:
    """The default baseline where this clone holds it; a shallow clone compares HEAD with itself."""
    script = (ROOT / "benchmarks" / "input_speed.py").read_text()
    baseline = re.search(r'^BASELINE = "(\w+)"', script, re.M)[1]
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{baseline}^{{commit}}"],
                           capture_output=True)
    return [] if found.returncode == 0 else ["--baseline=HEAD"]


def test_input_speed_compares_the_baseline_pipeline_with_this_one():
    out = run_benchmark("input_speed.py", "--videos=4", "--seconds=0.5", "--rounds=1", *baseline_args())
    assert re.search(r"^baseline \w+ vs this checkout, first batch: without RandAugment: ", out, re.M), out
    rows = markdown_table(out, "training clips, full augmentation")
    names = [r["training clips, full augmentation"] for r in rows]
    assert names == ["8x224, local disk", "16x224, local disk"]
    for r in rows:
        assert number(r["baseline clips/s"]) > 0 and number(r["now clips/s"]) > 0
    assert float(re.search(r"^eval videos 8x224, 4 clips x 3 crops: ([\d.]+) videos/s", out, re.M)[1]) > 0
