"""Data-subject rights: intake, request ledger, audit log, and processing."""
