"""Every receiver profile x (Latin-1, Japanese, UTF-8 patients) x (a text the charset can and
cannot carry), against the HAPI FHIR peer, the HAPI v2 validator and python-hl7.

Each submission either stores an order that HAPI v2 accepts (with our conformance profile)
and whose texts round-trip through python-hl7, or is refused (exit 2 from the CLI) with
nothing stored: no outbox row, no timer, and no DiagnosticReport at the FHIR peer.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from dataclasses import replace
from pathlib import Path

import hl7
import httpx
import pytest

from adapter.config import FhirSettings, Hl7Settings, Settings
from adapter.hl7.charset_fit import TRANSLITERATION_NOTE, transliterate
from adapter.hl7.deliverer import HL7
from adapter.hl7.escape import unescape
from adapter.hl7.messages import MessageBuildError
from adapter.ingest.pipeline import run_ingest
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.jobs.review import submit_review_async
from adapter.store.outbox import Outbox
from adapter.tables import load_tables
from tests.integration.test_closed_loop import review_for
from tests.peers.hl7v2_validator_fixture import Validate
from tests.store_backend import StoreUnderTest
from tests.support import ROOT, make_study

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

RECEIVERS = ROOT / "mappings" / "receivers"
PATIENTS = {
    "latin1": {"patient_name": "MÜLLER^JÜRGEN", "charset": "ISO_IR 100", "sex": "M"},
    "japanese": {
        "patient_name": "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "charset": "\\ISO 2022 IR 87",
        "sex": "M",
    },
    "utf8": {"patient_name": "Ğüneş^Ayşe", "charset": "ISO_IR 192", "sex": "F"},
}
TEXTS = {"latin1-text": "Läsion im Leberlappen, größer als 2 cm", "other-text": "肝臓に病変 Łódź"}
PROFILES = ["default-ris", "swfb-ris", "imaging-procedure-control", "swfb-ris-transliterate"]


def receivers(tmp: Path) -> Path:
    folder = tmp / "receivers"
    shutil.copytree(RECEIVERS, folder)
    text = (folder / "swfb-ris.yaml").read_text()
    text = text.replace("name: swfb-ris", "name: swfb-ris-transliterate")
    text = text.replace("unencodable: error", "unencodable: transliterate")
    (folder / "swfb-ris-transliterate.yaml").write_text(text)
    return folder


def latin1(text: str) -> bool:
    try:
        text.encode("iso-8859-1")
    except UnicodeEncodeError:
        return False
    return True


def expected_refusal(profile: str, patient: str, text: str) -> str | None:
    """The segment-field a refusal names, or None when the order must be built."""
    if profile != "swfb-ris":
        return None
    if patient == "utf8":
        return "PID-5"  # no name group of this patient fits in Latin-1
    return None if latin1(TEXTS[text]) else "NTE-3"


def count_reports(base: str, review_id: str) -> int:
    bundle = httpx.get(
        f"{base}/DiagnosticReport",
        params={"identifier": f"urn:rtplan:review|{review_id}", "_summary": "count"},
        timeout=30,
    ).json()
    return int(bundle.get("total", 0))


@pytest.mark.peer
def test_every_profile_patient_and_text(
    hapi: str, hl7v2_validate: Validate, tmp_path: Path, store: StoreUnderTest
) -> None:
    folder = receivers(tmp_path)
    db = tmp_path / "o.sqlite"
    base = Settings(
        fhir=FhirSettings(base_url=hapi, version="R4", create_patient=True, initial_wait=0.05),
        hl7=Hl7Settings(receivers_dir=str(folder)),
    )
    base = replace(base, outbox=replace(base.outbox, path=str(db)))
    tables = load_tables(base.mappings_dir)
    studies: dict[str, str] = {}
    for name, kwargs in PATIENTS.items():
        study, uid = make_study(tmp_path, requested_procedure_id=f"RP-{name}", **kwargs)
        result = run_ingest([study], base, tables)
        with Outbox(store.at(db)) as outbox:
            ids = enqueue(outbox, result, targets(base, None))
            assert asyncio.run(deliver(outbox, base, ids=ids)).delivered == 1
            record = outbox.study(uid)  # stored by ingest: the DICOM name, as read
            assert record is not None and record.patient_name == kwargs["patient_name"]
        studies[name] = uid

    built: list[tuple[str, bytes, str, str]] = []
    for profile in PROFILES:
        settings = replace(base, hl7=replace(base.hl7, receiver=profile))
        for patient, uid in studies.items():
            for text_name, text in TEXTS.items():
                review_id = f"REV-{profile}-{patient}-{text_name}-{uid[-6:]}"
                data = review_for(uid, review_id)
                data["findings"] = [{**data["findings"][0], "description": text}]
                data["notes"] = f"Compare with staging CT. {text}"
                with Outbox(store.at(db)) as outbox:
                    before = (outbox.counts(), len(outbox.timers().open()))
                refusal = expected_refusal(profile, patient, text_name)
                if refusal is not None:
                    with pytest.raises(MessageBuildError) as err:
                        asyncio.run(submit_review_async(data, settings))
                    assert err.value.location == refusal, (profile, patient, text_name)
                    assert "U+" in str(err.value)
                    with Outbox(store.at(db)) as outbox:
                        assert (outbox.counts(), len(outbox.timers().open())) == before
                    assert count_reports(hapi, review_id) == 0
                    continue
                result = asyncio.run(submit_review_async(data, settings))
                assert count_reports(hapi, review_id) == 1
                with Outbox(store.at(db)) as outbox:
                    (row_id,) = result.hl7_rows
                    row = outbox.get(row_id)
                    assert row.destination == HL7 and row.target == profile
                    built.append((profile, base64.b64decode(row.payload["message"]), patient, text))
    refused = [
        (p, n, t) for p in PROFILES for n in PATIENTS for t in TEXTS if expected_refusal(p, n, t)
    ]
    assert len(refused) == 4 and len(built) == len(PROFILES) * len(PATIENTS) * len(TEXTS) - 4

    results = hl7v2_validate([raw for _, raw, _, _ in built])
    failures = [(p, r.error) for (p, *_), r in zip(built, results, strict=True) if not r.ok]
    assert not failures
    for (profile, raw, patient, text), result in zip(built, results, strict=True):
        codec = "iso-8859-1" if profile.startswith("swfb") else "utf-8"
        msg = hl7.parse(raw.decode(codec))
        notes = [unescape(str(s(3))) for s in msg.segments("NTE")]
        names = [unescape(str(rep(1))) for rep in msg.segment("PID")(5)]
        pn_groups = PATIENTS[patient]["patient_name"].split("=")
        note = TRANSLITERATION_NOTE.format(charset="8859/1")
        translit = profile == "swfb-ris-transliterate"
        if translit and not latin1(text):
            assert text not in notes[0] and transliterate(text, codec) in notes[0]
        else:
            assert text in notes[0] and notes[1] == f"Compare with staging CT. {text}"
        assert (notes[-1] == note) == (translit and not (latin1(text) and patient != "utf8"))
        families = [g.split("^")[0] for g in pn_groups]
        if codec == "utf-8":
            assert names == families  # every name group, round-tripped
        else:
            assert names == [transliterate(families[0], codec) if translit else families[0]]
        assert str(msg.segment("PID")(7)) == "19580417"
        assert str(msg.segment("PID")(3)(1)(4)) == "HOSP-MRN"
        if profile == "imaging-procedure-control":
            assert str(msg.segment("IPC")(2)) == f"RP-{patient}"
        assert result.structure  # parsed by HAPI v2
