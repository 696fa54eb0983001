"""uniformerv2_jax command line.

  python main.py demo [--workdir=runs/demo]
      Makes the synthetic temporal dataset (data/synthetic), trains a small UniFormerV2 on
      it from scratch and the same model without its temporal parts, evaluates both and
      prints a table; plots and metrics go to the workdir.

  python main.py train --config=configs/kinetics.py:k400/b16_8x224 --workdir=runs/k400
      --config.init_from=clip:ViT-B-16.pt [--config.data.train='records/train-*'] ...
      Trains, or resumes from the newest checkpoint in --workdir. Any config field can be
      set with --config.<field>=<value>. Multi-host: add --distributed.
  python main.py eval --workdir=runs/k400 [--checkpoint=best|latest|STEP] [--config=...]
      Multi-view evaluation of a training checkpoint: eval.json, confusion_matrix.png and
      learning_curve.png in the workdir.
  python main.py predict --checkpoint=runs/k400 --video=clip.mp4 [--class_names=FILE]
      Top-5 classes of a video; --checkpoint is a training workdir or a converted directory.

  python main.py parity
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
  python main.py check_records --data='records/train-*' [--classes=FILE | --num_classes=N] [--json]
      Reads and decodes every record; counts per shard and in total, bad records by reason,
      frame count/size distributions, class histogram. Exits non-zero if any record is bad.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import yaml
from absl import app, flags, logging
from ml_collections import config_flags

from uniformerv2_jax import storage

ROOT = Path(__file__).resolve().parent
COMMANDS = ("demo", "train", "eval", "predict", "parity", "convert", "write_records",
            "make_synthetic", "check_records")

config_flags.DEFINE_config_file("config", None, "train/eval: configs/<exp>.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "eval: best|latest|STEP (default best). predict: a "
                    "training workdir or a converted directory.")
flags.DEFINE_string("video", None, "predict: the video file.")
flags.DEFINE_string("class_names", None, "predict: class names, one per line (default: the "
                    "training config's, or the shipped list for the head's class count).")
flags.DEFINE_integer("top_k", 5, "predict: classes to print.")
flags.DEFINE_integer("num_clips", None, "predict: test clips (default: the config's, or 4).")
flags.DEFINE_integer("num_crops", None, "predict: test crops, 1 or 3 (default: the config's, or 3).")
flags.DEFINE_float("video_fps", None, "predict: decoding frame rate (default: the file's own).")
flags.DEFINE_bool("distributed", False, "train/eval: call jax.distributed.initialize() "
                  "(automatic on Cloud TPU and SLURM; else give the three flags below).")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index.")

flags.DEFINE_enum("from", None, ["official", "clip", "converted"], "convert: source kind.")
flags.DEFINE_string("src", None, "convert: source weight file or converted directory.")
flags.DEFINE_string("out", None, "convert: output directory (orbax) or .safetensors/.pth file.")
flags.DEFINE_string("model_config", None, "convert: official config (.json or SlowFast .yaml).")
flags.DEFINE_multi_string("model_arg", [], "convert: official constructor argument, NAME=VALUE.")
flags.DEFINE_string("head_map", None, "convert: re-index the head: k400|k600|k700 (K710 maps), "
                    "first:N, or a JSON list of source rows.")
flags.DEFINE_bool("overwrite", False, "convert: replace an existing output.")
flags.DEFINE_string("workdir", None, "train/eval: the run's directory (checkpoints, metrics, "
                    "plots). demo: default runs/demo. parity: default /tmp/uniformerv2_parity.")
flags.DEFINE_string("videos", None, "write_records: folder-per-class video tree.")
flags.DEFINE_string("csv", None, "write_records: 'path,label' or Kinetics CSV.")
flags.DEFINE_string("ssv2_list", None, "write_records: Something-Something list JSON.")
flags.DEFINE_string("ssv2_labels", None, "write_records: Something-Something labels JSON.")
flags.DEFINE_string("video_root", None, "write_records: where the CSV/list videos are.")
flags.DEFINE_string("classes", None, "write_records, check_records: class names, one per line.")
flags.DEFINE_string("name", "train", "write_records: shard base name.")
flags.DEFINE_integer("num_shards", 16, "write_records: number of shards.")
flags.DEFINE_float("fps", 10.0, "write_records: frames per second kept.")
flags.DEFINE_integer("short_side", 256, "write_records: short side of stored frames.")
flags.DEFINE_integer("workers", None, "write_records: worker processes; check_records: threads "
                     "(default: cores).")
flags.DEFINE_integer("videos_per_class", 96, "make_synthetic: training videos per class.")
flags.DEFINE_integer("val_per_class", 24, "make_synthetic: validation videos per class.")
flags.DEFINE_string("data", None, "check_records: record shards, comma-separated globs.")
flags.DEFINE_integer("num_classes", None, "check_records: class count (labels >= N are bad).")
flags.DEFINE_bool("json", False, "check_records: print the report as one JSON object.")
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

    out = storage.path(FLAGS.out)
    if out.suffix in (".safetensors", ".pth"):
        write_official(out, to_official(model, variables))
    else:
        save_converted(out, model, variables, overwrite=FLAGS.overwrite)
    print(f"wrote {out} ({model.width}-wide, {model.layers} layers, {model.num_classes} classes)")


def write_records() -> None:
    from uniformerv2_jax.input import writer
    from uniformerv2_jax.labels import read_class_names

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


def make_synthetic() -> None:
    from uniformerv2_jax.input import synthetic, writer

    out = storage.path(FLAGS.out or "data/synthetic")
    for split, count, seed in (("train", FLAGS.videos_per_class, 0), ("val", FLAGS.val_per_class, 1)):
        videos = synthetic.write_dataset(out / "videos" / split, count, seed=seed)
        entries, _ = writer.folder_entries(videos, synthetic.CLASSES)
        report = writer.write_records(entries, out, split, num_shards=4, fps=16, short_side=64,
                                      workers=FLAGS.workers)
        print(f"{split}: {report['videos']} videos, {report['failed']} failed -> {out}/{split}-*")
    storage.write_atomic(out / "classes.txt", "\n".join(synthetic.CLASSES) + "\n")


def check_records() -> None:
    import json

    from uniformerv2_jax.input import doctor
    from uniformerv2_jax.labels import read_class_names

    if not FLAGS.data:
        raise app.UsageError("check_records needs --data=GLOB[,GLOB...]")
    files = storage.glob(FLAGS.data)
    if not files:
        raise app.UsageError(f"--data={FLAGS.data!r}: no file matches")
    num_classes = FLAGS.num_classes
    if FLAGS.classes:
        num_classes = len(read_class_names(FLAGS.classes))
        if FLAGS.num_classes is not None and FLAGS.num_classes != num_classes:
            raise app.UsageError(f"--num_classes={FLAGS.num_classes} but --classes lists {num_classes}")
    report = doctor.check_records(files, num_classes, workers=FLAGS.workers or os.cpu_count() or 1,
                                  progress=sys.stderr.isatty())
    print(json.dumps(report) if FLAGS.json else doctor.format_report(report))
    if report["bad"]:
        sys.exit(1)


def write_official(path, state: dict) -> None:
    if path.exists() and not FLAGS.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    with storage.staging_file(path, suffix=path.suffix) as staging:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(state, staging)
        else:
            import torch
            torch.save({"model_state": {k: torch.from_numpy(v) for k, v in state.items()}}, staging)
        storage.publish(staging, path)


def initialize_distributed() -> None:
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def train_command() -> None:
    from uniformerv2_jax import train

    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("train needs --config=configs/<exp>.py[:arg] and --workdir=DIR")
    initialize_distributed()
    results = train.train(FLAGS.config, FLAGS.workdir)
    if results.get("top1") is not None:
        print(f"validation: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
              f"mean-class {results['mean_class_accuracy']:.4f} ({results['videos']} videos); "
              f"results and plots in {FLAGS.workdir}")


def eval_command() -> None:
    from uniformerv2_jax import train

    if not FLAGS.workdir:
        raise app.UsageError("eval needs --workdir=DIR (a training run)")
    initialize_distributed()
    config = FLAGS.config or train.load_workdir_config(FLAGS.workdir)
    results = train.evaluate_workdir(FLAGS.workdir, config, FLAGS.checkpoint or "best")
    print(f"step {results['step']}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
          f"mean-class {results['mean_class_accuracy']:.4f} over {results['videos']} videos "
          f"({results['bad_records']} bad records skipped); wrote {FLAGS.workdir}/eval.json, "
          "confusion_matrix.png, learning_curve.png")


def predict_command() -> None:
    from uniformerv2_jax import predict, train
    from uniformerv2_jax.convert.saved import MODEL_FILE, load_converted

    if not FLAGS.checkpoint or not FLAGS.video:
        raise app.UsageError("predict needs --checkpoint=DIR and --video=FILE")
    directory = storage.path(FLAGS.checkpoint)
    if (directory / MODEL_FILE).is_file():
        model, variables = load_converted(directory)
        frames, crop, clips, crops, names_file = model.t_size, model.input_resolution, 4, 3, None
    else:
        config = train.load_workdir_config(directory)
        exp, state, _ = train.restore_for_eval(directory, config)
        model, variables = exp.model, {"params": state.params, "batch_stats": state.batch_stats}
        d = config.data
        frames, crop, clips, crops = model.t_size, model.input_resolution, d.test_clips, d.test_crops
        names_file = d.class_names or None
    names = predict.class_names_for(model.num_classes, FLAGS.class_names or names_file)
    views = predict.video_views(FLAGS.video, clip_frames=frames, crop_size=crop,
                                num_clips=FLAGS.num_clips or clips,
                                num_crops=FLAGS.num_crops or crops, fps=FLAGS.video_fps)
    probs = predict.predict(model, variables, views)
    print(predict.format_top_k(FLAGS.video, predict.top_k(probs, names, FLAGS.top_k)))


def demo() -> None:
    """Synthetic data, then the temporal model and its order-blind ablation, side by side."""
    import time

    from configs import synthetic as synthetic_config
    from uniformerv2_jax import train

    data = ROOT / "data" / "synthetic"
    if not (data / "classes.txt").is_file():
        print(f"making the synthetic dataset in {data} ...", flush=True)
        FLAGS.out = str(data)
        make_synthetic()
    workdir = storage.path(FLAGS.workdir or ROOT / "runs" / "demo")
    rows = []
    for arg in ("temporal", "order_blind"):
        config = synthetic_config.get_config(arg)
        config.data.train, config.data.val = (str(data / "train-*.tfrecord"),
                                              str(data / "val-*.tfrecord"))
        config.data.class_names = str(data / "classes.txt")
        run = workdir / arg
        if run.exists():
            run.rmtree()  # the demo always trains from scratch
        print(f"\n== training {arg} (configs/synthetic.py:{arg}) in {run}", flush=True)
        start = time.perf_counter()
        results = train.train(config, run)
        rows.append((arg, results, time.perf_counter() - start))
    print("\nSynthetic temporal task (2 classes, chance 50%), validation videos x 6 views:")
    print(f"{'model':<14}{'top-1':>8}{'mean-class':>12}{'videos':>8}{'train+eval s':>14}")
    for arg, r, seconds in rows:
        print(f"{arg:<14}{r['top1']:>8.1%}{r['mean_class_accuracy']:>12.1%}{r['videos']:>8}"
              f"{seconds:>14.0f}")
    print(f"plots: {workdir}/*/learning_curve.png, {workdir}/*/confusion_matrix.png")
    temporal, blind = rows[0][1]["top1"], rows[1][1]["top1"]
    if temporal < 0.95 or blind > 0.65:
        sys.exit(f"demo check failed: temporal {temporal:.1%} (needs >= 95%), "
                 f"order-blind {blind:.1%} (needs <= 65%)")


def parity() -> None:
    import jax
    import numpy as np

    from uniformerv2_jax.convert import from_official
    from uniformerv2_jax.convert.official import param_count
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    jax.config.update("jax_default_matmul_precision", "highest")
    fixtures = ROOT / "data" / "fixtures"
    model, variables = from_official(fixtures / "tiny_a.safetensors", config=fixtures / "tiny_a.json")
    print(f"converted data/fixtures/tiny_a.safetensors: {param_count(variables):,} parameters")
    workdir = storage.path(FLAGS.workdir or "/tmp/uniformerv2_parity")
    saved = save_converted(workdir / "tiny_a", model, variables, overwrite=True)
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
    {"demo": demo, "train": train_command, "eval": eval_command, "predict": predict_command,
     "parity": parity, "convert": convert, "write_records": write_records,
     "make_synthetic": make_synthetic, "check_records": check_records}[argv[1]]()


if __name__ == "__main__":
    app.run(main)
