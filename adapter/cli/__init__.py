"""Every ``rtplan`` command: parse, call one job, print."""

from adapter.cli.main import main, run

__all__ = ["main", "run"]
