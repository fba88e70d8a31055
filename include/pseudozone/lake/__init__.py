"""The lake layer: where data lives and which subjects may appear where.

- ``layout``: the one place that builds and parses zone paths (event, restricted and
  PII zones, subject index, quarantine, exports);
- ``index``: the subject index (which files hold which subject);
- ``subjects``: the subject sets (erased, held, restricted, forbidden) under one rule.

Ingest, rights processing, export, retention, k-anonymity and the nightly checks call
these; none of them builds or parses a zone path or reads the index itself
(``docs/adr/0007-lake-layer.md``).
"""
