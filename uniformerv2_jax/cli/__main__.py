"""``python -m uniformerv2_jax.cli COMMAND [--flags]``: the uniformerv2 command."""

import sys

from uniformerv2_jax.cli import main

main(["uniformerv2", *sys.argv[1:]])
