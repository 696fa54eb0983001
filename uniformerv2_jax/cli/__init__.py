"""uniformerv2_jax's command line: ``uniformerv2 COMMAND [--flags]``, in a checkout also
``python main.py COMMAND [--flags]``; ``uniformerv2 COMMAND --help`` lists COMMAND's flags.

Any path may be local or gs://. demo, train, eval and features re-run themselves under
jemalloc where installed (UNIFORMERV2_JEMALLOC=0: not).
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

from absl import app, command_name, flags, logging

from uniformerv2_jax import cpu

# A command is the module of its name here: its docstring (a one-line summary, then its
# usage), flag_values(argv) (a FlagValues of its own flags; argv is where ml_collections
# reads --config.FIELD=VALUE overrides) and run(args) (the parsed flags).
COMMANDS = ("demo", "train", "eval", "predict", "export", "parity", "convert", "write_records",
            "make_k710", "make_synthetic", "check_records", "features", "compile")
JEMALLOC_COMMANDS = ("demo", "train", "eval", "features")  # re-run under jemalloc (uniformerv2_jax/cpu.py)
HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def command_module(command: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{command}")


def overview() -> str:
    """This module's docstring and the commands, one line each."""
    lines = [f"  {command:<15} {command_module(command).__doc__.splitlines()[0]}" for command in COMMANDS]
    return "\n".join([__doc__, "commands:", *lines, ""])


def usage_line(program: str) -> str:
    return f"usage: {program} {{{'|'.join(COMMANDS)}}} [--flags]"


def command_help(module: ModuleType, values: flags.FlagValues) -> str:
    """A command's docstring and flags (not absl's own, which every command takes too)."""
    # absl heads each group with the module that defined it (cli.common or the command's).
    lines = [line for line in values.get_help(include_special_flags=False).splitlines()
             if line.startswith(" ")]
    return "\n".join([module.__doc__, "flags:", *lines, ""])


def parse(command: str, values: flags.FlagValues, argv: list[str]) -> None:
    """absl's own flags (--verbosity, --logtostderr, ...) as app.run parses them, then the
    command's. A flag that neither knows is an error that names it and the command, with
    absl's exit status 1."""
    try:
        positional = values(flags.FLAGS(argv, known_only=True))[1:]
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error ({command}): {error}\n"
                         f"Pass --help to see the flags of {command}.\n")
        sys.exit(1)
    if positional:
        raise app.UsageError(usage_line(Path(argv[0]).name))


def start(command: str) -> None:
    """What absl's app.run does before main (process name, absl's log handler, faulthandler),
    then jemalloc and the log level."""
    command_name.make_process_name_useful()
    logging.use_absl_handler()
    faulthandler.enable()
    if command in JEMALLOC_COMMANDS:
        cpu.reexec_with_jemalloc()  # returns where it is preloaded, switched off or missing
    if not flags.FLAGS["verbosity"].present:  # orbax logs every step of a save at INFO
        logging.set_verbosity(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Runs ``argv`` (default: sys.argv): the program, a command and its flags."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    if command is None and any(arg in HELP for arg in argv[1:]):
        print(overview())
        return
    if command not in COMMANDS:
        sys.stderr.write(f"{overview()}\n{usage_line(program)}\n")
        sys.exit(1)
    module = command_module(command)
    values = module.flag_values(argv)
    rest = argv[:]
    rest.remove(command)  # the first occurrence: the command, not a flag's value
    if any(arg in HELP for arg in rest):
        print(command_help(module, values))
        return
    try:
        parse(command, values, rest)
        start(command)
        module.run(values)
    except app.UsageError as error:
        sys.stderr.write(f"{command_help(module, values)}\n{error}\n")
        sys.exit(error.exitcode)
