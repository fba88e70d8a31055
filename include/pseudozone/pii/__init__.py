"""PII detection: reader-like decoding, confirming detectors, and Arrow-level find and replace.

- ``normalize``: decode a text as a reader sees it (HTML, JSON escapes, percent-encoding, NFKC),
  keeping the map back to the original characters;
- ``detectors``: one confirming detector per PII form (email, phone, ip, card, iban);
- ``scan``: vectorized candidate pass over Arrow columns, then confirmation, then replacement;
- ``tenant``: a tenant's known subject values from the PII zone, for the keyed-hash search.
"""
