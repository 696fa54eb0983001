"""uniformerv2_jax's command line from a checkout: ``python main.py COMMAND [--flags]``, the
same as the installed ``uniformerv2 COMMAND [--flags]`` (uniformerv2_jax/cli/).
``python main.py --help`` lists the commands, ``python main.py COMMAND --help`` a command's flags.
"""

from uniformerv2_jax.cli import main

if __name__ == "__main__":
    main()
