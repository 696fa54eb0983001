"""The demo: a small UniFormerV2 learns the synthetic temporal task from scratch on a CPU.

  python main.py make_synthetic --out=data/synthetic
  python main.py train --config=configs/synthetic.py --workdir=runs/synthetic
  python main.py train --config=configs/synthetic.py:order_blind --workdir=runs/order_blind

The task (uniformerv2_jax/input/synthetic.py) is decided only by the order of frames.
``temporal`` is the full model: local MHRA in every block and DPE in the global blocks.
``order_blind`` removes both: what remains (per-frame ViT, then a query attending to the
set of all tokens) cannot tell a clip from its time reversal, so it stays at chance.
"""

from uniformerv2_jax.config import base_config, model_config


def get_config(arg: str = "temporal"):
    if arg not in ("temporal", "order_blind"):
        raise ValueError(f"configs/synthetic.py:{arg}: expected temporal or order_blind")
    temporal = arg == "temporal"
    c = base_config()
    c.seed = 0
    c.init_from = "scratch"  # random initialisation: the demo has no pretrained weights
    c.model = model_config(
        "B/16", input_resolution=64, patch_size=8, width=96, layers=4, heads=4, t_size=8,
        return_list=(2, 3), n_dim=96, n_head=4, mlp_dropout=0.0, cls_dropout=0.0,
        num_classes=2, no_lmhra=not temporal, dpe=temporal)
    c.data.train = "data/synthetic/train-*.tfrecord"
    c.data.val = "data/synthetic/val-*.tfrecord"
    c.data.class_names = "data/synthetic/classes.txt"
    c.data.area = (0.6, 1.0)
    c.data.randaugment_spec = ""
    c.data.shuffle_buffer = 256
    c.data.num_clips, c.data.num_crops = 2, 3
    c.batch_size = 16
    c.eval_batch_size = 8
    c.optim.lr = 1e-3
    c.optim.epochs = 16.0  # 192 training videos: 12 steps an epoch, 192 steps
    c.optim.warmup_epochs = 2.5
    c.log_every = 12
    c.eval_every = 48
    c.checkpoint_every = 48
    return c
