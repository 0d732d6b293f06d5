"""The review workflow: versions, the study's context, orders, the note, radiology results.

A workflow feature: it uses the mapping, the store, and the FHIR and HL7 deliverers' types,
and is driven by the application jobs. Where things live::

    adapter.mapping.review_input   ReviewInput, parse_review, ReviewError (the validated input)
    adapter.review.service         preview_review, preview_orders, SubmitResult, store_version
    adapter.jobs.review            submit_review, submit_review_async (the submission job)
"""
