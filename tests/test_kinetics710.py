"""Kinetics-710 CSVs (`main.py make_k710`) from small hand-made Kinetics-400/600/700 CSVs."""

import subprocess
import sys

import pytest
from helpers import ROOT

from uniformerv2_jax.input import kinetics710, writer
from uniformerv2_jax.labels import read_class_names

# Each source in another column layout: K400 the official one (its validation file without
# 'split', its test file without 'label' or 'split': the file names say the split), K600
# 'youtube_id,time_start,time_end,label,split' with 'validate' as a split value, K700 with
# test rows that have no label.
CSVS = {
    "k400/train.csv": """label,youtube_id,time_start,time_end,split
abseiling,aaa,10,20,train
air_drumming,bbb,0,10,train
balloon blowing,ccc,5,15,train
yoga,ddd,30,40,train
zumba,eee,1,11,train
""",
    "k400/validate.csv": """youtube_id,time_start,time_end,label
vvv,0,10,Yoga
www,3,13,abseiling
""",
    "k400/test.csv": """youtube_id,time_start,time_end
ttt,0,10
""",
    "k600/train.csv": """youtube_id,time_start,time_end,label,split
aaa,10,20,abseiling,train
bbb,0,10,AIR DRUMMING,train
fff,2,12,PASSING  american_football (in game),train
ttt,0,10,zumba,train
ggg,0,10,picking fruit,train
""",
    "k600/validate.csv": """label,youtube_id,time_start,time_end,split
zumba,www,3,13,validate
air drumming,xxx,0,10,validate
""",
    "k600/test.csv": """youtube_id,time_start,time_end,split
eee,1,11,test
""",
    "k700/train.csv": """label,youtube_id,time_start,time_end,split
inflating balloons,ccc,5,15,train
abseiling,aaa,10,20,train
yoga,hhh,0,10,train
zumba,iii,0,10,train
""",
    "k700/validate.csv": """label,youtube_id,time_start,time_end,split
yoga,ddd,30,40,val
not a kinetics class,yyy,0,10,val
""",
    "k700/test.csv": """youtube_id,time_start,time_end,split
iii,0,10,test
""",
}

# aaa, bbb: K400's (K600 and K700 repeat them); ccc: K400 names it "balloon blowing", a name
# the K710 list does not have, so K700's row ("inflating balloons") gives it; ddd: in K700
# validation; eee: in K600 test; ttt: in K400 test; iii: in K700 test; ggg: "picking fruit",
# not in the list.
EXPECTED_TRAIN = """youtube_id,time_start,time_end,label,split
aaa,10,20,abseiling,train
bbb,0,10,air drumming,train
fff,2,12,passing American football (in game),train
ccc,5,15,inflating balloons,train
hhh,0,10,yoga,train
"""
EXPECTED_VAL = """youtube_id,time_start,time_end,label,split
vvv,0,10,yoga,val
www,3,13,abseiling,val
xxx,0,10,air drumming,val
ddd,30,40,yoga,val
"""
EXPECTED_REPORT = {
    "train": {"k400": {"kept": 2, "duplicate": 0, "leaked": 2, "unknown_class": 1},
              "k600": {"kept": 1, "duplicate": 2, "leaked": 1, "unknown_class": 1},
              "k700": {"kept": 2, "duplicate": 1, "leaked": 1, "unknown_class": 0}},
    "val": {"k400": {"kept": 2, "duplicate": 0, "leaked": 0, "unknown_class": 0},
            "k600": {"kept": 1, "duplicate": 1, "leaked": 0, "unknown_class": 0},
            "k700": {"kept": 1, "duplicate": 0, "leaked": 0, "unknown_class": 1}},
    "unknown_names": ["balloon blowing", "not a kinetics class", "picking fruit"],
}
ROWS_READ = {"train": {"k400": 5, "k600": 5, "k700": 4}, "val": {"k400": 2, "k600": 2, "k700": 2}}


@pytest.fixture
def csvs(tmp_path):
    """{source: [train, validate, test CSV paths]} of :data:`CSVS`, written under tmp_path."""
    paths = {}
    for name, text in CSVS.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        paths.setdefault(path.parent.name, []).append(str(path))
    return paths


