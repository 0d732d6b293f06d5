"""Every outbox row kind's payload codec, loaded together (``adapter.store.payloads``).

A codec registers itself when its module is imported, beside its domain. A process that
builds a row has imported its codec already; one that reads rows it did not build (the
delivery worker, ``rtplan outbox replay``) imports this module, so that no kind it meets is
unknown. These modules are light (no hl7apy, pydicom or httpx): loading them costs little.
"""

from __future__ import annotations

from adapter.fhir import transaction_payload
from adapter.hl7 import document_payload, order_payload
from adapter.label import kos_payload
from adapter.review import note_job_payload

CODEC_MODULES = (
    transaction_payload,
    order_payload,
    document_payload,
    kos_payload,
    note_job_payload,
)
