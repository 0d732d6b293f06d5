"""rtplan: the radiotherapy planning-scan adapter.

The public surface is pinned by ``tests/unit/test_public_api.py``.
"""

from adapter.classify import Classification, Evidence, classify
from adapter.config import Settings, load_settings
from adapter.errors import (
    AdapterError,
    ConfigError,
    DicomReadError,
    MappingError,
    MappingTableError,
    ParseError,
    TransportError,
    UnmappedCode,
)
from adapter.mapping.tables import Tables, load_tables
from adapter.service.ingest import IngestResult, Status, StudyOutcome, run_ingest

__all__ = [
    "AdapterError",
    "Classification",
    "ConfigError",
    "DicomReadError",
    "Evidence",
    "IngestResult",
    "MappingError",
    "MappingTableError",
    "ParseError",
    "Settings",
    "Status",
    "StudyOutcome",
    "Tables",
    "TransportError",
    "UnmappedCode",
    "classify",
    "load_settings",
    "load_tables",
    "run_ingest",
]
