"""``python -m adapter.cli``."""

from adapter.cli.main import run

# Guarded: a child process started with ``spawn`` (the note process, adapter.jobs.note_process)
# imports this module again as ``__mp_main__``, and must not run a second command.
if __name__ == "__main__":
    raise SystemExit(run())
