"""Official, MMAction2 or CLIP weights to an orbax checkpoint, or back.

  uniformerv2 convert --from=official --src=k400_b16.pyth --out=trained/k400_b16
      [--model_config=config.yaml|.json|.py] [--model_arg=t_size=16 ...] [--head_map=k400]
      (--from=official also recognises MMAction2 checkpoints by their keys)
  uniformerv2 convert --from=clip --src=ViT-B-16.pt --out=trained/clip_b16
      [--model_arg=no_lmhra=false --model_arg=temporal_downsample=true ...]
  uniformerv2 convert --from=mmaction2 --src=mmaction2_k400.pth --out=trained/k400_b16
      [--model_config=mmaction2_config.py] [--keep_head_order]
  uniformerv2 convert --from=converted --src=trained/k400_b16 --out=k400_b16.safetensors
      [--layout=official|mmaction2]
      Writes an orbax checkpoint (a directory) that training starts from, or, when --out
      ends in .safetensors/.pth, the official state dict (``backbone.`` keys) or, with
      --layout=mmaction2, MMAction2's ({"state_dict": ..., "meta": ...} in a .pth). A
      400-class MMAction2 head is re-indexed between MMAction2's K400 order and ours.
"""

from __future__ import annotations

import yaml
from absl import app, flags

from uniformerv2_jax import storage


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_enum("from", None, ["official", "mmaction2", "clip", "converted"], "source kind.",
                      flag_values=values)
    flags.DEFINE_string("src", None, "source weight file or converted directory.", flag_values=values)
    flags.DEFINE_string("out", None, "output directory (orbax) or .safetensors/.pth file.",
                        flag_values=values)
    flags.DEFINE_string("model_config", None, "model config (.json, SlowFast .yaml or MMAction2 .py).",
                        flag_values=values)
    flags.DEFINE_multi_string("model_arg", [], "official constructor argument, NAME=VALUE.",
                              flag_values=values)
    flags.DEFINE_string("head_map", None, "re-index the head: k400|k600|k700 (K710 maps), first:N, "
                        "or a JSON list of source rows.", flag_values=values)
    flags.DEFINE_enum("layout", "official", ["official", "mmaction2"], "the key layout of a "
                      ".safetensors/.pth --out (mmaction2: backbone.* + cls_head.fc_cls.*).",
                      flag_values=values)
    flags.DEFINE_bool("keep_head_order", False, "--from=mmaction2 / --layout=mmaction2: keep a "
                      "400-class head's rows as they are (default: re-index K400 between MMAction2's "
                      "alphabetical order and the UniFormerV2 one).", flag_values=values)
    flags.DEFINE_bool("overwrite", False, "replace an existing output.", flag_values=values)
    return values


def parse_model_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise app.UsageError(f"--model_arg={item!r}: expected NAME=VALUE")
        out[name.strip()] = yaml.safe_load(value)
    return out


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax.convert import from_clip, from_official, to_official, transfer_head, write_state_dict
    from uniformerv2_jax.convert.mmaction2 import from_mmaction2, write_mmaction2
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    kind = args["from"].value
    if not kind or not args.src or not args.out:
        raise app.UsageError("convert needs --from, --src and --out")
    if args.layout == "mmaction2" and storage.path(args.out).suffix not in (".safetensors", ".pth"):
        raise app.UsageError("--layout=mmaction2 needs --out ending in .pth or .safetensors")
    kwargs = parse_model_args(args.model_arg)
    if kind == "official":
        model, variables = from_official(args.src, config=args.model_config, **kwargs)
    elif kind == "mmaction2":
        model, variables = from_mmaction2(args.src, config=args.model_config,
                                          keep_head_order=args.keep_head_order, **kwargs)
    elif kind == "clip":
        model, variables = from_clip(args.src, config=args.model_config, **kwargs)
    else:
        model, variables = load_converted(args.src)
    if args.head_map:
        model, variables = transfer_head(model, variables, args.head_map)

    out = storage.path(args.out)
    if args.layout == "mmaction2":
        write_mmaction2(out, model, variables, args.keep_head_order, overwrite=args.overwrite)
    elif out.suffix in (".safetensors", ".pth"):
        write_state_dict(out, to_official(model, variables), overwrite=args.overwrite)
    else:
        save_converted(out, model, variables, overwrite=args.overwrite)
    print(f"wrote {out} ({model.width}-wide, {model.layers} layers, {model.num_classes} classes)")
