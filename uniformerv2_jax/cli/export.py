"""Serving artifacts (jax.export, TF SavedModel) that run without this package.

  uniformerv2 export --checkpoint=runs/k400 --out=export/k400 [--dtype=float32|bfloat16]
      [--formats=jax,savedmodel] [--platforms=cpu,cuda,tpu] [--class_names=FILE]
      OUT/model.jax_export (jax.export, weights inside), OUT/saved_model (TF SavedModel,
      signature serving_default), labels.txt, export.json. Both take uint8 frames
      (N, T, H, W, 3) and return float32 logits.
"""

from __future__ import annotations

from absl import app, flags


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("checkpoint", None, "a training workdir or a converted directory.",
                        flag_values=values)
    flags.DEFINE_string("out", None, "output directory.", flag_values=values)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype (the weights are "
                      "kept as stored; the logits are float32 either way).", flag_values=values)
    flags.DEFINE_string("formats", "jax,savedmodel", "comma-separated, of jax (a jax.export artifact) "
                        "and savedmodel (a TensorFlow SavedModel).", flag_values=values)
    flags.DEFINE_string("platforms", "cpu,cuda,tpu", "platforms the artifacts are lowered for (they "
                        "run only on these).", flag_values=values)
    flags.DEFINE_string("class_names", None, "class names, one per line (default: the training "
                        "config's, or the shipped list for the head's class count).", flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace an existing output.", flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import export

    if not args.checkpoint or not args.out:
        raise app.UsageError("export needs --checkpoint=DIR (a training workdir or a converted "
                             "directory) and --out=DIR")
    out = export.export(args.checkpoint, args.out, dtype=args.dtype, formats=args.formats,
                        platforms=args.platforms, class_names=args.class_names,
                        overwrite=args.overwrite)
    print(f"wrote {out} ({args.formats}, {args.dtype})")
