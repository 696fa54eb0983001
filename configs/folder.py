"""Fine-tune on your own videos: a folder per class, turned into records, then this config.

  python main.py write_records --videos=my_videos/train --out=records/mine --name=train
  python main.py write_records --videos=my_videos/val --out=records/mine --name=val \
      --classes=records/mine/classes.txt
  python main.py train --config=configs/folder.py:records/mine --workdir=runs/mine \
      --config.init_from=clip:ViT-B-16.pt
  python main.py train --config=configs/folder.py:records/mine,k400 --workdir=runs/mine \
      --config.init_from=official:k400_k710_uniformerv2_b16_8x224.pyth

The argument is ``DIR[,START]``: DIR holds ``train-*.tfrecord`` (and ``val-*.tfrecord``
if you have a validation split) with their counts files, and ``classes.txt``, all
written by ``write_records --videos`` (the class list is the folder names, sorted). The
class count is read from ``classes.txt``. START is the recipe's starting point:

- ``clip`` (default): the official B/16 8x224 recipe from CLIP (kinetics.py:b16_8x224);
- ``k400``: a Kinetics-400 B/16 checkpoint, fine-tuned as the official rows fine-tune
  K710 checkpoints (kinetics.py:b16_8x224_k710: 5 epochs at a 5x lower rate); its head
  is replaced (head_map new). A new head learns slowly at that rate on a small batch:
  raise --config.optim.lr if the training loss stalls.

Scaled to the data: the global batch is the official 256, or less for a small dataset
(the largest power of two up to an eighth of the training clips, at least 8), and the
learning rate follows the batch linearly (the official rates are for batch 256).
"""

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections

from uniformerv2_jax import labels, storage
from uniformerv2_jax.input import sources
from uniformerv2_jax.zoo import Row, experiment


def kinetics_row(name: str) -> Row:
    """A row of configs/kinetics.py, the official recipe these start from."""
    spec = importlib.util.spec_from_file_location("kinetics", Path(__file__).parent / "kinetics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ROWS[name]


START = {"clip": "b16_8x224", "k400": "b16_8x224_k710"}  # START -> kinetics.py row


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    directory, _, start = arg.partition(",")
    if not directory or start not in ("", *START):
        raise ValueError(f"configs/folder.py:{arg!r}: expected DIR[,clip|k400]")
    root = storage.path(directory)
    class_list = root / "classes.txt"
    if not class_list.is_file():
        raise FileNotFoundError(f"{class_list}: not found; write_records --videos writes it")
    train = str(root / "train-*.tfrecord")
    examples = sum(sources.record_counts(storage.glob(train)).values())
    if not examples:
        raise FileNotFoundError(f"{train}: no training records")
    start = start or "clip"
    base = kinetics_row(START[start])
    batch = min(base.batch, max(8, 1 << max(1, examples // 8).bit_length() - 1))
    # The k400 start is the checkpoint of that kinetics.py row itself.
    init = "clip" if start == "clip" else f"kinetics.py:k400/{START[start]}"
    row = dataclasses.replace(base, init=init, batch=batch, lr=base.lr * batch / base.batch,
                              head_map="new", top1={})
    c = experiment("k400", row)  # the Kinetics model and data recipe
    c.model.num_classes = len(labels.read_class_names(class_list))
    c.data.class_names = str(class_list)
    c.data.train = train
    if storage.glob(str(root / "val-*.tfrecord")):
        c.data.val = str(root / "val-*.tfrecord")
    c.eval_batch_size = min(c.eval_batch_size, batch)
    return c
