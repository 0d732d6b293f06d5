"""``python -m adapter.cli``."""

from adapter.cli.main import main

raise SystemExit(main())
