"""Multi-view evaluation of a training checkpoint.

  uniformerv2 eval --workdir=runs/k400 [--checkpoint=best|latest|STEP] [--config=...]
      Writes eval.json, confusion_matrix.png and learning_curve.png in the workdir. The
      config is the run's own unless --config is given. Multi-host: add --distributed.
"""

from __future__ import annotations

from absl import app, flags

from uniformerv2_jax.cli import common


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    common.define_config(values, argv, "configs/<exp>.py[:arg] (default: the run's own config).")
    flags.DEFINE_string("workdir", None, "the training run's directory.", flag_values=values)
    flags.DEFINE_string("checkpoint", None, "best|latest|STEP (default best).", flag_values=values)
    common.define_devices(values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import evaluate, run_dir

    if not args.workdir:
        raise app.UsageError("eval needs --workdir=DIR (a training run)")
    common.initialize_distributed(args)
    config = args.config or run_dir.load_config(args.workdir)
    common.announce_devices(args, config.model.width)
    results = evaluate.evaluate_workdir(args.workdir, config, args.checkpoint or "best")
    print(f"step {results['step']}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
          f"mean-class {results['mean_class_accuracy']:.4f} over {results['videos']} videos "
          f"({results['bad_records']} bad records skipped); wrote {args.workdir}/eval.json, "
          "confusion_matrix.png, learning_curve.png")
