"""Entry point of the ahead-of-time check: `python -m gembed.aot --config FILE [--topology T]`
(gembed.cli.aot; the library is gembed.tools.aot)."""

import sys

from gembed.cli import aot

if __name__ == "__main__":
  sys.exit(aot.run(sys.argv))
