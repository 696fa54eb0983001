"""The record writer as an Apache Beam pipeline: one host's job, or a Dataflow job's.

The same inputs and outputs as :func:`writer.write_records` (the ``beam`` extra installs
Beam): the launching host plans the shards (:func:`writer.plan_shards`: each video's shard
a hash of its id, finished shards kept) and stages the videos of the shards to write as
``NAME.videos.jsonl`` beside them (a job graph holding 650 k videos would be too large to
submit). The pipeline reads that file, groups the videos by shard, and writes each shard
whole on one worker (staged, then published; its videos in order of id), so a
DirectRunner run and a DataflowRunner run give the same files, and a rerun of a failed
job rewrites a shard whole: no video is ever written twice. Failures are Beam counters
and, like the records per shard, written to the sidecars when every shard is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence

from uniformerv2_jax import storage
from uniformerv2_jax.input import writer

COUNTERS = "write_records"  # the Beam metrics namespace: videos_written, videos_failed


def staged_videos_name(basename: str) -> str:
    """The planned videos of a Beam run, one JSON object per line."""
    return f"{basename}.videos.jsonl"


def _write_shard(item: tuple[int, Iterable[str]], paths: Sequence[str], fps: float,
                 short_side: int, quality: int) -> Iterator[dict]:
    """(shard index, its videos as JSON lines) -> the shard written, and its outcome."""
    import apache_beam as beam

    index, lines = item
    videos = sorted((writer.VideoEntry(**json.loads(line)) for line in lines), key=lambda e: e.id)
    failures, written = writer.write_shard(videos, paths[index], fps, short_side, quality)
    beam.metrics.Metrics.counter(COUNTERS, "videos_written").inc(written)
    beam.metrics.Metrics.counter(COUNTERS, "videos_failed").inc(len(failures))
    yield {"shard": storage.path(paths[index]).name, "written": written, "failures": failures}


def _keyed(line: str) -> tuple[int, str]:
    video = json.loads(line)
    return video.pop("shard"), json.dumps(video)


def _save_sidecars(outcomes: list[dict], plan: writer.ShardPlan) -> None:
    """The sidecars of the whole run, written once by one worker when every shard is done."""
    for outcome in sorted(outcomes, key=lambda o: o["shard"]):
        plan.failures.extend(outcome["failures"])
        plan.counts[outcome["shard"]] = outcome["written"]
    plan.save()


def write_records(entries: Sequence[writer.VideoEntry], output_dir: str | os.PathLike, name: str,
                  num_shards: int, pipeline_args: Sequence[str], fps: float = 10.0,
                  short_side: int = 256, quality: int = 90) -> dict:
    """:func:`writer.write_records` as a Beam pipeline run with ``pipeline_args`` (Beam's
    own options: ``--runner=DirectRunner --direct_num_workers=8
    --direct_running_mode=multi_processing``, or ``--runner=DataflowRunner --project=...
    --region=... --temp_location=gs://...``); returns the same report."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    plan = writer.plan_shards(entries, output_dir, name, num_shards)
    for i in plan.todo:  # no video hashed to it: nothing for the pipeline to group
        if not plan.videos[i]:
            writer.write_shard([], plan.paths[i], fps, short_side, quality)
            plan.record(storage.path(plan.paths[i]).name, 0, [])
    todo = [i for i in plan.todo if plan.videos[i]]
    if todo:
        staged = storage.path(output_dir) / staged_videos_name(name)
        storage.write_atomic(staged, "".join(
            json.dumps({"shard": i, **dataclasses.asdict(entry)}) + "\n"
            for i in todo for entry in plan.videos[i]))
        with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
            _ = (pipeline
                 | "Read videos" >> beam.io.ReadFromText(os.fspath(staged))
                 | "Key by shard" >> beam.Map(_keyed)
                 | "Group by shard" >> beam.GroupByKey()
                 | "Write shards" >> beam.FlatMap(_write_shard, plan.paths, fps, short_side, quality)
                 | "Gather outcomes" >> beam.combiners.ToList()
                 | "Write sidecars" >> beam.Map(_save_sidecars, dataclasses.replace(
                     plan, paths=[], videos=[], todo=[])))  # what the sidecars need, small
        plan.reload()
        staged.unlink()
    return writer.report(plan, len(entries))
