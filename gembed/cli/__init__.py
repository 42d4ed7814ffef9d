"""The `gembed` command line (docs/cli.md): one parser (`gembed.cli.command`), one module per
command group. Only the entry points import it; this package's own file imports nothing, so a
command module importing a sibling (`from gembed.cli import startup`) closes no cycle.
"""
