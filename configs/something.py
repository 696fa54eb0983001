"""Something-Something V1/V2 from CLIP: local MHRA, temporal downsampling, no flips.

  python main.py train --config=configs/something.py:sthv2/b16_16x224 \
      --config.init_from=clip:ViT-B-16.pt ...

The official recipe puts two augmented copies of each video in a batch (repeated
augmentation), so batch 256 is 128 videos x 2; 16 input frames run as 8 through the
transformer (temporal stride 2). Test: 1 clip x 3 crops.
"""

from uniformerv2_jax.zoo import Row, experiment

ROWS = {
    # name:             backbone  frames init  batch lr    ep warm views   reported top-1
    "b16_16x224": Row("B/16", 16, "clip", 256, 4e-5, 22, 5, (1, 3), {"sthv1": 56.8, "sthv2": 69.5}),
    "b16_32x224": Row("B/16", 32, "clip", 256, 4e-5, 22, 5, (1, 3), {"sthv1": 59.4, "sthv2": 70.7}),
    "l14_16x224": Row("L/14", 16, "clip", 256, 2e-5, 22, 5, (1, 3), {"sthv1": 60.5, "sthv2": 72.1}),
    "l14_32x224": Row("L/14", 32, "clip", 256, 2e-5, 22, 5, (1, 3), {"sthv1": 62.7, "sthv2": 73.0}),
}


def get_config(arg: str = "sthv2/b16_16x224"):
    dataset, name = arg.split("/")
    return experiment(dataset, ROWS[name])
