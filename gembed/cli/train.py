"""`gembed train` and `python -m gembed.main` (the flax-examples convention): flags only, then
the trainer.

    gembed train --config configs/demo.py --workdir /tmp/gembed-demo [--config.train.steps=200 ...]

Every flag belongs to this absl / ml_collections parser (`--config FILE[:ARG]`, `--workdir`,
`--config.a.b=v`, `-v`), so the `gembed` parser hands `train`'s arguments over untouched.
"""

from __future__ import annotations

import json
import os
import sys

from gembed.cli import startup


def add_parsers(sub) -> None:
  sub.add_parser("train", help="train: gembed train --config configs/X.py --workdir DIR "
                 "[--config.a.b=v ...] [-v] (the flags of python -m gembed.main)")


def config_flag(flag_values, argv: list[str]):
  """`--config FILE[:ARG]` on `flag_values`, the config locked so that a wrong `--config.*` key
  is an error naming it. A config file inside a package (configs/ has __init__.py) is loaded
  with the package's parent on sys.path, so that it can import its siblings
  (`from configs import common`) from any working directory."""
  from ml_collections import config_flags
  for i, arg in enumerate(argv):
    path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path:
      package = os.path.dirname(os.path.abspath(path.split(":", 1)[0]))
      if os.path.exists(os.path.join(package, "__init__.py")):
        sys.path.insert(0, os.path.dirname(package))
  return config_flags.DEFINE_config_file("config", None, "training config file",
                                         lock_config=True, flag_values=flag_values)


def verbose_flag(flag_values) -> None:
  """-v / --verbose, the same on every absl command (the `gembed` parser's -v)."""
  from absl import flags
  flags.DEFINE_bool("verbose", False, "show everything: debug logging and the start-up lines of "
                    "TensorFlow, XLA and absl", short_name="v", flag_values=flag_values)


def parse(flag_values, argv: list[str]) -> bool:
  """Parses `argv`; False (with the message printed) on a bad flag or config key. `--help` /
  `-h` prints the flags and exits."""
  from absl import flags
  if any(a in ("--help", "-h") for a in argv[1:]):
    print(f"usage: {argv[0]} [flags]\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    flag_values(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # Unknown keys in --config.a.b=v name the key here (the config is locked).
    message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"{argv[0]}: config error: {message}", file=sys.stderr)
    return False
  return True


def parse_config(flag_values, argv: list[str], *required: str):
  """Parses `argv` (`parse`), checks that --config and the `required` flags are set, and
  configures the start-up output (-v); the config, or None with the message printed (the
  command then exits with status 2)."""
  if not parse(flag_values, argv):
    return None
  config = flag_values["config"].value
  if config is None or not all(flag_values[name].value for name in required):
    names = " and ".join(["--config", *(f"--{name}" for name in required)])
    print(f"{argv[0]}: {names} {'are' if required else 'is'} required", file=sys.stderr)
    return None
  startup.configure(flag_values.verbose)
  return config


def define_flags(argv: list[str] = ()):
  """The trainer's flags on a fresh FlagValues: --config FILE[:ARG] (+ --config.a.b=v),
  --workdir, -v."""
  from absl import flags

  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and the model",
                      flag_values=flag_values)
  verbose_flag(flag_values)
  config_flag(flag_values, argv)
  return flag_values


def run(argv: list[str]) -> int:
  flag_values = define_flags(argv)
  config = parse_config(flag_values, argv, "workdir")
  if config is None:
    return 2
  workdir = flag_values.workdir
  from gembed import train
  from gembed.textio import InputError
  try:
    result = train.train_and_evaluate(config, workdir)
  except (train.NonFiniteLossError, InputError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  if result.get("dev"):
    print(json.dumps({"dev_task_mean": result["dev"]["task_mean"], "best": result["best"]}))
  return 0
