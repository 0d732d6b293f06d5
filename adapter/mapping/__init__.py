"""Pure mapping from typed summaries and tables to FHIR resources: no I/O, no clock."""
