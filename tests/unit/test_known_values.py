"""The tenant's known values: how names fold and how a known phone's digit forms are read."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pseudozone import scrub
from pseudozone.validation.known import KnownValues, _phone_variants


def _found(known: KnownValues, texts: list[str]) -> list[bool]:
    return known.found_in(pa.array(texts)).to_pylist()


@pytest.mark.parametrize(("value", "text"), [
    ("Hauptstraße 5", "lives at HAUPTSTRASSE 5 now"),           # ß is ss
    ("Hauptstraße 5", "lives at Hauptstrasse 5 now"),
    ("José García", "ask jose garcia!"),                        # accents dropped
    ("Zoë Müller", "Zoe\u0308 Mu\u0308ller wrote"),             # decomposed accents
    ("ΟΔΟΣ ΕΡΜΟΥ", "στην Οδός Ερμού"),                          # Greek: tonos and final sigma
    ("김민수", "ask 김민수 now"),                                 # Hangul stays whole
    ("กิติชัย บุญบำรุง", "hi กิติชัย บุญบำรุง"),                      # Thai: NFKC changes 'ำ'
    ("กิติชัย บุญบำรุง", '{"n":"\\u0e01\\u0e34\\u0e15\\u0e34\\u0e0a\\u0e31\\u0e22 \\u0e1a\\u0e38\\u0e0d'
                        '\\u0e1a\\u0e33\\u0e23\\u0e38\\u0e07"}'),
    ("ﬁona Smith", "fiona smith"),                              # a ligature
    ("Erenalp Yılmaz Gül", "SERVER ERENALP YILMAZ GÜL"),        # Turkish dotless i
    ("İsmail Işık", "ismail ışık"),
    ("محمد العلي", "مُحَمَّد العلي"),                              # Arabic vowel marks
    ("שָׁלוֹם כהן", "שלום כהן"),                                   # Hebrew points
])
def test_given_a_name_written_otherwise_then_it_is_found_and_replaced(value: str, text: str) -> None:
    known = KnownValues([value])
    assert _found(known, [text]) == [True]
    assert "[pii]" in scrub.scrub(pa.array([text]), known=known).to_pylist()[0]


def test_indic_vowel_signs_are_no_accents() -> None:
    # मालिक and मलिक are different words: folding drops Latin, Greek and Cyrillic accents only
    known = KnownValues(["मालिक शर्मा"])
    assert _found(known, ["मालिक शर्मा जी", "मलिक शर्मा"]) == [True, False]


@pytest.mark.parametrize(("phone", "regions", "text"), [
    # a national number is read where it is valid, not only under the tenant's first region
    ("(030) 1234-5678", ("US", "DE"), "ruf +49 30 12345678 an"),
    ("(030) 1234-5678", ("US", "DE"), "ruf 030 12345678 an"),
    # a short fifth group after a dash is an extension
    ("+1-415-555-0132-12", ("US",), "call 415 555 0132"),
    ("+1 415-555-0132 x12", ("US",), "call (415) 555-0132"),
    # digits of other scripts, in the known value and in the text
    ("+٤٩ ٣٠ ١٢٣٤٥٦٧٨", ("DE",), "ruf 030 12345678"),
    ("+49 30 12345678", ("DE",), "ruf ٠٣٠ ١٢٣٤٥٦٧٨"),
    ("+44 (0)20 7946 0999", ("GB",), "ring +44 (0) 20 7946 0999"),
    ("8 (495) 123-45-67", ("RU",), "звоните +7 495 123-45-67"),
])
def test_given_a_known_phone_then_its_forms_are_found(phone: str, regions: tuple[str, ...],
                                                     text: str) -> None:
    known = KnownValues([], phones=[phone], regions=regions)
    assert _found(known, [text]) == [True]


def test_a_known_phone_gives_no_short_prefix_forms() -> None:
    # a 7-digit prefix of a phone would match order numbers: no form is shorter than the number
    for phone in ("+1 415-555-0132 x12", "+1-415-555-0132-12", "(030) 1234-5678", "8 (495) 123-45-67"):
        forms = _phone_variants(phone, ("US", "DE", "RU"))
        assert forms and min(len(f) for f in forms) >= 10, phone
    known = KnownValues([], phones=["+1 415-555-0132 x12"], regions=("US",))
    assert _found(known, ["order 1415555", "order 4155550", "ref 415555"]) == [False, False, False]
