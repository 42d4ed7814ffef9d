"""The `gembed` parser and dispatcher: `-v`, then one module per command group.

A command group is a module of this package with `add_parsers(subparsers)`, which adds its
subcommands and sets `func(args) -> exit status` on each; naming it in COMMAND_GROUPS registers
it. Command modules import the library inside their functions, so a command loads only what it
uses. Only the entry points (`gembed` = this module's `main`, gembed.main,
`python -m gembed.cli`) import gembed.cli.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gembed.cli import startup

COMMAND_GROUPS = ("encode", "train", "aot", "teacher_embed", "cache", "recipe", "evaluate", "models", "data", "bench")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="gembed", description="Train and use text embedding models.")
  parser.add_argument("-v", "--verbose", action="store_true", help="show everything: debug logging "
                      "and the start-up lines of TensorFlow, XLA and absl")
  sub = parser.add_subparsers(dest="command", required=True)
  for name in COMMAND_GROUPS:
    importlib.import_module(f"gembed.cli.{name}").add_parsers(sub)
  return parser


def main(argv=None) -> int:
  if argv is None:  # run from the shell (tests call main with their arguments)
    startup.preload_tcmalloc()
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = argv[:1] in (["-v"], ["--verbose"])
  first = argv[verbose:verbose + 1]
  if first in (["train"], ["aot"], ["teacher-embed"], ["cache"]):  # every flag: the command's absl parser
    command = importlib.import_module(f"gembed.cli.{first[0].replace('-', '_')}")
    return command.run([f"gembed {first[0]}", *argv[verbose + 1:], *["--verbose"] * verbose])
  rest = argv[verbose:]
  if rest[:1] == ["recipe"] or rest[:2] == ["bench", "quality"]:  # the recipe config's flags
    from gembed.cli import recipe
    command = "recipe" if rest[0] == "recipe" else "quality"
    name = "gembed recipe" if command == "recipe" else "gembed bench quality"
    return recipe.run([name, *rest[1 if command == "recipe" else 2:], *["--verbose"] * verbose],
                      command)
  startup.configure(verbose)
  args = build_parser().parse_args(argv)
  from gembed.formats.hf import CheckpointImportError
  from gembed.textio import InputError
  try:
    return args.func(args)
  except (InputError, CheckpointImportError, FileNotFoundError, ValueError) as e:
    print(f"gembed {args.command}: error: {e}", file=sys.stderr)
    return 2
