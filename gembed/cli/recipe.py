"""`gembed recipe` and `gembed bench quality`: the recipe config's absl / ml_collections flags,
like `gembed train` (`--config configs/recipe.py[:tiny]`, `--workdir`, `--config.a.b=v`, `-v`).

    gembed recipe --config configs/recipe.py --workdir runs/recipe [--config.data_dir=...]
    gembed bench quality --config configs/recipe.py --workdir runs/quality [--config.a.b=v ...]
"""

from __future__ import annotations

import functools
import sys

from gembed.cli import startup, train


def add_parsers(sub) -> None:
  sub.add_parser("recipe", help="the whole recipe: gembed recipe --config configs/recipe.py "
                 "--workdir DIR [--config.a.b=v ...] [-v] (stage 1 -> mined negatives -> "
                 "ingredients -> greedy soup -> held-out evaluation -> report)")


def run(argv: list[str], command: str) -> int:
  """`command`: "recipe" (gembed.recipe.run) or "quality" (gembed.tools.bench.quality.run)."""
  flag_values = train.define_flags(argv)
  config = train.parse_config(flag_values, argv, "workdir")
  if config is None:
    return 2
  workdir = flag_values.workdir
  from gembed import recipe
  from gembed.textio import InputError
  from gembed.tools.bench import quality
  try:
    (recipe.run if command == "recipe" else quality.run)(
        config, workdir, functools.partial(startup.configure, flag_values.verbose))
  except (InputError, FileNotFoundError, ValueError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  return 0
