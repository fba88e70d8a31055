"""The nightly compliance run: zone validation, erasure re-verification, deadlines, audit, retention,
re-identification risk, report."""
