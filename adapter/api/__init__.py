"""The HTTP API of ``rtplan serve`` (issue 11): reviews in, state out, metrics."""
