"""`gembed cache`: a training config's tasks through all their preprocessors once, into
data.cache_dir (gembed.tools.cache, an Apache Beam pipeline); train from it with
`--config.data.use_cached=True`.

    gembed cache --config configs/prefinetune.py --config.data.cache_dir=DIR \
        [--runner DataflowRunner --beam_options '--project=P ...'] [--config.a.b=v ...]
"""

from __future__ import annotations

import json
import sys

from gembed.cli import train


def add_parsers(sub) -> None:
  sub.add_parser("cache", help="pre-tokenise a config's tasks (SeqIO cache, Apache Beam): gembed "
                 "cache --config CONFIG --config.data.cache_dir=DIR [--runner R] "
                 "[--beam_options '...'] [--config.a.b=v ...] [-v]")


def define_flags(argv: list[str] = ()):
  """--config (+ --config.a.b=v), --runner, --beam_options, -v."""
  from absl import flags

  flag_values = flags.FlagValues()
  train.config_flag(flag_values, argv)
  flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner (this machine), "
                      "DataflowRunner, FlinkRunner, SparkRunner, ...", flag_values=flag_values)
  flags.DEFINE_string("beam_options", "", "more pipeline options, e.g. '--project=P --region=R "
                      "--temp_location=gs://B/tmp' for Dataflow", flag_values=flag_values)
  train.verbose_flag(flag_values)
  return flag_values


def run(argv: list[str]) -> int:
  flag_values = define_flags(argv)
  config = train.parse_config(flag_values, argv)
  if config is None:
    return 2
  from gembed.textio import InputError
  try:
    from gembed.tools.cache import write_cache
  except ImportError as e:
    print(f"{argv[0]}: needs Apache Beam: pip install -e '.[beam]' ({e})", file=sys.stderr)
    return 1
  try:
    summary = write_cache(config, flag_values.runner, flag_values.beam_options)
  except (InputError, FileNotFoundError, ValueError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary))
  return 0
