"""Top-5 classes of a video.

  uniformerv2 predict --checkpoint=runs/k400 --video=clip.mp4 [--class_names=FILE]
      --checkpoint is a training workdir or a converted directory.
"""

from __future__ import annotations

from absl import app, flags


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("checkpoint", None, "a training workdir or a converted directory.",
                        flag_values=values)
    flags.DEFINE_string("video", None, "the video file.", flag_values=values)
    flags.DEFINE_string("class_names", None, "class names, one per line (default: the training "
                        "config's, or the shipped list for the head's class count).", flag_values=values)
    flags.DEFINE_integer("top_k", 5, "classes to print.", flag_values=values)
    flags.DEFINE_integer("num_clips", None, "test clips (default: the config's, or 4).", flag_values=values)
    flags.DEFINE_integer("num_crops", None, "crops 1|3 (default: the config's, or 3).", flag_values=values)
    flags.DEFINE_float("video_fps", None, "decoding frame rate (default: the file's own).",
                       flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import labels, predict

    if not args.checkpoint or not args.video:
        raise app.UsageError("predict needs --checkpoint=DIR and --video=FILE")
    trained = predict.load_trained(args.checkpoint)
    model = trained.model
    names = labels.class_names_for(model.num_classes, args.class_names or trained.class_names)
    views = predict.video_views(args.video, clip_frames=model.t_size, crop_size=model.input_resolution,
                                num_clips=args.num_clips or trained.num_clips,
                                num_crops=args.num_crops or trained.num_crops, fps=args.video_fps)
    probs = predict.predict(model, trained.variables, views)
    print(predict.format_top_k(args.video, predict.top_k(probs, names, args.top_k)))
