"""Shared test helpers: the fixture generators (plain scripts under fixtures/) as modules."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from adapter.jobs import payload_codecs  # noqa: F401  (every outbox kind's codec, as rtplan has)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def load_fixture_module(name: str) -> ModuleType:
    """Import ``fixtures/<name>.py`` once (registered in sys.modules so dataclasses resolve)."""
    key = f"rtplan_fixtures_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, FIXTURES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


synth = load_fixture_module("synth")
hostile = load_fixture_module("hostile")


def study_count(base: str, study_uid: str) -> int:
    params = {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}", "_summary": "count"}
    response = httpx.get(f"{base}/ImagingStudy", params=params, timeout=30)
    response.raise_for_status()
    return int(response.json()["total"])


def read_study(base: str, study_uid: str) -> dict[str, Any]:
    params = {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    bundle = httpx.get(f"{base}/ImagingStudy", params=params, timeout=30).json()
    return dict(bundle["entry"][0]["resource"])


def make_study(root: Path, **kwargs: Any) -> tuple[Path, str]:
    """A fresh planning study with unique UIDs and patient (tests share a server)."""
    seed = uuid.uuid4().hex
    folder = root / seed
    synth.planning_ct(
        folder,
        seed=seed,
        slices=kwargs.pop("slices", 4),
        patient_id=kwargs.pop("patient_id", f"P{seed[:8]}"),
        **kwargs,
    )
    study_uid = synth.uid_for(seed, "/study")
    return folder, study_uid


def enqueue_order(
    outbox: Any, *, target: str, key: str, label: str, payload: dict[str, Any]
) -> int:
    """Store an HL7 new-order row with its order record, as the review workflow does
    (``adapter.review.order_rows.enqueue_review``), for tests that build an order by hand."""
    from adapter.store.orders import QueuedOrder
    from adapter.store.outbox import NewRow

    order = payload["order"]
    placer = str(order["placer_order_number"])
    with outbox.batch() as batch:
        row_id = int(batch.enqueue(NewRow("hl7", target, key, "hl7-order", label, payload)))
        control_id = str(payload.get("control_id") or f"RTP{row_id:09d}")
        queued = QueuedOrder(
            placer, key.removeprefix("study:"), placer, target, "NW", control_id, order,
            payload.get("fhir"),
        )  # fmt: skip
        batch.record_order(row_id, queued)
    return row_id


def tx(**marks: Any) -> dict[str, Any]:
    """The smallest FHIR transaction Bundle (fits the ``fhir-transaction`` payload codec), with
    ``marks`` beside its fields to tell test rows apart; for tests of the outbox itself."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [], **marks}
