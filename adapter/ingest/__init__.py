"""Read, decide, map: DICOM files to studies, planning decisions and transaction Bundles.

Synchronous and free of network I/O: the prior-imaging check is handed in by the caller
(``adapter.jobs.ingest``), so this package never talks to a FHIR server itself.
"""
