"""FHIR delivery: the HTTP client, auth, transactions and patches.

It moves resources and reports outcomes; it knows nothing of DICOM or reviews.
"""
