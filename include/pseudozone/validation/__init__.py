"""Privacy validation of the zones with Great Expectations (issue 4, first part).

``detect`` finds PII forms with Arrow (the scrubber's patterns, plus a Luhn check for
cards); ``expectations`` wraps them as Great Expectations expectations; ``event_zone``
builds a suite from a dataset contract and validates one event-zone table, returning a
report that names columns, forms, counts and row positions, never a value.
"""
