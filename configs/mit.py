"""Moments in Time V1, fine-tuned from the K400 (+K710) checkpoints; the head is new.

  python main.py train --config=configs/mit.py:b16_8x224 \
      --config.init_from=converted:ckpt/k400_k710_b16 ...
"""

from uniformerv2_jax.zoo import Row, experiment

ROWS = {
    # name:            backbone   frames init                         batch lr    ep warm views   top-1
    "b16_8x224": Row("B/16", 8, "kinetics.py:k400/b16_8x224_k710", 512, 2e-5, 24, 5, (4, 3), {"mit": 42.6}),
    "l14_8x224": Row("L/14", 8, "kinetics.py:k400/l14_8x224_k710", 512, 1e-5, 18, 5, (4, 3), {"mit": 47.0}),
    "l14_336_8x336": Row("L/14@336", 8, "kinetics.py:k400/l14_336_32x336_k710", 512, 1e-5, 18, 5, (4, 3), {"mit": 47.8}),
}


def get_config(arg: str = "b16_8x224"):
    config = experiment("mit", ROWS[arg])
    config.head_map = "new"
    return config
