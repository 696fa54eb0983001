"""Our logits next to the official PyTorch model's on the shipped fixture.

  uniformerv2 parity
      Converts the shipped official-layout fixture (data/fixtures/tiny_a.*), saves and
      reloads it as an orbax checkpoint, runs the forward pass and prints the logits next
      to the official PyTorch model's.
"""

from __future__ import annotations

import sys

from absl import flags

from uniformerv2_jax import storage
from uniformerv2_jax.cli.common import ROOT


def flag_values(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", "/tmp/uniformerv2_parity", "where the converted checkpoint goes.",
                        flag_values=values)
    return values


def run(args: flags.FlagValues) -> None:
    from uniformerv2_jax import demo as demo_lib

    error = demo_lib.parity(ROOT / "data" / "fixtures", storage.path(args.workdir))
    if error >= demo_lib.PARITY_BOUND:
        sys.exit(1)
