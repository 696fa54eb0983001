"""Reads and decodes every record; counts, bad records by reason, distributions.

  uniformerv2 check_records --data='records/train-*' [--classes=FILE | --num_classes=N] [--json]
      Counts per shard and in total, bad records by reason, frame count/size distributions,
      class histogram. With --classes, a record whose label index and label name disagree
      is bad (label_mismatch). Exits non-zero if any record is bad.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("data", None, "record shards, comma-separated globs.", flag_values=values)
    flags.DEFINE_string("classes", None, "class names, one per line.", flag_values=values)
    flags.DEFINE_integer("num_classes", None, "class count (labels >= N are bad).", flag_values=values)
    flags.DEFINE_integer("workers", None, "threads (default: cores).", flag_values=values)
    flags.DEFINE_bool("json", False, "print the report as one JSON object.", flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    import json

    from uniformerv2_jax.input import doctor, sources
    from uniformerv2_jax.labels import read_class_names

    if not args.data:
        raise app.UsageError("check_records needs --data=GLOB[,GLOB...]")
    try:
        files = sources.record_files(args.data, "--data")
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None
    num_classes, class_names = args.num_classes, None
    if args.classes:
        class_names = read_class_names(args.classes)
        if args.num_classes is not None and args.num_classes != len(class_names):
            raise app.UsageError(f"--num_classes={args.num_classes} but --classes lists {len(class_names)}")
    report = doctor.check_records(files, num_classes, class_names,
                                  workers=args.workers or os.cpu_count() or 1,
                                  progress=sys.stderr.isatty())
    print(json.dumps(report) if args.json else doctor.format_report(report))
    if report["bad"]:
        sys.exit(1)
