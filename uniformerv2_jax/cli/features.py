"""Features of every video of a folder or of DMVR records.

  uniformerv2 features --checkpoint=runs/k400 --videos=DIR|--records=GLOB --out=feats/
      [--feature=head_input,logits,layer_{i}/cls|query|patches] [--keep_views]
      [--window_seconds=S --stride_seconds=S] [--num_clips=K --num_crops=1|3] [--video_fps=F]
      Whole videos or sliding windows, test views averaged (or kept):
      OUT/features/<video>.npy (.safetensors for several features), OUT/index.jsonl,
      OUT/failures.json. Resumable; multi-host: --distributed.
"""

from __future__ import annotations

import sys

from absl import app, flags

from uniformerv2_jax.cli import common


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("checkpoint", None, "a training workdir or a converted directory.",
                        flag_values=values)
    flags.DEFINE_string("videos", None, "a folder of videos (directly in it, or in class subfolders).",
                        flag_values=values)
    flags.DEFINE_string("records", None, "DMVR record shards (comma-separated globs).", flag_values=values)
    flags.DEFINE_string("classes", None, "with --records: the class list whose names decide the "
                        "records' labels.", flag_values=values)
    flags.DEFINE_string("out", None, "output directory.", flag_values=values)
    flags.DEFINE_string("feature", "head_input", "comma-separated, of head_input, logits, "
                        "layer_{i}/cls, layer_{i}/query, layer_{i}/patches.", flag_values=values)
    flags.DEFINE_bool("keep_views", False, "keep each test view (default: their mean).", flag_values=values)
    flags.DEFINE_float("window_seconds", None, "sliding window length (default: whole videos).",
                       flag_values=values)
    flags.DEFINE_float("stride_seconds", None, "window stride (default: --window_seconds).",
                       flag_values=values)
    flags.DEFINE_integer("num_clips", None, "test clips (default: the config's, or 4; windows 1).",
                         flag_values=values)
    flags.DEFINE_integer("num_crops", None, "crops 1|3 (default: the config's, or 3; windows 1).",
                         flag_values=values)
    flags.DEFINE_float("video_fps", None, "decoding frame rate (default: the file's own); with "
                       "--records: the rate of records that carry none (10).", flag_values=values)
    flags.DEFINE_integer("batch_size", None, "clips per step, all hosts (default: 8 a device).",
                         flag_values=values)
    flags.DEFINE_integer("chunk_size", 64, "videos per chunk (the unit of resuming).", flag_values=values)
    common.define_devices(values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import predict
    from uniformerv2_jax.feature_job import Settings, extract
    from uniformerv2_jax.input.windows import Sampling

    if not args.checkpoint or not args.out or bool(args.videos) == bool(args.records):
        raise app.UsageError("features needs --checkpoint=DIR, --out=DIR and one of --videos=DIR "
                             "or --records=GLOB")
    window, stride = args.window_seconds, args.stride_seconds
    common.initialize_distributed(args)
    trained = predict.load_trained(args.checkpoint)
    m = trained.model
    common.announce_devices(args, m.width)
    views = (1, 1) if window else (trained.num_clips, trained.num_crops)  # windows: one centre view
    sampling = Sampling(m.t_size, m.input_resolution, args.num_clips or views[0],
                        args.num_crops or views[1], window, stride or window, args.video_fps)
    settings = Settings(args.checkpoint, args.videos, args.records, tuple(args.feature.split(",")),
                        sampling, args.keep_views, args.chunk_size, args.classes)
    report = extract(trained, settings, args.out, args.batch_size, progress=sys.stderr.isatty())
    if "written" in report:  # process 0
        print(f"{report['videos']} videos ({report['chunks_kept']} of {report['chunks']} chunks kept "
              f"from an earlier run): {report['written']} written, {report['failed']} failed "
              f"(listed in {report['failures_file']}); index {report['index']}")
