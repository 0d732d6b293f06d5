"""DICOM input: the only sub-package that touches pydicom datasets."""