def test_rows_and_counts(csvs, tmp_path):
    report = kinetics710.make_k710(csvs, tmp_path / "k710")
    assert (tmp_path / "k710" / "k710_train.csv").read_text() == EXPECTED_TRAIN
    assert (tmp_path / "k710" / "k710_val.csv").read_text() == EXPECTED_VAL
    assert report == EXPECTED_REPORT
    for split, rows in ROWS_READ.items():
        assert {source: sum(counts.values()) for source, counts in report[split].items()} == rows


def test_write_records_reads_the_rows(csvs, tmp_path):
    kinetics710.make_k710(csvs, tmp_path / "k710")
    names = read_class_names(ROOT / "data" / "labels" / "kinetics710.txt")
    entries = writer.csv_entries(tmp_path / "k710" / "k710_train.csv", tmp_path / "videos", names)
    assert [e.label_text for e in entries] == ["abseiling", "air drumming",
                                               "passing American football (in game)",
                                               "inflating balloons", "yoga"]
    assert [names[e.label] for e in entries] == [e.label_text for e in entries]
    assert entries[3].path == str(tmp_path / "videos" / "ccc_000005_000015.mp4")


def test_names_match_without_case_spaces_or_underscores():
    assert kinetics710.class_key(" Air__Drumming ") == "air drumming"
    assert kinetics710.class_key("passing  American_ football") == "passing american football"
    clips = [kinetics710.Clip("a", 0, 10, "Air_Drumming", "train"),
             kinetics710.Clip("b", 0, 10, "airdrumming", "train")]
    kept, counts, unknown = kinetics710.merge({"k400": clips}, ["air drumming"])
    assert kept == [kinetics710.Clip("a", 0, 10, "air drumming", "train")]
    assert counts == {"k400": {"kept": 1, "duplicate": 0, "leaked": 0, "unknown_class": 1}}
    assert unknown == {"airdrumming"}
    with pytest.raises(ValueError, match="the same once case"):
        kinetics710.merge({"k400": clips}, ["a b", "A_B"])


def test_a_split_that_cannot_be_told_is_refused(tmp_path):
    undated = tmp_path / "kinetics400.csv"
    undated.write_text("youtube_id,time_start,time_end,label\naaa,0,10,yoga\n")
    with pytest.raises(ValueError, match=r"kinetics400.csv:2: cannot tell the split"):
        kinetics710.read_annotations(undated)
    both = tmp_path / "trainval.csv"
    both.write_text("youtube_id,time_start,time_end,label\naaa,0,10,yoga\n")
    with pytest.raises(ValueError, match="cannot tell the split"):
        kinetics710.read_annotations(both)
    no_times = tmp_path / "train.csv"
    no_times.write_text("youtube_id,label\naaa,yoga\n")
    with pytest.raises(ValueError, match="no column time_end, time_start"):
        kinetics710.read_annotations(no_times)


def run_make_k710(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "make_k710", *args],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.e2e
def test_command(csvs, tmp_path):
    out = tmp_path / "k710"
    result = run_make_k710(*(f"--{source}_csvs={','.join(paths)}" for source, paths in csvs.items()),
                           f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "k710_train.csv").read_text() == EXPECTED_TRAIN
    assert (out / "k710_val.csv").read_text() == EXPECTED_VAL
    lines = result.stdout.splitlines()
    assert "train k400: 2 kept, 0 duplicate, 2 leaked, 1 unknown_class (of 5 rows)" in lines
    assert "train k600: 1 kept, 2 duplicate, 1 leaked, 1 unknown_class (of 5 rows)" in lines
    assert "train total: 5 clips" in lines and "val   total: 4 clips" in lines
    assert "'balloon blowing', 'not a kinetics class', 'picking fruit'" in result.stdout

    missing = run_make_k710(f"--k400_csvs={','.join(csvs['k400'])}", f"--out={out}")
    assert missing.returncode != 0 and "make_k710 needs --k400_csvs" in missing.stderr
