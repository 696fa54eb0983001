"""The synthetic temporal task, learnt with and without the model's temporal parts.

  uniformerv2 demo [--workdir=runs/demo]
      Makes the synthetic temporal dataset (data/synthetic), trains a small UniFormerV2 on
      it from scratch and the same model without its temporal parts, evaluates both and
      prints a table; plots and metrics go to the workdir.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from absl import flags

from uniformerv2_jax import storage
from uniformerv2_jax.cli.common import ROOT


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "where the runs go (default: runs/demo in the checkout).",
                        flag_values=values)
    flags.DEFINE_integer("workers", None, "worker processes that write the dataset (default: cores).",
                         flag_values=values)
    return values


def synthetic_config() -> ModuleType:
    """configs/synthetic.py, by path: configs/ is no installed package, and the console script
    does not put the checkout on sys.path."""
    spec = importlib.util.spec_from_file_location("configs.synthetic", ROOT / "configs" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import demo as demo_lib

    results = demo_lib.run(synthetic_config().get_config, ROOT / "data" / "synthetic",
                           storage.path(args.workdir or ROOT / "runs" / "demo"), args.workers)
    temporal, blind = results["temporal"]["top1"], results["order_blind"]["top1"]
    if temporal < 0.95 or blind > 0.65:
        sys.exit(f"demo check failed: temporal {temporal:.1%} (needs >= 95%), "
                 f"order-blind {blind:.1%} (needs <= 65%)")
