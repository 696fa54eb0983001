"""Per-chip memory, estimated step time, clips/s and MFU of zoo models on TPU slices, from
deviceless compiles (the ``tpu`` extra; no TPU needed): the README's TPU table.

    python benchmarks/tpu_plan.py [--models=b16_8x224,l14_16x224] [--chips=v5e,v5p,v6e]
        [--remat=l14_32x224,l14_336_32x336] [--json=PATH]

For each model it compiles the train step (bfloat16 compute, data parallel over 4 chips)
at two batches a chip on v5p (``--probe``, default 2 and 4; the largest HBM), fits XLA's
per-chip plan as memory = a + b * clips, and
for each chip kind compiles at the largest batch that plan predicts to fit (one clip less
each time it does not). Every figure printed comes from the compile at that batch: the
compiler's memory plan and its roofline estimate of the step (``aot.estimated_seconds``:
collectives costed as HBM traffic only), the MFU against the datasheet peak. Estimates,
not measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniformerv2_jax import topology  # noqa: E402

topology.deviceless_environment()

from benchmarks.train_speed import SHORTHANDS, zoo_config  # noqa: E402
from uniformerv2_jax import aot  # noqa: E402

SLICES = {"v5e": "v5e-4", "v5p": "v5p-8", "v6e": "v6e-4"}  # 4 chips each
HEADROOM = 0.97  # plan within 97% of the HBM, as XLA leaves some for itself


def model_config(name: str, remat: bool):
    config = zoo_config(name)
    config.model.update(dtype="bfloat16", remat=remat, scan=False)
    return config


def compile_at(config, target, batch: int) -> dict:
    start = time.perf_counter()
    report = aot.compile_step(config, target, batch).report
    report["compile_seconds"] = time.perf_counter() - start
    memory = f"peak {report['peak_gib']:.2f} GiB" if report["fits"] else "does not fit"
    print(f"  {target.name} {batch} a chip: {memory} ({report['compile_seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return report


def plan(name: str, chips: list[str], remat: bool, probe: tuple[int, int]) -> list[dict]:
    config = model_config(name, remat)
    v5p = topology.describe(SLICES["v5p"])
    low, high = (compile_at(config, v5p, b) for b in probe)
    if not (low["fits"] and high["fits"]):
        raise SystemExit(f"{name}: --probe={probe} does not fit a v5p chip; give smaller batches")
    per_clip = (high["peak_gib"] - low["peak_gib"]) / (probe[1] - probe[0])
    fixed = low["peak_gib"] - probe[0] * per_clip
    rows = []
    for chip in chips:
        target = topology.describe(SLICES[chip])
        batch = max(1, int((HEADROOM * target.hbm_gib - fixed) / per_clip))
        report = compile_at(config, target, batch)
        while not report["fits"] and batch > 1:
            batch -= 1
            report = compile_at(config, target, batch)
        rows.append({**report, "name": name, "remat": remat})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # kept if a later compile fails
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | chip | remat | clips a chip | peak GiB of HBM | GFLOP a chip | est. step ms "
          "| est. clips/s a chip | est. MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["fits"]:
            print(f"| {r['name']} | {r['device_kind']} | {r['remat']} | does not fit at 1 | | | | | |")
            continue
        print(f"| {r['name']} | {r['device_kind']} | {'yes' if r['remat'] else 'no'} | "
              f"{r['batch_per_device']} | {r['peak_gib']:.1f} of {r['hbm_gib']:.2f} | "
              f"{r['gflop_per_chip']:,.0f} | {r['estimated_step_seconds'] * 1e3:.0f} | "
              f"{r['estimated_clips_per_second'] / r['chips']:.1f} | {r['estimated_mfu']:.1%} |")
    r = rows[0]
    print(f"\njax {r['jax']}, libtpu {r['libtpu']}; bfloat16 compute, data parallel over "
          f"{r['chips']} chips; the TPU compiler's estimates (roofline, collectives as HBM traffic).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="b16_8x224,l14_16x224")
    parser.add_argument("--chips", default="v5e,v5p,v6e")
    parser.add_argument("--remat", default="", help="models compiled with model.remat=True")
    parser.add_argument("--probe", default="2,4", help="the two batches a chip the plan is fitted on")
    parser.add_argument("--json", help="write every compile's report here")
    args = parser.parse_args()
    chips = args.chips.split(",")
    remat = set(filter(None, args.remat.split(",")))
    rows = []
    for name in args.models.split(","):
        if name not in SHORTHANDS:
            raise SystemExit(f"--models: {name!r} is not one of {sorted(SHORTHANDS)}")
        rows += plan(name, chips, name in remat, tuple(int(b) for b in args.probe.split(",")))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
