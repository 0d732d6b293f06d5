"""The application layer: jobs (ingest, review submission, delivery) as async functions.

Each job runs inside the caller's event loop and uses the FHIR client it is given, so one
process (a CLI command, ``rtplan serve``) has one event loop and one FHIR client.
"""
