"""The tenant's known values: how names fold and how a known phone's digit forms are read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pseudozone import scrub
from pseudozone.validation.known import KnownValues, _phone_variants, _split_spaced_digits


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


@pytest.mark.parametrize(("value", "found", "not_found"), [
    # a one-word value keeps its accents: Vietnamese 'đang' ("currently") is no surname 'Đặng'
    ("Đặng", ["ông Đặng đến", "ÔNG ĐẶNG ĐẾN", "ông đặng"], ["anh ấy đang ăn", "dang", "Đang"]),
    ("Schön", ["Frau Schön kam", "FRAU SCHÖN", "schön."], ["ich bin schon da", "Schon gut"]),
    ("Schon", ["Herr Schon"], ["wie schön"]),
    ("Zoë", ["hi zoë!", "ZOË"], ["zoe", "Zoé"]),
    # case-folding stays: 'ß' is 'ss', a final 'ς' is 'σ', Turkish 'ı' is 'i'
    ("Weiß", ["herr WEISS", "weiss"], ["weis"]),
    ("Νίκος", ["ο ΝΊΚΟΣ ήρθε", "νίκοσ"], ["ο νικος"]),
    ("Işık", ["IŞIK", "ışık"], ["isik", "ısık"]),         # no cedilla: another word
    # Arabic vowel marks and Hebrew points are left out in ordinary writing: no accents
    ("محمد", ["مُحَمَّد", "قال محمد"], ["محمود"]),
    ("שָׁלוֹם", ["שלום", "שָׁלוֹם"], ["שולם"]),
])
def test_a_one_word_value_matches_with_its_accents(value: str, found: list[str],
                                                   not_found: list[str]) -> None:
    known = KnownValues([value])
    assert _found(known, found) == [True] * len(found)
    assert _found(known, not_found) == [False] * len(not_found)
    assert scrub.scrub(pa.array(not_found), known=known).to_pylist() == not_found
    assert all("[pii]" in t for t in scrub.scrub(pa.array(found), known=known).to_pylist())


def test_a_name_of_several_words_still_folds_accents() -> None:
    known = KnownValues(["Đặng Văn Synthan", "Jürgen Schön"])
    # 'Đ' is a letter of its own (no D with an accent): 'dang' is another word
    assert _found(known, ["đang van synthan", "ĐANG VĂN SYNTHAN", "jurgen schon", "juergen schon",
                          "dang van synthan"]) == [True, True, True, False, False]
    assert _found(known, ["anh ấy đang ăn", "schon", "Jürgen"]) == [False, False, False]


AGREE_VALUES = ["Đặng", "Schön", "Zoë", "Weiß", "Νίκος", "Işık", "İpek", "José García", "Đặng Văn Synthan",
                "ﬁona", "Hauptstraße 5", "Ольга", "Ёлкина Анна", "محمد", "שָׁלוֹם"]
AGREE_TEXTS = ["anh ấy đang ăn", "ông Đặng đến", "ich bin schon da", "Frau Schön", "Frau Scho\u0308n",
               "zoe", "ZOË", "Zoe\u0308", "WEISS", "weis", "ΝΊΚΟΣ", "νικος", "IŞIK", "isik", "İPEK", "ipek",
               "IPEK", "jose garcia", "JOSÉ GARCÍA", "dang van synthan", "fiona", "ﬁona", "hauptstrasse 5",
               "ольга", "олга", "елкина анна", "ЁЛКИНА АННА", "مُحَمَّد", "محمد", "שלום", "שָׁלוֹם",
               "%C5%A0chon Sch%C3%B6n", "Sch&ouml;n", "Sch\\u00f6n", "\\u0110\\u1eb7ng"]


def test_the_python_span_finder_and_the_arrow_search_agree() -> None:
    from pseudozone.pii.normalize import normalize

    known = KnownValues(AGREE_VALUES)
    arrow = _found(known, AGREE_TEXTS)
    python = [bool(known.spans(normalize(t).text)) for t in AGREE_TEXTS]
    assert arrow == python
    # and the scrubber (which finds spans in Python) replaces what the gate's search flags
    scrubbed = scrub.scrub(pa.array(AGREE_TEXTS), known=known).to_pylist()
    assert [s != t for s, t in zip(scrubbed, AGREE_TEXTS, strict=True)] == arrow


@pytest.mark.parametrize(("phone", "text"), [
    # '00' before the calling code, also around a trunk 0 in parentheses
    ("+36 1 234 5678", "hívjon: 0036 1 234 5678"),
    ("+36 1 234 5678", "hívjon: (0036) 1 234 5678"),
    ("+7 912 345-67-89", "звоните 007 912 345-67-89"),
    ("+44 20 7946 0999", "ring 0044 (0)20 7946 0999"),
    # the calling code in parentheses
    ("+36 1 234 5678", "hívjon (+36) 1 234 5678"),
    ("+49 30 1234567", "ruf (+49) 30 1234567 an"),
    ("+49 30 1234567", "ruf (+49)(0)30 1234567 an"),
    ("(+36) 1 234 5678", "hívjon 06 1 234 5678"),
    ("(+49) 30 1234567", "ruf 030 1234567 an"),
    # national trunk prefixes other than '0', from libphonenumber's metadata
    ("+36 1 234 5678", "hívjon 06 1 234 5678"),        # Hungary: 06
    ("+36 1 234 5678", "hívjon 06-1-234-5678"),
    ("+7 912 345-67-89", "звоните 8 912 345-67-89"),   # Russia: 8
    ("+7 912 345-67-89", "звоните 8 (912) 345-67-89"),
    ("+370 612 34567", "skambinkite 8 612 34567"),     # Lithuania: 8 (and 0)
    ("+370 612 34567", "skambinkite 0 612 34567"),
    ("+375 29 123-45-67", "звоните 8 029 123-45-67"),  # Belarus: 8, 80
    ("+375 29 123-45-67", "звоните 8 (029) 123-45-67"),
])
@pytest.mark.parametrize("regions", [("US",), ("US", "DE", "RU", "HU", "LT", "BY")])
def test_given_a_known_international_phone_then_its_other_forms_are_found(phone: str, text: str,
                                                                        regions: tuple[str, ...]) -> None:
    # the forms come from the number's own calling code, whatever the tenant's regions
    known = KnownValues([], phones=[phone], regions=regions)
    assert _found(known, [text]) == [True]
    assert known.spans(text), text
    assert "[" in scrub.scrub(pa.array([text]), regions=regions, known=known).to_pylist()[0]


@pytest.mark.parametrize(("phone", "regions", "text"), [
    # a national form with a trunk prefix of a region that applies
    ("06 1 234 5678", ("HU",), "hívjon +36 1 234 5678"),
    ("06 1 234 5678", ("US", "HU"), "hívjon 0036 1 234 5678"),
    ("8 029 123-45-67", ("BY",), "call +375 29 123 45 67"),
    ("8 612 34567", ("LT",), "call +370 612 34567"),
    ("8 912 345-67-89", ("RU",), "call 007 912 345 67 89"),
])
def test_given_a_known_national_phone_then_its_international_forms_are_found(
        phone: str, regions: tuple[str, ...], text: str) -> None:
    known = KnownValues([], phones=[phone], regions=regions)
    assert _found(known, [text]) == [True]


@pytest.mark.parametrize(("phone", "regions", "shortest"), [
    ("+36 1 234 5678", ("US",), 8),              # the national significant number, 8 digits
    ("06 1 234 5678", ("HU", "FR"), 8),
    ("+7 912 345-67-89", ("RU", "BY"), 10),
    ("8 029 123-45-67", ("BY", "RU"), 9),
    ("+375 80 1123 4567", ("BY",), 10),          # an '80' inside the number is not taken off
    ("+7 812 123-45-67", ("RU",), 10),           # nor an '8'
    ("0612345678", ("FR", "HU", "RU"), 8),       # read as Hungarian: 06 and 1234 5678
])
def test_trunk_prefixes_give_no_form_shorter_than_the_number(phone: str, regions: tuple[str, ...],
                                                             shortest: int) -> None:
    forms = _phone_variants(phone, regions)
    assert min(len(f) for f in forms) == shortest


@pytest.mark.parametrize("next_byte", [b"\xe4", b"\xc3", b"x"])
def test_digit_runs_ending_in_a_space_split_whatever_byte_follows_them_in_memory(next_byte: bytes) -> None:
    # pyarrow 26's utf8_split_whitespace read one byte past a value ending in a space: when that
    # byte started a UTF-8 character, '220481 ' came out as a 7-digit run and the search failed
    spaced = b" 93691 4 220481 "
    data = pa.py_buffer(spaced + next_byte * 8).slice(0, len(spaced))
    offsets = pa.py_buffer(np.array([0, len(spaced)], np.int32).tobytes())
    values = pa.StringArray.from_buffers(1, offsets, data)
    assert [w for w in _split_spaced_digits(values).to_pylist()[0] if w] == ["93691", "4", "220481"]
