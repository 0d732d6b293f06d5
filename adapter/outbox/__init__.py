"""The durable outbox and its delivery worker: every outbound effect passes through here."""
