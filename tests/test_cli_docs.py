"""docs/cli.md names every command and flag that the parsers define: the `gembed` argparse
tree, and the absl flags of `python -m gembed.main` (= `gembed train`), `gembed aot` and
`gembed teacher-embed`, which answer --help and name their missing flags."""

import argparse
import os
import re

from gembed.cli import command as cli
from gembed.cli import aot, teacher_embed, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
SECTIONS = {part.splitlines()[0]: part for part in re.split(r"^## ", DOC, flags=re.M)[1:]}


def _commands(parser, path=()):
  """(command path, its option strings) for the parser and every subcommand below it."""
  yield path, [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        yield from _commands(sub, path + (name,))


def _section(marker: str) -> str:
  return "".join(text for heading, text in SECTIONS.items() if marker in heading)


def _missing(text: str, options) -> list[str]:
  return [o for o in options if not re.search(re.escape(o) + r"(?![\w-])", text)]


def test_every_gembed_command_and_flag_is_documented():
  missing = []
  for path, options in _commands(cli.build_parser()):
    command = " ".join(("gembed",) + path)
    text = _section(f"`gembed {path[0]}") if path else DOC
    if not text:
      missing.append(f"a section for `gembed {path[0]}`")
    elif command not in text:
      missing.append(command)
    missing += [f"{command} {o}" for o in _missing(text, options)]
  assert not missing, f"not in docs/cli.md: {missing}"


def test_every_absl_flag_of_the_trainer_and_the_aot_check_is_documented():
  missing = []
  for command, flag_values in (("python -m gembed.main", train.define_flags()),
                               ("gembed aot", aot.define_flags()),
                               ("gembed teacher-embed", teacher_embed.define_flags())):
    text = _section(command)
    options = {f"--{flag_values[name].name}" for name in flag_values}
    options |= {f"-{flag_values[name].short_name}" for name in flag_values
                if flag_values[name].short_name}
    missing += [f"{command} {o}" for o in _missing(text, sorted(options))] if text else [
        f"a section for {command}"]
  assert not missing, f"not in docs/cli.md: {missing}"


def test_absl_commands_answer_help(capsys):
  for command in ("train", "aot", "teacher-embed"):
    try:
      cli.main([command, "--help"])
    except SystemExit as e:
      assert e.code == 0, command
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gembed {command}") and "--config" in out, command


def test_absl_commands_name_their_missing_flags(capsys):
  # Each absl command refuses a missing --config (and its own required flag) by name, status 2.
  for args, message in ((["train"], "--config and --workdir are required"),
                        (["train", "--config", os.path.join(ROOT, "configs", "demo.py")],
                         "--config and --workdir are required"),
                        (["recipe", "--workdir", "w"], "--config and --workdir are required"),
                        (["aot"], "--config is required"),
                        (["teacher-embed", "--config", os.path.join(ROOT, "configs", "distill.py")],
                         "--config and --out are required")):
    assert cli.main(args) == 2, args
    assert f"gembed {args[0]}: {message}" in capsys.readouterr().err, args
