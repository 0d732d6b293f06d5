import adapter


def test_public_surface_is_pinned() -> None:
    assert sorted(adapter.__all__) == adapter.__all__
    for name in adapter.__all__:
        assert getattr(adapter, name) is not None
    assert set(adapter.__all__) == {
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
    }
