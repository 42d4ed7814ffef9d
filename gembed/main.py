"""Training entry point (flax-examples convention): flags only, then `train.train_and_evaluate`.

    python -m gembed.main --config configs/demo.py --workdir /tmp/gembed-demo \
        [--config.train.steps=200 ...]
"""

from __future__ import annotations

import json
import logging
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and the model")
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                          lock_config=True)


def run(argv: list[str]) -> int:
  try:
    FLAGS(argv)
    config = _CONFIG.value
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # Unknown keys in --config.a.b=v name the key here (the config is locked).
    message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"{argv[0]}: config error: {message}", file=sys.stderr)
    return 2
  if config is None or not _WORKDIR.value:
    print(f"{argv[0]}: --config and --workdir are required", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax", "tensorboardX"):  # Orbax's per-save chatter, backend probing
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from gembed import train
  from gembed.textio import InputError
  try:
    result = train.train_and_evaluate(config, _WORKDIR.value)
  except (train.NonFiniteLossError, InputError) as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    return 1
  if result.get("dev"):
    print(json.dumps({"dev_task_mean": result["dev"]["task_mean"], "best": result["best"]}))
  return 0


def main() -> None:
  sys.exit(run(sys.argv))


if __name__ == "__main__":
  main()
