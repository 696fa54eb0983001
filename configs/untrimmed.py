"""ActivityNet v1.3 and HACS, fine-tuned from the K400 (+K710) L/14 checkpoints.

  python main.py train --config=configs/untrimmed.py:anet/l14_16x224 \
      --config.init_from=converted:ckpt/k400_k710_l14_16x224 ...

Test: 10 clips x 3 crops over the whole (untrimmed) video.
"""

from uniformerv2_jax.zoo import Row, experiment

ROWS = {
    # name:             backbone frames init                        batch lr    ep warm views    reported top-1
    "l14_16x224": Row("L/14", 16, "kinetics.py:k400/l14_16x224_k710", 64, 5e-6, 20, 5, (10, 3), {"anet": 94.3, "hacs": 95.5}),
    "l14_32x224": Row("L/14", 32, "kinetics.py:k400/l14_32x224_k710", 64, 5e-6, 20, 5, (10, 3), {"anet": 94.7, "hacs": 95.4}),
}


def get_config(arg: str = "anet/l14_16x224"):
    dataset, name = arg.split("/")
    config = experiment(dataset, ROWS[name])
    config.head_map = "new"
    return config
