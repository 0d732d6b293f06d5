"""Every ``rtplan`` command: parse, call one job, print."""

from adapter.cli.main import main

__all__ = ["main"]
