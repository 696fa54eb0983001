"""Kinetics-710 train/val CSVs from the Kinetics-400/600/700 CSVs.

  uniformerv2 make_k710 --k400_csvs=k400/train.csv,k400/validate.csv,k400/test.csv
      --k600_csvs=... --k700_csvs=... --out=k710/
      The three training sets merged, one row per YouTube id, without any id of their
      validation and test sets, class names as in data/labels/kinetics710.txt ->
      OUT/k710_train.csv and OUT/k710_val.csv (for write_records --csv); prints the rows
      kept and left out per source and reason.
"""

from __future__ import annotations

from absl import app, flags

from uniformerv2_jax import storage


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("k400_csvs", None, "Kinetics-400 CSVs, comma-separated (train, validate, "
                        "test; a row's split is its 'split' value, else its file name's).",
                        flag_values=values)
    flags.DEFINE_string("k600_csvs", None, "Kinetics-600 CSVs, as --k400_csvs.", flag_values=values)
    flags.DEFINE_string("k700_csvs", None, "Kinetics-700 CSVs, as --k400_csvs.", flag_values=values)
    flags.DEFINE_string("out", None, "output directory.", flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax.input import kinetics710

    csvs = {source: args[f"{source}_csvs"].value for source in kinetics710.SOURCES}
    if not args.out or not all(csvs.values()):
        raise app.UsageError("make_k710 needs --k400_csvs, --k600_csvs, --k700_csvs (comma-separated "
                             "CSV paths each) and --out=DIR")
    report = kinetics710.make_k710({source: [p for p in paths.split(",") if p]
                                    for source, paths in csvs.items()}, args.out)
    out = storage.path(args.out)
    print(kinetics710.format_report(report))
    print(f"wrote {out / 'k710_train.csv'} and {out / 'k710_val.csv'}")
