"""The data doctor (`main.py check_records`) on shards with damage made here, record by record."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, write_synthetic_records

from uniformerv2_jax import storage
from uniformerv2_jax.input import doctor, records


def image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def jpeg(height: int = 24, width: int = 32, seed: int = 0) -> bytes:
    return tf.io.encode_jpeg(image(height, width, seed)).numpy()


def png(height: int = 20, width: int = 40, seed: int = 0) -> bytes:
    return tf.io.encode_png(image(height, width, seed)).numpy()


def undefined_huffman_table(data: bytes) -> bytes:
    """The JPEG without its DHT segments and its scan pointing at Huffman table 3.

    (With the DHT segments merely removed libjpeg falls back on the standard tables, which
    are the ones TF wrote, and the frame still decodes.)"""
    out, i = bytearray(data[:2]), 2
    while True:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        segment = bytearray(data[i:i + 2 + length])
        if marker == 0xDA:  # start of scan: every component's DC/AC table -> 3
            for k in range(segment[4]):
                segment[6 + 2 * k] = 0x33
            return bytes(out + segment + data[i + 2 + length:])
        if marker != 0xC4:
            out += segment
        i += 2 + length


def bmp(height: int = 2, width: int = 2) -> bytes:
    """A real 24-bit BMP (tf.io.decode_image would decode it; the pipeline takes JPEG/PNG only)."""
    row = (width * 3 + 3) // 4 * 4
    pixels = bytes(row * height)
    return (b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
            + pixels)


def write_shard(path, serialized: list[bytes]) -> list[int]:
    """Writes the records; returns each record's byte offset in the file."""
    offsets, offset = [], 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
            offsets.append(offset)
            offset += len(record) + 16
    return offsets


