"""Service-mode sources: the DICOM C-STORE receiver (issue 11)."""
