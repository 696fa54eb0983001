"""uniformerv2_jax command line.

  python main.py demo [--workdir=runs/demo]
      Makes the synthetic temporal dataset (data/synthetic), trains a small UniFormerV2 on
      it from scratch and the same model without its temporal parts, evaluates both and
      prints a table; plots and metrics go to the workdir.

  python main.py train --config=configs/kinetics.py:k400/b16_8x224 --workdir=runs/k400
      --config.init_from=clip:ViT-B-16.pt [--config.data.train='records/train-*'] ...
      Trains, or resumes from the newest checkpoint in --workdir. Any config field can be
      set with --config.<field>=<value>. Multi-host: add --distributed. demo, train, eval and
      features re-run themselves under jemalloc where installed (UNIFORMERV2_JEMALLOC=0: not).
  python main.py eval --workdir=runs/k400 [--checkpoint=best|latest|STEP] [--config=...]
      Multi-view evaluation of a training checkpoint: eval.json, confusion_matrix.png and
      learning_curve.png in the workdir.
  python main.py predict --checkpoint=runs/k400 --video=clip.mp4 [--class_names=FILE]
      Top-5 classes of a video; --checkpoint is a training workdir or a converted directory.
  python main.py features --checkpoint=runs/k400 --videos=DIR|--records=GLOB --out=feats/
      [--feature=head_input,logits,layer_{i}/cls|query|patches] [--keep_views]
      [--window_seconds=S --stride_seconds=S] [--num_clips=K --num_crops=1|3] [--video_fps=F]
      Features of every video of a folder or of DMVR records, whole or in sliding windows,
      test views averaged (or kept): OUT/features/<video>.npy (.safetensors for several
      features), OUT/index.jsonl, OUT/failures.json. Resumable; multi-host: --distributed.
  python main.py export --checkpoint=runs/k400 --out=export/k400 [--dtype=float32|bfloat16]
      [--formats=jax,savedmodel] [--platforms=cpu,cuda,tpu] [--class_names=FILE]
      For serving: OUT/model.jax_export (jax.export, weights inside), OUT/saved_model (TF
      SavedModel, signature serving_default), labels.txt, export.json. Both take uint8 frames
      (N, T, H, W, 3) and return float32 logits; they run without this package.

  python main.py compile --config=configs/kinetics.py:k400/b16_8x224 --topology=v5p-64
      [--num_slices=2] [--batch_per_device=N | --find_batch] [--step=train|eval]
      [--config.x=y ...] [--json=PATH] [--save=PATH]
      The exact train (or eval) step of a config compiled ahead of time for a TPU slice
      (v4-32, v5e-256, v5p-128, v6e-64) or GPU hosts (h100-8, 2xh200-8) that need not be
      present (the tpu / cuda extra): memory a chip against its HBM, FLOPs, collectives,
      and on TPU the compiler's step-time estimate and MFU. Exit status 1 when it does not
      fit. --save keeps the executable for train --compiled=PATH.

  python main.py parity
      Converts the shipped official-layout fixture (data/fixtures/tiny_a.*), saves and
      reloads it as an orbax checkpoint, runs the forward pass and prints the logits next
      to the official PyTorch model's.

  python main.py convert --from=official --src=k400_b16.pyth --out=trained/k400_b16
      [--model_config=config.yaml|.json|.py] [--model_arg=t_size=16 ...] [--head_map=k400]
      (--from=official also recognises MMAction2 checkpoints by their keys)
  python main.py convert --from=clip --src=ViT-B-16.pt --out=trained/clip_b16
      [--model_arg=no_lmhra=false --model_arg=temporal_downsample=true ...]
  python main.py convert --from=mmaction2 --src=mmaction2_k400.pth --out=trained/k400_b16
      [--model_config=mmaction2_config.py] [--keep_head_order]
  python main.py convert --from=converted --src=trained/k400_b16 --out=k400_b16.safetensors
      [--layout=official|mmaction2]
      Writes an orbax checkpoint (a directory) that training starts from, or, when --out
      ends in .safetensors/.pth, the official state dict (``backbone.`` keys) or, with
      --layout=mmaction2, MMAction2's ({"state_dict": ..., "meta": ...} in a .pth). A
      400-class MMAction2 head is re-indexed between MMAction2's K400 order and ours.

  python main.py write_records --videos=DIR --out=records/ --name=train --num_shards=64
  python main.py write_records --csv=k400_train.csv --video_root=DIR
      --classes=data/labels/kinetics400.txt --out=records/ --name=train
  python main.py write_records --ssv2_list=train.json --ssv2_labels=labels.json
      --video_root=DIR --out=records/ --name=train
      Raw videos -> sharded DMVR TFRecords (--fps=10 --short_side=256 as DMVR; resumable;
      videos that fail to decode are listed in <name>.failures.json). --csv also takes
      DMVR's CSV (video_path,start,end,label; seconds). --runner=DirectRunner|DataflowRunner
      [--pipeline_options='...'] runs it as an Apache Beam pipeline (the same shards).

  python main.py make_k710 --k400_csvs=k400/train.csv,k400/validate.csv,k400/test.csv
      --k600_csvs=... --k700_csvs=... --out=k710/
      Kinetics-710 from the Kinetics CSVs: the three training sets merged, one row per
      YouTube id, without any id of their validation and test sets, class names as in
      data/labels/kinetics710.txt -> OUT/k710_train.csv and OUT/k710_val.csv (for
      write_records --csv); prints the rows kept and left out per source and reason.
  python main.py make_synthetic --out=data/synthetic
      The synthetic temporal task as videos and train/val records.
  python main.py check_records --data='records/train-*' [--classes=FILE | --num_classes=N] [--json]
      Reads and decodes every record; counts per shard and in total, bad records by reason,
      frame count/size distributions, class histogram. With --classes, a record whose
      label index and label name disagree is bad (label_mismatch). Exits non-zero if any
      record is bad.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import yaml
from absl import app, flags, logging
from ml_collections import config_flags

from uniformerv2_jax import cpu, storage

ROOT = Path(__file__).resolve().parent
COMMANDS = ("demo", "train", "eval", "predict", "export", "parity", "convert", "write_records",
            "make_k710", "make_synthetic", "check_records", "features", "compile")
JEMALLOC_COMMANDS = ("demo", "train", "eval", "features")  # re-run under jemalloc (uniformerv2_jax/cpu.py)

config_flags.DEFINE_config_file("config", None, "train/eval: configs/<exp>.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "eval: best|latest|STEP (default best). predict, export, "
                    "features: a training workdir or a converted directory.")
flags.DEFINE_string("video", None, "predict: the video file.")
flags.DEFINE_string("class_names", None, "predict, export: class names, one per line (default: the "
                    "training config's, or the shipped list for the head's class count).")
flags.DEFINE_integer("top_k", 5, "predict: classes to print.")
flags.DEFINE_integer("num_clips", None, "predict, features: test clips (default: config's, or 4; windows 1).")
flags.DEFINE_integer("num_crops", None, "predict, features: crops 1|3 (default: config's, or 3; windows 1).")
flags.DEFINE_float("video_fps", None, "predict, features: decoding frame rate (default: the "
                   "file's own); features --records: the rate of records that carry none (10).")
flags.DEFINE_string("records", None, "features: DMVR record shards (comma-separated globs).")
flags.DEFINE_string("feature", "head_input", "features: comma-separated, of head_input, logits, "
                    "layer_{i}/cls, layer_{i}/query, layer_{i}/patches.")
flags.DEFINE_bool("keep_views", False, "features: keep each test view (default: their mean).")
flags.DEFINE_float("window_seconds", None, "features: sliding window length (default: whole videos).")
flags.DEFINE_float("stride_seconds", None, "features: window stride (default: --window_seconds).")
flags.DEFINE_integer("batch_size", None, "features: clips per step, all hosts (default: 8 a device).")
flags.DEFINE_integer("chunk_size", 64, "features: videos per chunk (the unit of resuming).")
flags.DEFINE_bool("distributed", False, "train/eval/features: call jax.distributed.initialize() "
                  "(automatic on Cloud TPU and SLURM; else give the three flags below).")
flags.DEFINE_bool("allow_cpu", False, "train/eval/features: run a full-size model (B/16 and up) "
                  "on the CPU backend instead of stopping (JAX found no TPU or GPU).")
flags.DEFINE_string("compiled", None, "train: a train step saved by compile --save (refused when "
                    "the config, devices or libraries differ).")
flags.DEFINE_string("topology", None, "compile: v4-32, v5e-256, v5p-128, v6e-64 (Cloud TPU names), "
                    "h100-8, 2xh200-8 (GPU hosts), local (this host's devices).")
flags.DEFINE_integer("num_slices", 1, "compile: TPU slices (data parallel across them, "
                     "config.mesh.dcn_data).")
flags.DEFINE_integer("batch_per_device", None, "compile: clips (train) or videos (eval) a chip "
                     "(default: config.batch_size over the batch-sharded chips).")
flags.DEFINE_bool("find_batch", False, "compile: find the largest batch a chip that fits.")
flags.DEFINE_enum("step", "train", ["train", "eval"], "compile: which step.")
flags.DEFINE_string("save", None, "compile: write the compiled step here (PATH and PATH.json).")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index.")

flags.DEFINE_enum("from", None, ["official", "mmaction2", "clip", "converted"],
                  "convert: source kind.")
flags.DEFINE_string("src", None, "convert: source weight file or converted directory.")
flags.DEFINE_string("out", None, "convert: output directory (orbax) or .safetensors/.pth file. "
                    "export, features, make_k710: output directory.")
flags.DEFINE_string("model_config", None, "convert: model config (.json, SlowFast .yaml or "
                    "MMAction2 .py).")
flags.DEFINE_multi_string("model_arg", [], "convert: official constructor argument, NAME=VALUE.")
flags.DEFINE_string("head_map", None, "convert: re-index the head: k400|k600|k700 (K710 maps), "
                    "first:N, or a JSON list of source rows.")
flags.DEFINE_bool("overwrite", False, "convert, export: replace an existing output.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "export: compute dtype (the "
                  "weights are kept as stored; the logits are float32 either way).")
flags.DEFINE_string("formats", "jax,savedmodel", "export: comma-separated, of jax (a jax.export "
                    "artifact) and savedmodel (a TensorFlow SavedModel).")
flags.DEFINE_string("platforms", "cpu,cuda,tpu", "export: platforms the artifacts are lowered for "
                    "(they run only on these).")
flags.DEFINE_enum("layout", "official", ["official", "mmaction2"], "convert: the key layout of a "
                  ".safetensors/.pth --out (mmaction2: backbone.* + cls_head.fc_cls.*).")
flags.DEFINE_bool("keep_head_order", False, "convert --from=mmaction2 / --layout=mmaction2: keep "
                  "a 400-class head's rows as they are (default: re-index K400 between MMAction2's "
                  "alphabetical order and the UniFormerV2 one).")
flags.DEFINE_string("workdir", None, "train/eval: the run's directory (checkpoints, metrics, "
                    "plots). demo: default runs/demo. parity: default /tmp/uniformerv2_parity.")
flags.DEFINE_string("videos", None, "write_records: folder-per-class video tree. features: a "
                    "folder of videos (directly in it, or in class subfolders).")
flags.DEFINE_string("csv", None, "write_records: 'path,label', Kinetics or DMVR "
                    "('video_path,start,end,label') CSV.")
flags.DEFINE_string("ssv2_list", None, "write_records: Something-Something list JSON.")
flags.DEFINE_string("ssv2_labels", None, "write_records: Something-Something labels JSON.")
flags.DEFINE_string("video_root", None, "write_records: where the CSV/list videos are (the "
                    "paths of a CSV are relative to it).")
flags.DEFINE_string("classes", None, "write_records, check_records: class names, one per line. "
                    "features --records: the list whose names decide the records' labels.")
flags.DEFINE_string("name", "train", "write_records: shard base name.")
flags.DEFINE_integer("num_shards", 16, "write_records: number of shards (a power of two).")
flags.DEFINE_string("runner", None, "write_records: run as an Apache Beam pipeline on this runner "
                    "(DirectRunner, DataflowRunner, ...; the beam extra). Default: worker processes "
                    "on this host.")
flags.DEFINE_string("pipeline_options", None, "write_records --runner: Beam's pipeline options, "
                    "e.g. '--project=P --region=R --temp_location=gs://B/tmp'.")
flags.DEFINE_float("fps", 10.0, "write_records: frames per second kept.")
flags.DEFINE_integer("short_side", 256, "write_records: short side of stored frames.")
flags.DEFINE_integer("workers", None, "write_records: worker processes; check_records: threads "
                     "(default: cores).")
flags.DEFINE_string("k400_csvs", None, "make_k710: Kinetics-400 CSVs, comma-separated (train, "
                    "validate, test; a row's split is its 'split' value, else its file name's).")
flags.DEFINE_string("k600_csvs", None, "make_k710: Kinetics-600 CSVs, as --k400_csvs.")
flags.DEFINE_string("k700_csvs", None, "make_k710: Kinetics-700 CSVs, as --k400_csvs.")
flags.DEFINE_integer("videos_per_class", 96, "make_synthetic: training videos per class.")
flags.DEFINE_integer("val_per_class", 24, "make_synthetic: validation videos per class.")
flags.DEFINE_string("data", None, "check_records: record shards, comma-separated globs.")
flags.DEFINE_integer("num_classes", None, "check_records: class count (labels >= N are bad).")


class _SwitchOrText(flags.ArgumentParser):
    """A flag given bare (``--json``: "true") or with a value (``--json=PATH``)."""

    def parse(self, argument):
        return str(argument)

    def flag_type(self):
        return "string"


flags.DEFINE_flag(flags.Flag(_SwitchOrText(), flags.ArgumentSerializer(), "json", None,
                             "check_records: --json prints the report as one JSON object. "
                             "compile: --json=PATH writes the report (one JSON object) there.",
                             boolean=True))
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
    from uniformerv2_jax.convert import from_clip, from_official, to_official, transfer_head, write_state_dict
    from uniformerv2_jax.convert.mmaction2 import from_mmaction2, write_mmaction2
    from uniformerv2_jax.convert.saved import load_converted, save_converted

    kind = FLAGS["from"].value
    if not kind or not FLAGS.src or not FLAGS.out:
        raise app.UsageError("convert needs --from, --src and --out")
    if FLAGS.layout == "mmaction2" and storage.path(FLAGS.out).suffix not in (".safetensors", ".pth"):
        raise app.UsageError("--layout=mmaction2 needs --out ending in .pth or .safetensors")
    kwargs = parse_model_args(FLAGS.model_arg)
    if kind == "official":
        model, variables = from_official(FLAGS.src, config=FLAGS.model_config, **kwargs)
    elif kind == "mmaction2":
        model, variables = from_mmaction2(FLAGS.src, config=FLAGS.model_config,
                                          keep_head_order=FLAGS.keep_head_order, **kwargs)
    elif kind == "clip":
        model, variables = from_clip(FLAGS.src, config=FLAGS.model_config, **kwargs)
    else:
        model, variables = load_converted(FLAGS.src)
    if FLAGS.head_map:
        model, variables = transfer_head(model, variables, FLAGS.head_map)

    out = storage.path(FLAGS.out)
    if FLAGS.layout == "mmaction2":
        write_mmaction2(out, model, variables, FLAGS.keep_head_order, overwrite=FLAGS.overwrite)
    elif out.suffix in (".safetensors", ".pth"):
        write_state_dict(out, to_official(model, variables), overwrite=FLAGS.overwrite)
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
        write_class_list(storage.path(FLAGS.out) / "classes.txt", names)
    elif FLAGS.csv:
        if not FLAGS.classes:
            raise app.UsageError("--csv needs --classes (and --video_root where its paths are relative)")
        entries = writer.csv_entries(FLAGS.csv, FLAGS.video_root, read_class_names(FLAGS.classes))
    elif FLAGS.ssv2_list:
        if not (FLAGS.ssv2_labels and FLAGS.video_root):
            raise app.UsageError("--ssv2_list needs --ssv2_labels and --video_root")
        entries = writer.something_something_entries(FLAGS.ssv2_list, FLAGS.ssv2_labels,
                                                      FLAGS.video_root)
    else:
        raise app.UsageError("write_records needs --videos, --csv or --ssv2_list")
    if FLAGS.runner:
        try:
            import apache_beam  # noqa: F401

            from uniformerv2_jax.input import beam_writer
        except ImportError:
            raise app.UsageError("--runner needs Apache Beam: pip install -e '.[beam]'") from None
        options = [f"--runner={FLAGS.runner}", *shlex.split(FLAGS.pipeline_options or "")]
        report = beam_writer.write_records(entries, FLAGS.out, FLAGS.name, FLAGS.num_shards, options,
                                           FLAGS.fps, FLAGS.short_side)
    else:
        report = writer.write_records(entries, FLAGS.out, FLAGS.name, FLAGS.num_shards, FLAGS.fps,
                                      FLAGS.short_side, workers=FLAGS.workers)
    print(f"{report['videos']} videos -> {FLAGS.num_shards} shards in {FLAGS.out} "
          f"({report['written']} written, {report['kept']} kept); {report['failed']} failed "
          f"to decode, listed in {report['failures_file']}")


def make_k710() -> None:
    from uniformerv2_jax.input import kinetics710

    csvs = {source: FLAGS[f"{source}_csvs"].value for source in kinetics710.SOURCES}
    if not FLAGS.out or not all(csvs.values()):
        raise app.UsageError("make_k710 needs --k400_csvs, --k600_csvs, --k700_csvs (comma-separated "
                             "CSV paths each) and --out=DIR")
    report = kinetics710.make_k710({source: [p for p in paths.split(",") if p]
                                    for source, paths in csvs.items()}, FLAGS.out)
    out = storage.path(FLAGS.out)
    print(kinetics710.format_report(report))
    print(f"wrote {out / 'k710_train.csv'} and {out / 'k710_val.csv'}")


def make_synthetic() -> None:
    from uniformerv2_jax.input import synthetic

    for line in synthetic.write_task(FLAGS.out or "data/synthetic", FLAGS.videos_per_class,
                                     FLAGS.val_per_class, FLAGS.workers):
        print(line)


def write_class_list(path: storage.epath.Path, names: list[str]) -> None:
    """The class list of a folder-per-class tree, beside its records (checked if present:
    the splits of one dataset must share it)."""
    text = "\n".join(names) + "\n"
    if path.exists() and path.read_text() != text:
        raise app.UsageError(f"{path} lists other classes than --videos={FLAGS.videos}; pass "
                             f"--classes={path} so that the labels agree")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.write_atomic(path, text)


def check_records() -> None:
    import json

    from uniformerv2_jax.input import doctor, sources
    from uniformerv2_jax.labels import read_class_names

    if not FLAGS.data:
        raise app.UsageError("check_records needs --data=GLOB[,GLOB...]")
    try:
        files = sources.record_files(FLAGS.data, "--data")
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None
    num_classes, class_names = FLAGS.num_classes, None
    if FLAGS.classes:
        class_names = read_class_names(FLAGS.classes)
        if FLAGS.num_classes is not None and FLAGS.num_classes != len(class_names):
            raise app.UsageError(f"--num_classes={FLAGS.num_classes} but --classes lists {len(class_names)}")
    report = doctor.check_records(files, num_classes, class_names,
                                  workers=FLAGS.workers or os.cpu_count() or 1,
                                  progress=sys.stderr.isatty())
    print(json.dumps(report) if FLAGS.json not in (None, "false") else doctor.format_report(report))
    if report["bad"]:
        sys.exit(1)


def initialize_distributed() -> None:
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def announce_devices(width: int) -> None:
    """The start-up line (backend, devices, processes); stops a full-size model on the CPU
    backend unless --allow_cpu."""
    from uniformerv2_jax import topology

    print(topology.local_summary(), flush=True)
    try:
        topology.check_backend(width, FLAGS.allow_cpu)
    except RuntimeError as error:
        sys.exit(f"error: {error}")


def train_command() -> None:
    from uniformerv2_jax import train

    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("train needs --config=configs/<exp>.py[:arg] and --workdir=DIR")
    initialize_distributed()
    announce_devices(FLAGS.config.model.width)
    results = train.train(FLAGS.config, FLAGS.workdir, compiled=FLAGS.compiled)
    if results.get("top1") is not None:
        print(f"validation: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
              f"mean-class {results['mean_class_accuracy']:.4f} ({results['videos']} videos); "
              f"results and plots in {FLAGS.workdir}")


def eval_command() -> None:
    from uniformerv2_jax import evaluate, run_dir

    if not FLAGS.workdir:
        raise app.UsageError("eval needs --workdir=DIR (a training run)")
    initialize_distributed()
    config = FLAGS.config or run_dir.load_config(FLAGS.workdir)
    announce_devices(config.model.width)
    results = evaluate.evaluate_workdir(FLAGS.workdir, config, FLAGS.checkpoint or "best")
    print(f"step {results['step']}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  "
          f"mean-class {results['mean_class_accuracy']:.4f} over {results['videos']} videos "
          f"({results['bad_records']} bad records skipped); wrote {FLAGS.workdir}/eval.json, "
          "confusion_matrix.png, learning_curve.png")


def predict_command() -> None:
    from uniformerv2_jax import labels, predict

    if not FLAGS.checkpoint or not FLAGS.video:
        raise app.UsageError("predict needs --checkpoint=DIR and --video=FILE")
    trained = predict.load_trained(FLAGS.checkpoint)
    model = trained.model
    names = labels.class_names_for(model.num_classes, FLAGS.class_names or trained.class_names)
    views = predict.video_views(FLAGS.video, clip_frames=model.t_size, crop_size=model.input_resolution,
                                num_clips=FLAGS.num_clips or trained.num_clips,
                                num_crops=FLAGS.num_crops or trained.num_crops, fps=FLAGS.video_fps)
    probs = predict.predict(model, trained.variables, views)
    print(predict.format_top_k(FLAGS.video, predict.top_k(probs, names, FLAGS.top_k)))


def features_command() -> None:
    from uniformerv2_jax import predict
    from uniformerv2_jax.feature_job import Settings, extract
    from uniformerv2_jax.input.windows import Sampling

    if not FLAGS.checkpoint or not FLAGS.out or bool(FLAGS.videos) == bool(FLAGS.records):
        raise app.UsageError("features needs --checkpoint=DIR, --out=DIR and one of --videos=DIR "
                             "or --records=GLOB")
    window, stride = FLAGS.window_seconds, FLAGS.stride_seconds
    initialize_distributed()
    trained = predict.load_trained(FLAGS.checkpoint)
    m = trained.model
    announce_devices(m.width)
    views = (1, 1) if window else (trained.num_clips, trained.num_crops)  # windows: one centre view
    sampling = Sampling(m.t_size, m.input_resolution, FLAGS.num_clips or views[0],
                        FLAGS.num_crops or views[1], window, stride or window, FLAGS.video_fps)
    settings = Settings(FLAGS.checkpoint, FLAGS.videos, FLAGS.records, tuple(FLAGS.feature.split(",")),
                        sampling, FLAGS.keep_views, FLAGS.chunk_size, FLAGS.classes)
    report = extract(trained, settings, FLAGS.out, FLAGS.batch_size, progress=sys.stderr.isatty())
    if "written" in report:  # process 0
        print(f"{report['videos']} videos ({report['chunks_kept']} of {report['chunks']} chunks kept "
              f"from an earlier run): {report['written']} written, {report['failed']} failed "
              f"(listed in {report['failures_file']}); index {report['index']}")


def compile_command() -> None:
    from uniformerv2_jax import topology

    if topology.needs_deviceless(FLAGS.topology or ""):
        topology.deviceless_environment()  # before JAX starts a backend: compile-only devices
    from uniformerv2_jax import aot, executable

    if FLAGS.config is None or not FLAGS.topology:
        raise app.UsageError("compile needs --config=configs/<exp>.py[:arg] and --topology=NAME "
                             "(e.g. v5p-64, v5e-256, v6e-64, h100-8)")
    if FLAGS.find_batch and FLAGS.batch_per_device:
        raise app.UsageError("give --batch_per_device=N or --find_batch, not both")
    if FLAGS.json == "true":
        raise app.UsageError("compile: --json=PATH (where to write the report)")
    try:
        target = topology.describe(FLAGS.topology, FLAGS.num_slices)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    config = FLAGS.config
    if FLAGS.find_batch:
        result = aot.find_batch(config, target, FLAGS.step, progress=lambda r: print(
            f"  {r['batch_per_device']} a chip: " + (f"fits, peak {r['peak_gib']:.2f} GiB"
                                                     if r["fits"] else "does not fit"), flush=True))
    else:
        batch = FLAGS.batch_per_device
        if batch is None:
            total = config.batch_size if FLAGS.step == "train" else config.eval_batch_size
            shards = aot.batch_shards(config, target)
            if total % shards:
                raise app.UsageError(f"config batch {total} does not split over {shards} chips: "
                                     "give --batch_per_device")
            batch = max(1, total // shards)
        result = aot.compile_step(config, target, batch, FLAGS.step)
    print(aot.format_report(result.report))
    if FLAGS.json:
        aot.dump(result.report, FLAGS.json)
    if FLAGS.save and result.compiled is not None:
        executable.save(result.compiled, result.report, FLAGS.save)
        print(f"wrote {FLAGS.save} (and {FLAGS.save}.json): train --compiled={FLAGS.save}")
    if not result.report["fits"]:
        sys.exit(1)


def export_command() -> None:
    from uniformerv2_jax import export

    if not FLAGS.checkpoint or not FLAGS.out:
        raise app.UsageError("export needs --checkpoint=DIR (a training workdir or a converted "
                             "directory) and --out=DIR")
    out = export.export(FLAGS.checkpoint, FLAGS.out, dtype=FLAGS.dtype, formats=FLAGS.formats,
                        platforms=FLAGS.platforms, class_names=FLAGS.class_names,
                        overwrite=FLAGS.overwrite)
    print(f"wrote {out} ({FLAGS.formats}, {FLAGS.dtype})")


def demo() -> None:
    from configs import synthetic as synthetic_config
    from uniformerv2_jax import demo as demo_lib

    results = demo_lib.run(synthetic_config.get_config, ROOT / "data" / "synthetic",
                           storage.path(FLAGS.workdir or ROOT / "runs" / "demo"), FLAGS.workers)
    temporal, blind = results["temporal"]["top1"], results["order_blind"]["top1"]
    if temporal < 0.95 or blind > 0.65:
        sys.exit(f"demo check failed: temporal {temporal:.1%} (needs >= 95%), "
                 f"order-blind {blind:.1%} (needs <= 65%)")


def parity() -> None:
    from uniformerv2_jax import demo as demo_lib

    error = demo_lib.parity(ROOT / "data" / "fixtures",
                            storage.path(FLAGS.workdir or "/tmp/uniformerv2_parity"))
    if error >= demo_lib.PARITY_BOUND:
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: main.py {{{'|'.join(COMMANDS)}}} [--flags]")
    if argv[1] in JEMALLOC_COMMANDS:
        cpu.reexec_with_jemalloc()  # returns where it is preloaded, switched off or missing
    if not FLAGS["verbosity"].present:  # orbax logs every step of a save at INFO
        logging.set_verbosity(logging.WARNING)
    {"demo": demo, "train": train_command, "eval": eval_command, "predict": predict_command,
     "export": export_command,
     "parity": parity, "convert": convert, "write_records": write_records,
     "make_k710": make_k710, "make_synthetic": make_synthetic, "check_records": check_records,
     "features": features_command, "compile": compile_command}[argv[1]]()


if __name__ == "__main__":
    app.run(main)
