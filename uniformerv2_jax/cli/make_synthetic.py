"""The synthetic temporal task (the demo's data) as videos and records.

  uniformerv2 make_synthetic --out=data/synthetic
"""

from __future__ import annotations

from absl import flags


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("out", "data/synthetic", "output directory.", flag_values=values)
    flags.DEFINE_integer("videos_per_class", 96, "training videos per class.", flag_values=values)
    flags.DEFINE_integer("val_per_class", 24, "validation videos per class.", flag_values=values)
    flags.DEFINE_integer("workers", None, "worker processes (default: cores).", flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax.input import synthetic

    for line in synthetic.write_task(args.out, args.videos_per_class, args.val_per_class, args.workers):
        print(line)
