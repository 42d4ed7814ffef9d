"""Training entry point (flax-examples convention): flags only, then the trainer.

    python -m gembed.main --config configs/demo.py --workdir /tmp/gembed-demo \
        [--config.train.steps=200 ...] [-v]
"""

import sys

from gembed.cli import startup, train


def main() -> None:
  startup.preload_tcmalloc()
  sys.exit(train.run(sys.argv))


if __name__ == "__main__":
  main()
