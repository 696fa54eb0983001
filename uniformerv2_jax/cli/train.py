"""Trains a config, or resumes from the newest checkpoint in --workdir.

  uniformerv2 train --config=configs/kinetics.py:k400/b16_8x224 --workdir=runs/k400
      --config.init_from=clip:ViT-B-16.pt [--config.data.train='records/train-*'] ...
      Any config field can be set with --config.<field>=<value>. Multi-host: add --distributed.
"""

from __future__ import annotations

from absl import app, flags

from uniformerv2_jax.cli import common


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    common.define_config(values, argv, "configs/<exp>.py[:arg]; --config.<field>=<value> sets a field.")
    flags.DEFINE_string("workdir", None, "the run's directory (checkpoints, metrics, plots).",
                        flag_values=values)
    flags.DEFINE_string("compiled", None, "a train step saved by compile --save (refused when the "
                        "config, devices or libraries differ).", flag_values=values)
    common.define_devices(values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import train

    if args.config is None or not args.workdir:
        raise app.UsageError("train needs --config=configs/<exp>.py[:arg] and --workdir=DIR")
    common.initialize_distributed(args)
    common.announce_devices(args, args.config.model.width)
    results = train.train(args.config, args.workdir, compiled=args.compiled)
    if results.get("top1") is not None:
        print(f"validation: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
              f"mean-class {results['mean_class_accuracy']:.4f} ({results['videos']} videos); "
              f"results and plots in {args.workdir}")
