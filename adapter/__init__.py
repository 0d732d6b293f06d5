"""rtplan: the radiotherapy planning-scan adapter.

The public surface is pinned by ``tests/unit/test_public_api.py``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from adapter.ingest.pipeline import IngestResult, Status, StudyOutcome, run_ingest
    from adapter.tables import Tables, load_tables

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

# Where each public name lives. Loaded on first use (PEP 562), so that ``import adapter.cli``
# (every ``rtplan`` command) does not pay for the ingest stack unless the command needs it.
_HOME = {
    "Classification": "adapter.classify",
    "Evidence": "adapter.classify",
    "classify": "adapter.classify",
    "Settings": "adapter.config",
    "load_settings": "adapter.config",
    "AdapterError": "adapter.errors",
    "ConfigError": "adapter.errors",
    "DicomReadError": "adapter.errors",
    "MappingError": "adapter.errors",
    "MappingTableError": "adapter.errors",
    "ParseError": "adapter.errors",
    "TransportError": "adapter.errors",
    "UnmappedCode": "adapter.errors",
    "Tables": "adapter.tables",
    "load_tables": "adapter.tables",
    "IngestResult": "adapter.ingest.pipeline",
    "Status": "adapter.ingest.pipeline",
    "StudyOutcome": "adapter.ingest.pipeline",
    "run_ingest": "adapter.ingest.pipeline",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'adapter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
