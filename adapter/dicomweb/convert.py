"""DICOM JSON (PS3.18 F) to Part 10 header files, so the one ingest pipeline reads them.

Pixel Data and any other bulk data are left out (never downloaded); the files are written
Explicit VR Little Endian into a private folder that is deleted after the batch. The file
reader then applies its usual hostile-input checks to every instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

JSON = dict[str, Any]
_BULK_TAGS = {"7FE00010", "7FE00008", "7FE00009"}


def write_instances(items: list[JSON], folder: Path) -> list[Path]:
    """One ``.dcm`` per instance; an instance that cannot be converted is written as a
    placeholder the reader rejects (so it is reported, never dropped silently)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for number, item in enumerate(items, start=1):
        target = folder / f"{number:06d}.dcm"
        try:
            ds = Dataset.from_json(
                {k: v for k, v in item.items() if k not in _BULK_TAGS and not k.startswith("0002")},
                bulk_data_uri_handler=lambda tag, vr, uri: b"",
            )
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.save_as(target, enforce_file_format=True)
        except Exception:  # any malformed JSON instance becomes a rejection, reported
            target.write_bytes(b"DICOM JSON instance could not be converted\n")
        target.chmod(0o600)
        written.append(target)
    return written
