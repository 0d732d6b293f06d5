"""``rtplan serve``: the long-running process and what only it runs.

The MLLP listener and its inbound handler, the outbox worker, the escalation check, and the
faces it hosts (the C-STORE receiver, the HTTP API). The jobs it runs live in ``adapter.jobs``.
"""
