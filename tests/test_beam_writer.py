"""The record writer as an Apache Beam pipeline (DirectRunner): the same shards as the
one-host writer, byte for byte, failures counted, reruns without duplicates."""

import filecmp
import hashlib
import json
import subprocess
import sys

import pytest
import tensorflow as tf
from helpers import ROOT

from uniformerv2_jax.input import records, sources, synthetic, writer

beam = pytest.importorskip("apache_beam")
from uniformerv2_jax.input import beam_writer  # noqa: E402

NUM_SHARDS = 4


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    videos = synthetic.write_dataset(tmp_path_factory.mktemp("videos"), videos_per_class=3,
                                     frames=8, size=32)
    (videos / synthetic.CLASSES[0] / "broken.mp4").write_text("not a video")
    found, _ = writer.folder_entries(videos, synthetic.CLASSES)
    return found


def shard_files(directory) -> list[str]:
    return [str(directory / records.shard_name("train", i, NUM_SHARDS)) for i in range(NUM_SHARDS)]


def test_beam_and_one_host_write_the_same_shards(tmp_path, entries):
    report = beam_writer.write_records(entries, tmp_path / "beam", "train", NUM_SHARDS,
                                       ["--runner=DirectRunner"], fps=8, short_side=32)
    writer.write_records(entries, tmp_path / "host", "train", NUM_SHARDS, fps=8, short_side=32,
                         workers=0, progress=False)
    assert report["videos"] == 7 and report["failed"] == 1 and report["written"] == NUM_SHARDS
    for beam_shard, host_shard in zip(shard_files(tmp_path / "beam"), shard_files(tmp_path / "host")):
        assert filecmp.cmp(beam_shard, host_shard, shallow=False), beam_shard
    for sidecar in ("train.counts.json", "train.failures.json"):
        assert json.loads((tmp_path / "beam" / sidecar).read_text()) == json.loads(
            (tmp_path / "host" / sidecar).read_text())
    # The staged video list is gone; only shards and sidecars remain.
    shards = [p.split("/")[-1] for p in shard_files(tmp_path / "beam")]
    assert sorted(p.name for p in (tmp_path / "beam").iterdir()) == sorted(
        shards + ["train.counts.json", "train.failures.json"])

    # Each video sits in shard sha256(id)[:8] mod 4, in order of id; good + failed = all.
    placed = {}
    for index, path in enumerate(shard_files(tmp_path / "beam")):
        names = [records.parse_clip(r)["filename"].numpy().decode() for r in tf.data.TFRecordDataset(path)]
        assert names == sorted(names)
        placed.update({name: index for name in names})
    failures = json.loads((tmp_path / "beam" / "train.failures.json").read_text())
    assert [f["path"].rsplit("/", 1)[1] for f in failures] == ["broken.mp4"]
    assert len(placed) + len(failures) == len(entries)
    for entry in entries:
        expected = int.from_bytes(hashlib.sha256(entry.id.encode()).digest()[:8], "big") % NUM_SHARDS
        if entry.path in placed:
            assert placed[entry.path] == expected, entry.id
        else:
            assert failures[0]["shard"] == records.shard_name("train", expected, NUM_SHARDS)
    counts = json.loads((tmp_path / "beam" / "train.counts.json").read_text())
    assert sources.record_counts(shard_files(tmp_path / "beam")) == {
        p: counts[p.rsplit("/", 1)[1]] for p in shard_files(tmp_path / "beam")}


def test_a_rerun_writes_only_unfinished_shards_and_duplicates_nothing(tmp_path, entries):
    out = tmp_path / "beam"
    beam_writer.write_records(entries, out, "train", NUM_SHARDS, ["--runner=DirectRunner"],
                              fps=8, short_side=32)
    before = {p: open(p, "rb").read() for p in shard_files(out)}
    # A failed job: one shard never published (its count never written).
    lost = shard_files(out)[1]
    tf.io.gfile.remove(lost)
    counts = json.loads((out / "train.counts.json").read_text())
    del counts[lost.rsplit("/", 1)[1]]
    (out / "train.counts.json").write_text(json.dumps(counts))
    again = beam_writer.write_records(entries, out, "train", NUM_SHARDS, ["--runner=DirectRunner"],
                                      fps=8, short_side=32)
    assert again["written"] == 1 and again["kept"] == NUM_SHARDS - 1 and again["failed"] == 1
    assert {p: open(p, "rb").read() for p in shard_files(out)} == before
    assert sum(sources.record_counts(shard_files(out)).values()) == len(entries) - 1


@pytest.mark.e2e
def test_write_records_command_runs_on_beams_multiprocessing_direct_runner(tmp_path, entries):
    videos = entries[0].path.rsplit("/", 2)[0]
    command = [sys.executable, str(ROOT / "main.py"), "write_records", f"--videos={videos}",
               f"--out={tmp_path}", "--name=train", f"--num_shards={NUM_SHARDS}", "--fps=8",
               "--short_side=32", "--runner=DirectRunner",
               "--pipeline_options=--direct_running_mode=multi_processing --direct_num_workers=2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "7 videos -> 4 shards" in result.stdout and "1 failed" in result.stdout
    one_host = tmp_path / "host"
    writer.write_records(entries, one_host, "train", NUM_SHARDS, fps=8, short_side=32, workers=0,
                         progress=False)
    for beam_shard, host_shard in zip(shard_files(tmp_path), shard_files(one_host)):
        assert filecmp.cmp(beam_shard, host_shard, shallow=False)
