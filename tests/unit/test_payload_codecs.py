"""Issue 8: one typed payload codec per outbox row kind (``adapter.store.payloads``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.hl7.order_payload import KIND_CANCEL, KIND_ORDER, OrderPayload
from adapter.store import payloads
from adapter.store.outbox import NewRow, Outbox
from tests.store_backend import StoreUnderTest

ORDER = {"placer_order_number": "P1", "control": "NW", "priority": "urgent"}


def test_an_order_payload_round_trips_through_json() -> None:
    on_ack = NewRow("fhir", "http://x", "study:1", "fhir-transaction", "T", {"a": 1})
    payload = OrderPayload("default-ris", ORDER, (on_ack,), {"subject": {}}, "P0").rendered(
        "RT0123", b"MSH|^~\\&|\r"
    )
    data = payload.to_json()
    assert data["message"] == "TVNIfF5+XCZ8DQ=="  # base64 of the rendered bytes
    assert payloads.decode(KIND_ORDER, data) == payload
    assert payload.placer == "P1" and payload.control == "NW"
    assert payload.unrendered().to_json().keys() == {
        "profile", "order", "on_ack", "fhir", "request_placer"
    }  # fmt: skip


def test_every_hl7_order_kind_has_the_codec_and_a_kind_has_one_codec() -> None:
    assert payloads.codec_for(KIND_ORDER) is OrderPayload
    assert payloads.codec_for(KIND_CANCEL) is OrderPayload
    with pytest.raises(ValueError, match="already has the codec"):
        payloads.register(dict, KIND_ORDER)  # type: ignore[arg-type]


@pytest.mark.store
def test_decoding_a_payload_that_does_not_fit_names_the_kind(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        good = OrderPayload("x", ORDER).to_json()
        row_id = outbox.enqueue(
            destination="hl7", target="x", key="k", kind=KIND_ORDER, label="l", payload=good
        )
        assert payloads.decode(KIND_ORDER, outbox.get(row_id).payload) == OrderPayload("x", ORDER)
    for bad in ({"profile": "x"}, {"order": {"control": "NW"}}):
        with pytest.raises(payloads.PayloadError, match="hl7-order payload"):
            payloads.decode(KIND_ORDER, bad)
    with pytest.raises(payloads.PayloadError, match="no payload codec for kind 'fhir-bundle'"):
        payloads.decode("fhir-bundle", {})
