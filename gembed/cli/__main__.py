"""`python -m gembed.cli ...`: the same as the `gembed` command."""

import sys

from gembed.cli.command import main

sys.exit(main())
