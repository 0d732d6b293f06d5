"""What an HL7 v2 order for radiologist review needs, independent of message type and version.

The review workflow fills an :class:`OrderRequest` from the review, the ServiceRequest and the
ImagingStudy, and stores it (``to_json``) as the payload of an outbox row of kind
``hl7-order`` or ``hl7-cancel`` (destination ``hl7``). The HL7 deliverer rebuilds it
(``from_json``) and renders it for the receiver's profile. Keeping this a plain value means
the order can be previewed, stored and resent without any FHIR or DICOM in sight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: NW new order, CA cancel, XO change (an amendment of urgency or text; table 0119).
OrderControl = Literal["NW", "CA", "XO"]
Priority = Literal["routine", "urgent", "asap", "stat"]


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    value: str
    assigning_authority: str  # e.g. the issuer namespace (HOSP-MRN)
    type_code: str = "MR"


@dataclass(frozen=True, slots=True)
class PersonNameGroup:
    """One group of a DICOM PN (alphabetic, ideographic or phonetic) as an HL7 XPN."""

    family: str = ""
    given: str = ""
    middle: str = ""
    prefix: str = ""
    suffix: str = ""
    representation: str = "A"  # HL7 table 4000: A alphabetic, I ideographic, P phonetic


@dataclass(frozen=True, slots=True)
class OrderPatient:
    identifiers: tuple[PatientIdentifier, ...]
    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYY-MM-DD or empty
    sex: str = ""  # HL7 table 0001: M, F, O, U
    # Every name group the DICOM header held; when empty, family/given are the one name.
    names: tuple[PersonNameGroup, ...] = ()

    def name_groups(self) -> tuple[PersonNameGroup, ...]:
        if self.names:
            return self.names
        if self.family or self.given:
            return (PersonNameGroup(self.family, self.given),)
        return ()


@dataclass(frozen=True, slots=True)
class Provider:
    identifier: str
    family: str = ""
    given: str = ""
    prefix: str = ""  # XCN-6, e.g. "Dr"
    assigning_authority: str = ""  # XCN-9, from the identifier system (mappings table)


@dataclass(frozen=True, slots=True)
class OrderRequest:
    control: OrderControl
    placer_order_number: str  # ORC-2 / OBR-2; the ServiceRequest's identifier value
    placer_namespace: str  # EI namespace for the placer number (the adapter's application)
    patient: OrderPatient
    study_instance_uid: str
    accession_number: str = ""
    requested_procedure_id: str = ""
    modality: str = ""  # DICOM modality of the planning images (CT, MR, PT)
    priority: Priority = "routine"
    service_code: str = "RTPLANREVIEW"  # OBR-4 universal service id (from mappings)
    service_text: str = "Radiologist review of radiotherapy planning scan"
    service_system: str = "L"  # HL7 coding system (L = local)
    reason_code: str = ""  # OBR-31 reason for study
    reason_text: str = ""
    reason_system: str = ""
    concern_text: str = ""  # free text for NTE; escaped on output
    ordering_provider: Provider | None = None
    requested_at: str = ""  # ISO 8601 with offset: ORC-9 / OBR-6
    review_id: str = ""
    extra_notes: tuple[str, ...] = field(default_factory=tuple)
    # IPC-4 for OMI^O23, OBR-20 (DICOM Scheduled Procedure Step ID).
    scheduled_procedure_step_id: str = ""
    filler_order_number: str = ""  # ORC-3 of a cancel/update, when the RIS told us its number
    control_reason: str = ""  # ORC-16 text of a cancel or change

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderRequest:
        patient = data["patient"]
        provider = data.get("ordering_provider")
        return cls(
            **{
                **data,
                "patient": OrderPatient(
                    **{
                        **patient,
                        "identifiers": tuple(
                            PatientIdentifier(**i) for i in patient.get("identifiers", ())
                        ),
                        "names": tuple(PersonNameGroup(**n) for n in patient.get("names", ())),
                    }
                ),
                "ordering_provider": Provider(**provider) if provider else None,
                "extra_notes": tuple(data.get("extra_notes", ())),
            }
        )
