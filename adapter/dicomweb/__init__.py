"""DICOMweb source for back-loading an archive: QIDO-RS to find studies, WADO-RS metadata
(DICOM JSON, no pixel data) to read them (issue 11)."""
