"""One exception hierarchy for the adapter.

::

    AdapterError
    ├── ConfigError            bad settings file or environment override (names the key)
    │   └── MappingTableError  bad table under mappings/ (names the file and the row)
    ├── ParseError             input that cannot be read (names the file, field or segment)
    │   └── DicomReadError
    ├── MappingError           a summary that cannot be mapped
    │   └── UnmappedCode       a code a table has no row for, where the table says "error"
    └── TransportError         no answer obtained from a peer
        ├── NotSent            certainly not delivered: resending is safe
        └── NoAnswer           may have been delivered: the outcome is unknown

A peer's *rejection* is never an exception: it is a value returned by the transport.
Messages never carry patient data: they name files, keys, tables and rows.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Root of every error the adapter raises on purpose."""


class ConfigError(AdapterError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config {key}: {problem}")
        self.key = key
        self.problem = problem


class MappingTableError(ConfigError):
    def __init__(self, file: str, row: str, problem: str) -> None:
        AdapterError.__init__(self, f"{file}: {row}: {problem}")
        self.key = f"{file}:{row}"
        self.file = file
        self.row = row
        self.problem = problem


class ParseError(AdapterError):
    """Input that cannot be read."""


class DicomReadError(ParseError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class MappingError(AdapterError):
    """A summary that cannot be turned into FHIR."""


class UnmappedCode(MappingError):
    def __init__(self, table: str, code: str) -> None:
        super().__init__(f"table {table} has no row for code {code!r} and its policy is 'error'")
        self.table = table
        self.code = code


class TransportError(AdapterError):
    """No answer was obtained from a peer."""


class NotSent(TransportError):
    """The request or message certainly did not reach the peer (connect refused or timed out,
    TLS refused): resending is always safe. Shared by the FHIR and MLLP clients."""


class NoAnswer(TransportError):
    """It may have reached the peer, but no complete answer came back (timeout, dropped
    connection, overall deadline): the outcome is unknown; reconcile or resend the same."""
