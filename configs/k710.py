"""Kinetics-710 post-pretraining from CLIP (the first stage of the K400/600/700 recipe).

  python main.py train --config=configs/k710.py:l14_8x224 --config.init_from=clip:ViT-L-14.pt ...

K710 merges the K400/600/700 training sets (710 classes, K400's first, in the official
order). Its checkpoints start the k710 rows of configs/kinetics.py.
"""

from uniformerv2_jax.zoo import Row, experiment

ROWS = {
    # name:                   backbone   frames init batch lr    ep  warm views
    "b16_8x224": Row("B/16", 8, "clip", 256, 1e-5, 55, 5, (4, 3)),
    "l14_8x224": Row("L/14", 8, "clip", 512, 1e-5, 40, 5, (4, 3)),
    "l14_336_8x336": Row("L/14@336", 8, "clip", 256, 5e-6, 40, 5, (4, 3)),
    "frozen_l14_336_8x336": Row("L/14@336", 8, "clip", 512, 8e-4, 50, 0, (3, 1), frozen=True),
}


def get_config(arg: str = "b16_8x224"):
    return experiment("k710", ROWS[arg])
