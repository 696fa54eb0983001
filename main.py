"""uniformerv2_jax command line.

  python main.py demo
      Converts the shipped official-layout fixture (data/fixtures/tiny_a.*), saves and
      reloads it as an orbax checkpoint, runs the forward pass and prints the logits next
      to the official PyTorch model's.

  python main.py convert --from=official --src=k400_b16.pyth --out=ckpt/k400_b16
      [--model_config=config.yaml|.json] [--model_arg=t_size=16 ...] [--head_map=k400]
  python main.py convert --from=clip --src=ViT-B-16.pt --out=ckpt/clip_b16
      [--model_arg=no_lmhra=false --model_arg=temporal_downsample=true ...]
  python main.py convert --from=converted --src=ckpt/k400_b16 --out=k400_b16.safetensors
      Writes an orbax checkpoint (a directory) that training starts from, or, when --out
      ends in .safetensors/.pth, the official state dict (``backbone.`` keys).

  python main.py write_records --videos=DIR --out=records/ --name=train --num_shards=64
  python main.py write_records --csv=k400_train.csv --video_root=DIR
      --classes=data/labels/kinetics400.txt --out=records/ --name=train
  python main.py write_records --ssv2_list=train.json --ssv2_labels=labels.json
      --video_root=DIR --out=records/ --name=train
      Raw videos -> sharded DMVR TFRecords (--fps=10 --short_side=256 as DMVR; resumable;
      videos that fail to decode are listed in <name>-failures.json).

  python main.py make_synthetic --out=data/synthetic
      The synthetic temporal task as videos and train/val records.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import yaml
from absl import app, flags, logging

ROOT = Path(__file__).resolve().parent
COMMANDS = ("demo", "convert", "write_records", "make_synthetic")

flags.DEFINE_enum("from", None, ["official", "clip", "converted"], "convert: source kind.")
flags.DEFINE_string("src", None, "convert: source weight file or converted directory.")
flags.DEFINE_string("out", None, "convert: output directory (orbax) or .safetensors/.pth file.")
flags.DEFINE_string("model_config", None, "convert: official config (.json or SlowFast .yaml).")
flags.DEFINE_multi_string("model_arg", [], "convert: official constructor argument, NAME=VALUE.")
flags.DEFINE_string("head_map", None, "convert: re-index the head: k400|k600|k700 (K710 maps), "
                    "first:N, or a JSON list of source rows.")
flags.DEFINE_bool("overwrite", False, "convert: replace an existing output.")
flags.DEFINE_string("workdir", "/tmp/uniformerv2_demo", "demo: where the checkpoint is written.")
flags.DEFINE_string("videos", None, "write_records: folder-per-class video tree.")
flags.DEFINE_string("csv", None, "write_records: 'path,label' or Kinetics CSV.")
flags.DEFINE_string("ssv2_list", None, "write_records: Something-Something list JSON.")
flags.DEFINE_string("ssv2_labels", None, "write_records: Something-Something labels JSON.")
flags.DEFINE_string("video_root", None, "write_records: where the CSV/list videos are.")
flags.DEFINE_string("classes", None, "write_records: class names, one per line.")
flags.DEFINE_string("name", "train", "write_records: shard base name.")
flags.DEFINE_integer("num_shards", 16, "write_records: number of shards.")
flags.DEFINE_float("fps", 10.0, "write_records: frames per second kept.")
flags.DEFINE_integer("short_side", 256, "write_records: short side of stored frames.")
flags.DEFINE_integer("workers", None, "write_records: worker processes (default: cores).")
flags.DEFINE_integer("videos_per_class", 96, "make_synthetic: training videos per class.")
flags.DEFINE_integer("val_per_class", 24, "make_synthetic: validation videos per class.")
FLAGS = flags.FLAGS


def parse_model_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise app.UsageError(f"--model_arg={item!r}: expected NAME=VALUE")
        out[name.strip()] = yaml.safe_load(value)
    return out


def convert() -> None:
    from uniformerv2_jax.convert import from_clip, from_official, to_official, transfer_head
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    kind = FLAGS["from"].value
    if not kind or not FLAGS.src or not FLAGS.out:
        raise app.UsageError("convert needs --from, --src and --out")
    kwargs = parse_model_args(FLAGS.model_arg)
    if kind == "official":
        model, variables = from_official(FLAGS.src, config=FLAGS.model_config, **kwargs)
    elif kind == "clip":
        model, variables = from_clip(FLAGS.src, config=FLAGS.model_config, **kwargs)
    else:
        model, variables = load_converted(FLAGS.src)
    if FLAGS.head_map:
        model, variables = transfer_head(model, variables, FLAGS.head_map)

    out = Path(FLAGS.out)
    if out.suffix in (".safetensors", ".pth"):
        write_official(out, to_official(model, variables))
    else:
        save_converted(out, model, variables, overwrite=FLAGS.overwrite)
    print(f"wrote {out} ({model.width}-wide, {model.layers} layers, {model.num_classes} classes)")


def write_records() -> None:
    from uniformerv2_jax.input import writer

    if not FLAGS.out:
        raise app.UsageError("write_records needs --out")
    if FLAGS.videos:
        names = read_class_names(FLAGS.classes) if FLAGS.classes else None
        entries, names = writer.folder_entries(FLAGS.videos, names)
    elif FLAGS.csv:
        if not (FLAGS.video_root and FLAGS.classes):
            raise app.UsageError("--csv needs --video_root and --classes")
        entries = writer.csv_entries(FLAGS.csv, FLAGS.video_root, read_class_names(FLAGS.classes))
    elif FLAGS.ssv2_list:
        if not (FLAGS.ssv2_labels and FLAGS.video_root):
            raise app.UsageError("--ssv2_list needs --ssv2_labels and --video_root")
        entries = writer.something_something_entries(FLAGS.ssv2_list, FLAGS.ssv2_labels,
                                                      FLAGS.video_root)
    else:
        raise app.UsageError("write_records needs --videos, --csv or --ssv2_list")
    report = writer.write_records(entries, FLAGS.out, FLAGS.name, FLAGS.num_shards, FLAGS.fps,
                                  FLAGS.short_side, workers=FLAGS.workers)
    print(f"{report['videos']} videos -> {FLAGS.num_shards} shards in {FLAGS.out} "
          f"({report['written']} written, {report['kept']} kept); {report['failed']} failed "
          f"to decode, listed in {report['failures_file']}")


def read_class_names(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path}")
    names = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def make_synthetic() -> None:
    from uniformerv2_jax.input import synthetic, writer

    out = Path(FLAGS.out or "data/synthetic")
    for split, count, seed in (("train", FLAGS.videos_per_class, 0), ("val", FLAGS.val_per_class, 1)):
        videos = synthetic.write_dataset(out / "videos" / split, count, seed=seed)
        entries, _ = writer.folder_entries(videos, synthetic.CLASSES)
        report = writer.write_records(entries, out, split, num_shards=4, fps=16, short_side=64,
                                      workers=FLAGS.workers)
        print(f"{split}: {report['videos']} videos, {report['failed']} failed -> {out}/{split}-*")
    (out / "classes.txt").write_text("\n".join(synthetic.CLASSES) + "\n")


def write_official(path: Path, state: dict) -> None:
    if path.exists() and not FLAGS.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(state, str(tmp))
    else:
        import torch
        torch.save({"model_state": {k: torch.from_numpy(v) for k, v in state.items()}}, tmp)
    os.replace(tmp, path)


def demo() -> None:
    import jax
    import numpy as np

    from uniformerv2_jax.convert import from_official
    from uniformerv2_jax.convert.official import param_count
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    jax.config.update("jax_default_matmul_precision", "highest")
    fixtures = ROOT / "data" / "fixtures"
    model, variables = from_official(fixtures / "tiny_a.safetensors", config=fixtures / "tiny_a.json")
    print(f"converted data/fixtures/tiny_a.safetensors: {param_count(variables):,} parameters")
    saved = save_converted(Path(FLAGS.workdir) / "tiny_a", model, variables, overwrite=True)
    model, variables = load_converted(saved)
    print(f"saved and reloaded the orbax checkpoint at {saved}")

    data = np.load(fixtures / "tiny_a.npz")
    video = np.transpose(data["input"], (0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
    logits = np.asarray(jax.jit(model.apply)(variables, video))
    print(f"\nlogits for {video.shape[0]} clips of shape {video.shape[1:]}:")
    print("clip  source     " + " ".join(f"{c:>7d}" for c in range(logits.shape[1])))
    for i in range(logits.shape[0]):
        print(f"{i:>4}  ours       " + " ".join(f"{v:7.4f}" for v in logits[i]))
        print(f"{i:>4}  official   " + " ".join(f"{v:7.4f}" for v in data["logits"][i]))
    err = np.abs(logits - data["logits"]).max()
    print(f"\nmax |ours - official| = {err:.2e} ({'OK' if err < 1e-5 else 'MISMATCH'}, bound 1e-5)")
    if err >= 1e-5:
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: main.py {{{'|'.join(COMMANDS)}}} [--flags]")
    if not FLAGS["verbosity"].present:  # orbax logs every step of a save at INFO
        logging.set_verbosity(logging.WARNING)
    {"demo": demo, "convert": convert, "write_records": write_records,
     "make_synthetic": make_synthetic}[argv[1]]()


if __name__ == "__main__":
    app.run(main)
