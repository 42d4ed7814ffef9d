"""`gembed teacher-embed`: a distillation config's teacher embeds its training texts once
(gembed.tools.teacher_embed); train with `--config.distill.teacher_embeddings=DIR`.

    gembed teacher-embed --config configs/distill.py --out runs/teacher-embeddings [--config.a.b=v ...]
"""

from __future__ import annotations

import json
import sys

from gembed.cli import train


def add_parsers(sub) -> None:
  sub.add_parser("teacher-embed", help="precompute distillation targets: gembed teacher-embed "
                 "--config configs/distill.py --out DIR [--batch_size 128] [--config.a.b=v ...] [-v]")


def define_flags(argv: list[str] = ()):
  """--config (+ --config.a.b=v), --out, --batch_size, -v."""
  from absl import flags

  flag_values = flags.FlagValues()
  train.config_flag(flag_values, argv)
  flags.DEFINE_string("out", None, "directory of the teacher embeddings", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 128, "texts per teacher forward pass", flag_values=flag_values)
  train.verbose_flag(flag_values)
  return flag_values


def run(argv: list[str]) -> int:
  flag_values = define_flags(argv)
  config = train.parse_config(flag_values, argv, "out")
  if config is None:
    return 2
  out = flag_values.out
  from gembed.textio import InputError
  from gembed.tools.teacher_embed import teacher_embed
  try:
    manifest = teacher_embed(config, out, flag_values.batch_size, progress=True)
  except (InputError, FileNotFoundError, ValueError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(manifest))
  return 0
