"""The prior cross-sectional imaging check (it asks the FHIR server, through the client given).

The RCR says the oncologist's review matters most when the patient has had no recent
cross-sectional imaging of that part of the body. Before a planning study is mapped, this looks
for earlier CT/MR/PET ImagingStudy resources of the same patient within a window, leaving out
studies labelled as planning scans (our ``meta.tag``) and the study itself, and matching the
body site when the planning scan's is known. The answer is a :class:`PriorImaging` value that
the pure mapping turns into the review Task's priority and note.

Search strategy, portable across servers: ``Patient?identifier=sys|val`` to find the patient's
id(s) (chained ``subject:Patient.identifier`` is not supported everywhere), then
``ImagingStudy?subject=Patient/<id>&started=ge<date>``; modality, tag and body-site filters run
here, on the returned resources, because token searches on series elements differ by server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.dicom.models import StudySummary
from adapter.errors import AdapterError, MappingError
from adapter.mapping.identifiers import DICOM_UID_SYSTEM, token
from adapter.mapping.imaging_study import MappingOptions, patient_ref
from adapter.mapping.review_task import PriorCheck, PriorImaging
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)
JSON = dict[str, Any]
MAX_PAGES = 10


def planning_body_sites(study: StudySummary, tables: Tables) -> dict[str, str]:
    """SNOMED body-site code -> display for the study's series (from Body Part Examined)."""
    table = tables.conceptmap("body-site")
    sites: dict[str, str] = {}
    for series in study.series:
        part = series.body_part_examined.upper()
        coding = table.first(part) if part else None
        if coding is not None:
            sites[coding.code] = coding.display
    return sites


def _study_codes(resource: JSON) -> tuple[set[str], set[str]]:
    modalities = {str(c.get("code", "")).upper() for c in resource.get("modality", [])}
    sites = set()
    for series in resource.get("series", []):
        modality = series.get("modality") or {}
        if "code" in modality:
            modalities.add(str(modality["code"]).upper())
        site = series.get("bodySite") or {}
        if "code" in site:
            sites.add(str(site["code"]))
    return modalities, sites


def is_prior(
    resource: JSON,
    study: StudySummary,
    *,
    modalities: Sequence[str],
    planning_tag: tuple[str, str],
    body_sites: Mapping[str, str],
    match_body_site: bool,
    window_days: int,
) -> bool:
    """True when ``resource`` counts as prior cross-sectional imaging for ``study``."""
    own = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_instance_uid}"}
    if any(
        i.get("system") == own["system"] and i.get("value") == own["value"]
        for i in resource.get("identifier", [])
    ):
        return False
    tags = {(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag", [])}
    if planning_tag in tags:
        return False
    found_modalities, found_sites = _study_codes(resource)
    if not found_modalities & set(modalities):
        return False
    if match_body_site and body_sites and not found_sites & set(body_sites):
        return False
    started = resource.get("started")
    if study.started is None or not isinstance(started, str):
        return study.started is None  # nothing to compare with: any earlier study counts
    try:
        when = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=study.started.tzinfo)
    earliest = study.started - timedelta(days=window_days)
    return earliest <= when < study.started


async def _search_all(client: FhirClient, resource_type: str, params: dict[str, str]) -> list[JSON]:
    found: list[JSON] = []
    response = await client.request("GET", resource_type, params=params)
    for _ in range(MAX_PAGES):
        if not response.ok or response.body is None:
            raise AdapterError(f"{resource_type} search: HTTP {response.status}")
        found.extend(e["resource"] for e in response.body.get("entry", []) if "resource" in e)
        links = {link.get("relation"): link.get("url") for link in response.body.get("link", [])}
        next_url = links.get("next")
        if not next_url:
            break
        response = await client.request("GET", str(next_url))
    return found


async def check_prior_imaging(
    client: FhirClient, study: StudySummary, settings: Settings, tables: Tables
) -> PriorImaging:
    """Search the server for prior imaging of ``study``'s patient. Never raises for a peer's
    answer or no answer: that is recorded as a failed check on the Task."""
    review = settings.review
    sites = planning_body_sites(study, tables)
    base = PriorImaging(
        window_days=review.prior_imaging_days,
        modalities=review.modalities,
        body_sites=tuple(sites.values()) if review.match_body_site else (),
    )
    try:
        ref = patient_ref(study, tables, MappingOptions())
        identifier = ref.identifier
        patients = await _search_all(
            client,
            "Patient",
            {"identifier": token(identifier["system"], identifier["value"]), "_elements": "id"},
        )
        if not patients:
            return _replace(base, PriorCheck.NONE_FOUND, 0)
        params = {
            "subject": ",".join(f"Patient/{p['id']}" for p in patients),
            "_count": "100",
        }
        if study.started is not None:
            since = study.started - timedelta(days=review.prior_imaging_days)
            params["started"] = f"ge{since.date().isoformat()}"
        studies = await _search_all(client, "ImagingStudy", params)
    except (AdapterError, MappingError) as exc:
        log.warning("prior imaging check failed: %s", type(exc).__name__)
        problem = str(exc) if not isinstance(exc, MappingError) else "no patient identifier"
        return PriorImaging(
            PriorCheck.FAILED,
            window_days=base.window_days,
            modalities=base.modalities,
            problem=problem,
        )
    tag = tables.labels_table("planning-labels").coding("tag")
    count = sum(
        1
        for resource in studies
        if is_prior(
            resource,
            study,
            modalities=review.modalities,
            planning_tag=(tag.system, tag.code),
            body_sites=sites,
            match_body_site=review.match_body_site,
            window_days=review.prior_imaging_days,
        )
    )
    return _replace(base, PriorCheck.FOUND if count else PriorCheck.NONE_FOUND, count)


def _replace(base: PriorImaging, check: PriorCheck, found: int) -> PriorImaging:
    return PriorImaging(check, found, base.window_days, base.modalities, base.body_sites)


async def check_all(
    studies: Sequence[StudySummary], settings: Settings, tables: Tables, client: FhirClient
) -> dict[str, PriorImaging]:
    """Check every study (by Study Instance UID) against the server behind ``client``."""
    results: dict[str, PriorImaging] = {}
    for study in studies:
        results[study.study_instance_uid] = await check_prior_imaging(
            client, study, settings, tables
        )
    return results
