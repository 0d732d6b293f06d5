"""Fill the records of a store written before they existed (issue 8): migration 5's last step.

Before issue 8 the workflow re-read its facts from the stored payloads. A store written then
has the payloads but not the records, so in the migration that adds the new columns and
tables (and only then) this module reads those payloads one last time:

- each study record without facts gets the patient identifier system, whether the adapter
  creates the Patient, the modality and the review Task from the study's ingest Bundle;
- each HL7 order row gets its order record and transmission (state from the row's result and
  any stored ORU^R01), so a result or ACK for an order sent before the upgrade still matches.

Nothing else reads stored payloads for facts; this is the migration that makes that true for
old stores. Plain SQL; the JSON is parsed in Python.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import unquote

from adapter.store import orders, studies
from adapter.store.db import Database

JSON = dict[str, Any]
REVIEW_TASK_SYSTEM = "urn:rtplan:review-task"  # = adapter.mapping.review_task
ORDER_KINDS = ("hl7-order", "hl7-change", "hl7-cancel")


def study_facts(db: Database) -> int:
    """Fill the facts of study records that have none from their ingest Bundles; return how
    many records were filled."""
    filled = 0
    uids = [str(r[0]) for r in db.execute("SELECT study_uid FROM studies WHERE patient_system=''")]
    for uid in uids:
        raws = db.execute(
            "SELECT id, payload FROM outbox WHERE key=? AND kind='fhir-transaction' ORDER BY id",
            (f"study:{uid}",),
        ).fetchall()
        facts: JSON = {}
        for row_id, text in raws:
            found = _ingest_facts(json.loads(text), uid)
            if found:
                facts.update(found)
                studies.link_row(db, int(row_id), uid)
        if not facts:
            continue
        task = facts.pop("review_task", None)
        db.execute(
            "UPDATE studies SET patient_system=?, patient_created=?, modality=?, "
            "review_task_key=?, review_task=?, review_due=? WHERE study_uid=?",
            (
                facts["patient_system"],
                1 if facts["patient_created"] else 0,
                facts["modality"],
                f"{REVIEW_TASK_SYSTEM}|review:{uid}" if task else "",
                json.dumps(task, ensure_ascii=False, sort_keys=True) if task else "",
                str(((task or {}).get("restriction") or {}).get("period", {}).get("end") or ""),
                uid,
            ),
        )
        filled += 1
    return filled


def _ingest_facts(bundle: JSON, uid: str) -> JSON:
    """What an ingest Bundle says (the reading the workflow did before issue 8), {} if the
    Bundle has no ImagingStudy of this study."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    by_url = {str(e.get("fullUrl")): e["resource"] for e in entries}
    study = next(
        (
            e["resource"]
            for e in entries
            if e["resource"].get("resourceType") == "ImagingStudy"
            and any(i.get("value") == f"urn:oid:{uid}" for i in e["resource"].get("identifier", []))
        ),
        None,
    )
    if study is None:
        return {}
    reference = str(study.get("subject", {}).get("reference", ""))
    system, created = "", False
    if reference in by_url:
        identifiers = by_url[reference].get("identifier", [])
        created = True
        system = str(identifiers[0].get("system", "")) if identifiers else ""
    elif reference.startswith("Patient?identifier="):
        system = unquote(reference.removeprefix("Patient?identifier=").partition("|")[0])
    codes = [str(m.get("code", "")) for m in study.get("modality", [])]
    task = next(
        (
            e["resource"]
            for e in entries
            if e["resource"].get("resourceType") == "Task"
            and any(
                i.get("system") == REVIEW_TASK_SYSTEM for i in e["resource"].get("identifier", [])
            )
        ),
        None,
    )
    return {
        "patient_system": system,
        "patient_created": created,
        "modality": next((c for c in codes if c in studies.IMAGE_MODALITIES), ""),
        "review_task": task,
    }


def order_records(db: Database) -> int:
    """An order record and transmission for each HL7 order row; return how many rows."""
    raws = db.execute(
        "SELECT id, key, kind, target, payload, state, result, created_at FROM outbox "
        f"WHERE destination='hl7' AND kind IN ({', '.join('?' * len(ORDER_KINDS))}) ORDER BY id",
        ORDER_KINDS,
    ).fetchall()
    for row_id, key, _kind, target, text, state, result, created in raws:
        payload = json.loads(text)
        order = payload.get("order") or {}
        placer = str(order.get("placer_order_number", ""))
        if not placer:
            continue
        queued = orders.QueuedOrder(
            placer=placer,
            study_uid=str(key).removeprefix("study:"),
            request_placer=str(payload.get("request_placer") or placer),
            receiver=str(target),
            control=str(order.get("control", "NW")),
            control_id=str(payload.get("control_id") or f"RTP{int(row_id):09d}"),
            order=order,
            fhir=payload.get("fhir"),
        )
        orders.record_queued(db, int(row_id), queued, float(created))
        if result:
            orders.record_result(db, int(row_id), str(state), json.loads(result), float(created))
    for (detail,) in db.execute(
        "SELECT detail FROM inbound WHERE kind LIKE 'ORU%' AND status='result'"
    ).fetchall():
        placer = str(detail).removeprefix("order ")
        orders.set_state(db, placer, "resulted", time.time())
    return len(raws)
