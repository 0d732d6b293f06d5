"""The store under the workflow: typed records and the outbox queue, in one database."""
