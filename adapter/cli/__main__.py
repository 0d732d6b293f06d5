"""``python -m adapter.cli``."""

from adapter.cli.main import run

raise SystemExit(run())