def good_clip(frames: int, label: int, name: str, height=32, width=48) -> bytes:
    return records.encode_clip([jpeg(height, width, seed=i) for i in range(frames)], label, "", name)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Four shards; returns (glob, expected per-shard (records, good, bad, bad_by_reason))."""
    root = tmp_path_factory.mktemp("doctor")
    assert tf.io.decode_image(bmp(), channels=3).shape == (2, 2, 3)
    truncated_png = png()[:len(png()) // 2]
    assert truncated_png.startswith(b"\x89PNG\r\n\x1a\n")
    no_dht = undefined_huffman_table(jpeg())
    assert no_dht[:2] == b"\xff\xd8" and no_dht[-2:] == b"\xff\xd9" and b"\xff\xc4" not in no_dht
    assert tf.io.extract_jpeg_shape(no_dht).numpy().tolist() == [24, 32, 3]  # the header parses
    huge_png = bytearray(png())
    huge_png[16:20] = (10_000).to_bytes(4, "big")  # IHDR width
    write_shard(root / "a-0.tfrecord", [
        records.encode_clip([jpeg(seed=1), jpeg(seed=2), jpeg(seed=3)], 0, "", "good_jpeg"),  # 0
        records.encode_clip([], 1, "", "empty"),  # 1
        records.encode_clip([jpeg(), jpeg(), truncated_png, jpeg()], 1, "", "cut_png"),  # 2
        records.encode_clip([jpeg(), no_dht, jpeg()], 0, "", "no_huffman"),  # 3
        records.encode_clip([bmp(), jpeg()], 0, "", "bmp"),  # 4
        records.encode_clip([jpeg()], 7, "", "label7"),  # 5
        records.encode_clip([jpeg()], [], "", "no_label"),  # 6
        records.encode_clip([jpeg()], -1, "", "label_minus_1"),  # 7
        records.encode_clip([png(seed=1), png(seed=2)], 1, "", "good_png"),  # 8
        b"\x0a\xffnot a SequenceExample",  # 9
        records.encode_clip([jpeg(), bytes(huge_png)], 1, "", "huge"),  # 10
    ])
    # Framing: each shard holds 3 clips of 1, 2 and 3 frames (labels 1).
    clips = [good_clip(n, 1, f"clip{n}") for n in (1, 2, 3)]
    for name, damage in (("b-mid_payload", "payload"), ("c-in_header", "header"), ("d-crc", "crc")):
        path = root / f"{name}.tfrecord"
        offsets = write_shard(path, clips)
        data = bytearray(path.read_bytes())
        if damage == "payload":  # the file ends in the middle of clip 2's bytes
            data = data[:offsets[2] + 12 + len(clips[2]) // 2]
        elif damage == "header":  # ... or 5 bytes into clip 2's length field
            data = data[:offsets[2] + 5]
        else:  # a payload byte of clip 1 flipped: its CRC no longer matches
            data[offsets[1] + 12 + 40] ^= 0xFF
        path.write_bytes(bytes(data))
    return str(root / "*.tfrecord"), root


REASONS_A = {"no_frames": 1, "missing_label": 2, "label_out_of_range": 1, "undecodable_frame": 3,
             "frame_too_large": 1, "unparsable": 1}
EXPECTED_SHARDS = [  # records, good, bad, bad_by_reason
    ("a-0", 11, 2, 9, REASONS_A),
    ("b-mid_payload", 3, 2, 1, {"framing": 1}),
    ("c-in_header", 3, 2, 1, {"framing": 1}),
    ("d-crc", 2, 1, 1, {"framing": 1}),
]


def test_every_kind_of_damage_is_counted_exactly(damaged):
    pattern, _ = damaged
    report = doctor.check_records(storage.glob(pattern), num_classes=2)
    got = [(s["path"].rsplit("/", 1)[1][:-9], s["records"], s["good"], s["bad"], s["bad_by_reason"])
           for s in report["shards"]]
    assert got == EXPECTED_SHARDS
    assert (report["records"], report["good"], report["bad"]) == (19, 7, 12)
    assert report["bad_by_reason"] == {**REASONS_A, "framing": 3}
    for s in report["shards"] + [report]:
        assert s["good"] + s["bad"] == s["records"]
        assert sum(s["bad_by_reason"].values()) == s["bad"]

    examples = {e["filename"]: e for e in report["shards"][0]["bad_examples"]}
    assert [e["index"] for e in report["shards"][0]["bad_examples"]] == [1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert examples["empty"]["reason"] == "no_frames"
    for name, frame in (("cut_png", 2), ("no_huffman", 1), ("bmp", 0)):
        assert (examples[name]["reason"], examples[name]["frame"]) == ("undecodable_frame", frame)
    assert examples["label7"]["reason"] == "label_out_of_range"
    assert examples["no_label"]["reason"] == examples["label_minus_1"]["reason"] == "missing_label"
    assert (examples["huge"]["reason"], examples["huge"]["frame"]) == ("frame_too_large", 1)
    assert examples[""]["reason"] == "unparsable"  # record 9: no filename to show
    framing = [s["bad_examples"] for s in report["shards"][1:]]
    assert [(e[0]["index"], e[0]["reason"]) for e in framing] == [(2, "framing"), (2, "framing"),
                                                                    (1, "framing")]
    assert "truncated" in framing[0][0]["detail"] and "corrupted" in framing[2][0]["detail"]

    # Good records: good_jpeg (3 frames 24x32, label 0), good_png (2 frames 20x40, label 1),
    # and the framing shards' readable clips (1, 2; 1, 2; 1 frames of 32x48, label 1).
    counts = [3, 2, 1, 2, 1, 2, 1]
    heights = [24] * 3 + [20] * 2 + [32] * 9
    widths = [32] * 3 + [40] * 2 + [48] * 9
    assert report["frames"] == {"min": 1, "median": np.median(counts), "max": 3}
    assert report["frame_size"] == {
        "height": {"min": 20, "median": np.median(heights), "max": 32},
        "width": {"min": 32, "median": np.median(widths), "max": 48}}
    assert report["class_histogram"] == {"0": 1, "1": 6}
    table = doctor.format_report(report)
    assert "undecodable_frame 3" in table and "cut_png: undecodable_frame frame 2" in table
    assert table.splitlines()[5].split()[:4] == ["total", "19", "7", "12"]


def test_without_a_class_count_large_labels_are_good(damaged):
    report = doctor.check_records(storage.glob(damaged[0]), workers=2)
    assert (report["records"], report["good"], report["bad"]) == (19, 8, 11)
    assert "label_out_of_range" not in report["bad_by_reason"]
    assert report["class_histogram"] == {"0": 1, "1": 6, "7": 1}


def run_main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "check_records", *args],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.e2e
def test_command_json_and_exit_codes(damaged, tmp_path):
    pattern, root = damaged
    classes = tmp_path / "classes.txt"
    classes.write_text("left\nright\n")
    # Comma-separated globs; a shard matched twice is read once.
    out = run_main(f"--data={root}/a-*,{pattern}", f"--classes={classes}", "--json")
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert (report["records"], report["good"], report["bad"]) == (19, 7, 12)
    assert report["bad_by_reason"] == {**REASONS_A, "framing": 3}
    assert [(s["records"], s["good"], s["bad"]) for s in report["shards"]] == [
        e[1:4] for e in EXPECTED_SHARDS]

    good = write_synthetic_records(tmp_path / "good", per_class=2, seed=0, frames=4, size=32)
    out = run_main(f"--data={good}", "--num_classes=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "all 4 records good"
