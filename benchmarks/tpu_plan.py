"""Per-chip memory, estimated step time, clips/s and MFU of zoo models on TPU slices, from
deviceless compiles (the ``tpu`` extra; no TPU needed): the TPU plan table of docs/tpu.md.

    python benchmarks/tpu_plan.py [--models=b16_8x224,l14_16x224] [--chips=v5e,v5p,v6e]
        [--remat=l14_32x224,l14_336_32x336] [--max_batch=N] [--json=PATH]
    python benchmarks/tpu_plan.py --models=tiny --chips=v5e --probe=1,2 --max_batch=2   # 3 compiles, ~40 s

For each model it compiles the train step (bfloat16 compute, data parallel over 4 chips)
at two batches a chip on v5p (``--probe``, default 2 and 4; the largest HBM), fits XLA's
per-chip plan as memory = a + b * clips, and
for each chip kind compiles at the largest batch that plan predicts to fit (one clip less
each time it does not), at most ``--max_batch``. Every figure printed comes from the
compile at that batch: the compiler's memory plan and its roofline estimate of the step
(``aot.estimated_seconds``: collectives costed as HBM traffic only), the MFU against the
datasheet peak. Estimates, not measurements.

``--models`` takes the shorthands of ``benchmarks/train_speed.py`` and ``tiny``, its
``--tiny`` model: about 10 s a compile, a check that the script works rather than a plan.
Its memory barely grows with the batch, so the fitted plan would put thousands of clips on
a chip, while its compile time grows with the batch (64 clips: over a minute): its
``--max_batch`` defaults to :data:`TINY_MAX_BATCH`.
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

from benchmarks.train_speed import SHORTHANDS, tiny_config, zoo_config  # noqa: E402
from uniformerv2_jax import aot  # noqa: E402

SLICES = {"v5e": "v5e-4", "v5p": "v5p-8", "v6e": "v6e-4"}  # 4 chips each
HEADROOM = 0.97  # plan within 97% of the HBM, as XLA leaves some for itself
TINY = "tiny"  # train_speed.py's --tiny model
TINY_MAX_BATCH = 8  # clips a chip: the tiny model's compile time grows with the batch (64: a minute)


def model_config(name: str, remat: bool):
    config = tiny_config() if name == TINY else zoo_config(name)
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


def planned_batch(hbm_gib: float, fixed: float, per_clip: float, max_batch: int) -> int:
    """The most clips a chip that the plan ``fixed + per_clip * clips`` puts within
    :data:`HEADROOM` of ``hbm_gib``, at most ``max_batch`` (0: no limit)."""
    if per_clip <= 0:  # the probes' plans do not grow (small models at small batches)
        if not max_batch:
            raise SystemExit("the memory plan does not grow between the --probe batches: give "
                             "larger ones, or --max_batch")
        return max_batch
    batch = max(1, int((HEADROOM * hbm_gib - fixed) / per_clip))
    return min(batch, max_batch) if max_batch else batch


def plan(name: str, chips: list[str], remat: bool, probe: tuple[int, int], max_batch: int) -> list[dict]:
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
        batch = planned_batch(target.hbm_gib, fixed, per_clip, max_batch)
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
    parser.add_argument("--models", default="b16_8x224,l14_16x224",
                        help=f"some of {sorted(SHORTHANDS)} and {TINY!r}, comma-separated")
    parser.add_argument("--chips", default="v5e,v5p,v6e")
    parser.add_argument("--remat", default="", help="models compiled with model.remat=True")
    parser.add_argument("--probe", default="2,4", help="the two batches a chip the plan is fitted on")
    parser.add_argument("--max_batch", type=int, default=0,
                        help=f"the most clips a chip to compile (default: no limit; {TINY_MAX_BATCH} "
                             f"for {TINY!r})")
    parser.add_argument("--json", help="write every compile's report here")
    args = parser.parse_args()
    chips = args.chips.split(",")
    remat = set(filter(None, args.remat.split(",")))
    rows = []
    for name in args.models.split(","):
        if name not in SHORTHANDS and name != TINY:
            raise SystemExit(f"--models: {name!r} is not one of {sorted(SHORTHANDS)} or {TINY!r}")
        max_batch = args.max_batch or (TINY_MAX_BATCH if name == TINY else 0)
        rows += plan(name, chips, name in remat, tuple(int(b) for b in args.probe.split(",")), max_batch)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
