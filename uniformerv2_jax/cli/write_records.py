"""Raw videos -> sharded DMVR TFRecords.

  uniformerv2 write_records --videos=DIR --out=records/ --name=train --num_shards=64
  uniformerv2 write_records --csv=k400_train.csv --video_root=DIR
      --classes=data/labels/kinetics400.txt --out=records/ --name=train
  uniformerv2 write_records --ssv2_list=train.json --ssv2_labels=labels.json
      --video_root=DIR --out=records/ --name=train
      --fps=10 --short_side=256 as DMVR; resumable; videos that fail to decode are listed
      in <name>.failures.json. --csv also takes DMVR's CSV (video_path,start,end,label;
      seconds). --runner=DirectRunner|DataflowRunner [--pipeline_options='...'] runs it as
      an Apache Beam pipeline (the same shards).
"""

from __future__ import annotations

import shlex

from absl import app, flags

from uniformerv2_jax import storage


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("out", None, "output directory.", flag_values=values)
    flags.DEFINE_string("videos", None, "folder-per-class video tree.", flag_values=values)
    flags.DEFINE_string("csv", None, "'path,label', Kinetics or DMVR ('video_path,start,end,label') "
                        "CSV.", flag_values=values)
    flags.DEFINE_string("ssv2_list", None, "Something-Something list JSON.", flag_values=values)
    flags.DEFINE_string("ssv2_labels", None, "Something-Something labels JSON.", flag_values=values)
    flags.DEFINE_string("video_root", None, "where the CSV/list videos are (the paths of a CSV are "
                        "relative to it).", flag_values=values)
    flags.DEFINE_string("classes", None, "class names, one per line.", flag_values=values)
    flags.DEFINE_string("name", "train", "shard base name.", flag_values=values)
    flags.DEFINE_integer("num_shards", 16, "number of shards (a power of two).", flag_values=values)
    flags.DEFINE_float("fps", 10.0, "frames per second kept.", flag_values=values)
    flags.DEFINE_integer("short_side", 256, "short side of stored frames.", flag_values=values)
    flags.DEFINE_integer("workers", None, "worker processes (default: cores).", flag_values=values)
    flags.DEFINE_string("runner", None, "run as an Apache Beam pipeline on this runner (DirectRunner, "
                        "DataflowRunner, ...; the beam extra). Default: worker processes on this host.",
                        flag_values=values)
    flags.DEFINE_string("pipeline_options", None, "with --runner: Beam's pipeline options, e.g. "
                        "'--project=P --region=R --temp_location=gs://B/tmp'.", flag_values=values)
    return values


def write_class_list(path: storage.epath.Path, names: list[str], videos: str) -> None:
    """The class list of a folder-per-class tree, beside its records (checked if present:
    the splits of one dataset must share it)."""
    text = "\n".join(names) + "\n"
    if path.exists() and path.read_text() != text:
        raise app.UsageError(f"{path} lists other classes than --videos={videos}; pass "
                             f"--classes={path} so that the labels agree")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.write_atomic(path, text)


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax.input import writer
    from uniformerv2_jax.labels import read_class_names

    if not args.out:
        raise app.UsageError("write_records needs --out")
    if args.videos:
        names = read_class_names(args.classes) if args.classes else None
        entries, names = writer.folder_entries(args.videos, names)
        write_class_list(storage.path(args.out) / "classes.txt", names, args.videos)
    elif args.csv:
        if not args.classes:
            raise app.UsageError("--csv needs --classes (and --video_root where its paths are relative)")
        entries = writer.csv_entries(args.csv, args.video_root, read_class_names(args.classes))
    elif args.ssv2_list:
        if not (args.ssv2_labels and args.video_root):
            raise app.UsageError("--ssv2_list needs --ssv2_labels and --video_root")
        entries = writer.something_something_entries(args.ssv2_list, args.ssv2_labels, args.video_root)
    else:
        raise app.UsageError("write_records needs --videos, --csv or --ssv2_list")
    if args.runner:
        try:
            import apache_beam  # noqa: F401

            from uniformerv2_jax.input import beam_writer
        except ImportError:
            raise app.UsageError("--runner needs Apache Beam: pip install -e '.[beam]'") from None
        options = [f"--runner={args.runner}", *shlex.split(args.pipeline_options or "")]
        report = beam_writer.write_records(entries, args.out, args.name, args.num_shards, options,
                                           args.fps, args.short_side)
    else:
        report = writer.write_records(entries, args.out, args.name, args.num_shards, args.fps,
                                      args.short_side, workers=args.workers)
    print(f"{report['videos']} videos -> {args.num_shards} shards in {args.out} "
          f"({report['written']} written, {report['kept']} kept); {report['failed']} failed "
          f"to decode, listed in {report['failures_file']}")
