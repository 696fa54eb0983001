"""The command line (uniformerv2_jax/cli): each command's own flags, help, errors, entry points."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from uniformerv2_jax import cli
from uniformerv2_jax.cli import check_records, convert, features
from uniformerv2_jax.cli import compile as compile_command


def help_text(command: str, capsys) -> str:
    cli.main(["uniformerv2", command, "--help"])
    return capsys.readouterr().out


def test_a_commands_help_lists_its_own_flags_only(capsys):
    compile_help, predict_help = help_text("compile", capsys), help_text("predict", capsys)
    assert "--topology:" in compile_help and "--config:" in compile_help
    assert "--video:" not in compile_help and "--top_k:" not in compile_help
    assert "--video:" in predict_help and "--top_k:" in predict_help
    assert "--topology:" not in predict_help and "--config:" not in predict_help
    assert predict_help.startswith("Top-5 classes of a video.")


def test_one_flag_name_means_what_its_command_says():
    """--out, --json and --workers are separate flags of separate commands."""
    argv = ["uniformerv2", "--out=k400.safetensors", "--from=converted", "--src=ckpt"]
    values = convert.flag_values(argv)
    values(argv)
    assert (values.out, values["from"].value) == ("k400.safetensors", "converted")
    argv = ["uniformerv2", "--out=feats", "--videos=videos", "--checkpoint=run"]
    values = features.flag_values(argv)
    values(argv)
    assert (values.out, values.videos, values.feature) == ("feats", "videos", "head_input")

    argv = ["uniformerv2", "--data=records/*", "--json", "--workers=2"]
    values = check_records.flag_values(argv)
    values(argv)
    assert values.json is True and values.workers == 2
    argv = ["uniformerv2", "--config=configs/synthetic.py:temporal", "--config.seed=7",
            "--topology=v5e-1", "--json=report.json"]
    values = compile_command.flag_values(argv)
    values(argv)
    assert values.json == "report.json" and values.config.seed == 7


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uniformerv2_jax.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_the_entry_points_list_the_commands_and_name_unknown_flags():
    listing = run_cli("--help")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert all(f"\n  {command} " in listing.stdout for command in cli.COMMANDS)
    unknown = run_cli("compile", "--video=clip.mp4")
    assert unknown.returncode == 1
    assert "(compile): Unknown command line flag 'video'" in unknown.stderr
    no_command = run_cli()
    assert no_command.returncode == 1 and "usage: uniformerv2 {demo|train|" in no_command.stderr
    script = shutil.which("uniformerv2", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the uniformerv2 console script is not installed (pip install -e .)")
    installed = subprocess.run([script, "predict", "-h"], capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0 and "--video:" in installed.stdout
