"""README's "your own videos" walkthrough, every command as a user types it: a folder of
mp4 files -> records -> training from CLIP (configs/folder.py) -> evaluation ->
prediction -> features -> an exported model."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURES, ROOT

from uniformerv2_jax.input import synthetic

pytestmark = pytest.mark.e2e  # whole programs: main.py commands, worker processes

# The shipped tiny CLIP (data/fixtures/clip_tiny: 64x64 input, patch 16, width 64, 4
# layers) stands in for ViT-B-16.pt; the rest of the B/16 recipe is configs/folder.py's.
TINY_MODEL = ["--config.model.input_resolution=64", "--config.model.width=64",
              "--config.model.layers=4", "--config.model.heads=4", "--config.model.n_dim=64",
              "--config.model.n_head=4", "--config.model.return_list=(2, 3)",
              "--config.model.t_size=4"]


def main_py(*args: str, cwd) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                         text=True, timeout=600, cwd=cwd)
    assert out.returncode == 0, f"main.py {args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_from_a_folder_of_videos_to_an_exported_model(tmp_path):
    videos = tmp_path / "my_videos"
    for split, count, seed in (("train", 8, 0), ("val", 3, 1)):
        synthetic.write_dataset(videos / split, count, seed=seed, frames=32, size=64)

    main_py("write_records", f"--videos={videos / 'train'}", "--out=records", "--name=train",
            "--num_shards=2", "--fps=16", "--short_side=64", cwd=tmp_path)
    main_py("write_records", f"--videos={videos / 'val'}", "--out=records", "--name=val",
            "--num_shards=1", "--fps=16", "--short_side=64", "--classes=records/classes.txt",
            cwd=tmp_path)
    assert (tmp_path / "records" / "classes.txt").read_text().split() == list(synthetic.CLASSES)

    out = main_py("train", f"--config={ROOT / 'configs' / 'folder.py'}:records", "--workdir=run",
                  f"--config.init_from=clip:{FIXTURES / 'clip_tiny.safetensors'}",
                  "--config.train_steps=4", "--config.data.num_clips=1", *TINY_MODEL,
                  cwd=tmp_path)
    assert "validation: top1" in out, out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["num_classes"] == 2 and config["batch_size"] == 8  # 16 clips / 8 -> 8
    assert config["optim"]["lr"] == pytest.approx(1e-5 * 8 / 256)  # the official rate, scaled

    out = main_py("eval", "--workdir=run", "--checkpoint=latest", cwd=tmp_path)
    evaluated = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluated["videos"] + evaluated["bad_records"] == 6, out

    clip = videos / "val" / "darkening" / "00000.mp4"
    out = main_py("predict", "--checkpoint=run", f"--video={clip}", cwd=tmp_path)
    ranked = dict(line.split()[::-1] for line in out.splitlines()[1:])  # "  63.10%  darkening"
    assert sorted(ranked) == sorted(synthetic.CLASSES), out  # names from records/classes.txt
    assert sum(float(p.rstrip("%")) for p in ranked.values()) == pytest.approx(100, abs=0.02)

    main_py("features", "--checkpoint=run", f"--videos={videos / 'val'}", "--out=features",
            cwd=tmp_path)
    index = [json.loads(line) for line in (tmp_path / "features" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 6

    main_py("export", "--checkpoint=run", "--out=exported", "--formats=jax", cwd=tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 64, 64, 3), np.uint8)
    run_export = (
        "import sys, jax, numpy as np\n"
        "exported = jax.export.deserialize(open(sys.argv[1], 'rb').read())\n"
        "print(np.asarray(exported.call(np.load(sys.argv[2]))).shape)\n")
    np.save(tmp_path / "frames.npy", frames)
    shape = subprocess.run([sys.executable, "-c", run_export, str(tmp_path / "exported" / "model.jax_export"),
                            str(tmp_path / "frames.npy")], capture_output=True, text=True, timeout=300)
    assert shape.stdout.strip() == "(3, 2)", shape.stderr[-2000:]
