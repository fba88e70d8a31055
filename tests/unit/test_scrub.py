from __future__ import annotations

import pyarrow as pa
import pytest

from pseudozone import scrub
from pseudozone.validation.known import KnownValues

PII_TEXTS = {
    "email": ("mail me: Jane.Doe+news@Example.COM ok", "[email]"),
    "email_non_ascii": ("jürgen.müller@beispiel.de", "[email]"),
    "email_url_encoded": ("https://x.io/c?email=jane.doe%40example.com&ref=abc", "[email]"),
    "phone_uk": ("call +44 20 7946 0958 now", "[phone]"),
    "phone_us_parens": ("us (555) 123-4567", "[phone]"),
    "phone_us_dots": ("555.123.4567", "[phone]"),
    "phone_de_national": ("de 030-12345678", "[phone]"),
    "phone_fr_grouped": ("fr 06 12 34 56 78", "[phone]"),
    "phone_00_prefix": ("tel 0049 170 1234567", "[phone]"),
    "phone_url_plus": ("phone=%2B4915112345678", "[phone]"),
    "phone_url_space": ("phone=00%2081%203-2121-495", "[phone]"),
    "phone_bare_digits": ("callback 491511234567", "[phone]"),
    # 13 digits after a phone word: a country code and a mobile number (a bare 13-digit card
    # needs a card word)
    "long_digit_run_after_phone_word": ("callback 4915112345678", "[phone]"),
    "maestro_12_after_card_word": ("card no. 501893073061", "[card]"),
    "card_spaced": ("card 4111 1111 1111 1111", "[card]"),
    "card_dashed": ("card 4111-1111-1111-1111", "[card]"),
    "card_plain": ("card 4539148803436467", "[card]"),
    "iban_spaced": ("iban DE89 3704 0044 0532 0130 00", "[iban]"),
    "iban_plain": ("iban GB82WEST12345698765432", "[iban]"),
    "ipv4": ("ip 203.0.113.45 x", "[ip]"),
    "ipv6_compressed": ("v6 2001:db8:85a3::8a2e:370:7334 y", "[ip]"),
    "ipv6_full": ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "[ip]"),
}

CLEAN_TEXTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36",
    '{"plan": "pro", "seats": 12, "ts": "2026-11-01T10:00:00Z"}',
    "/api/v1/items/12345?page=2",
    "ordered 3 items for 49.99",
    "2026-11-01 total 0 items",
]


@pytest.mark.parametrize("case", sorted(PII_TEXTS))
def test_given_pii_in_free_text_then_it_is_replaced_by_its_token(case: str) -> None:
    text, token = PII_TEXTS[case]
    out = scrub.scrub(pa.array([text])).to_pylist()[0]
    assert token in out
    assert sum(scrub.find(pa.array([out])).values()) == 0


@pytest.mark.parametrize("text", CLEAN_TEXTS)
def test_given_text_without_pii_then_it_is_unchanged(text: str) -> None:
    assert scrub.scrub(pa.array([text])).to_pylist() == [text]


def test_nulls_and_empty_input_survive() -> None:
    assert scrub.scrub(pa.array([None, "x", None], pa.string())).to_pylist() == [None, "x", None]
    assert scrub.scrub(pa.array([], pa.string())).to_pylist() == []


def test_dictionary_path_and_plain_path_agree() -> None:
    texts = [t for t, _ in PII_TEXTS.values()] + CLEAN_TEXTS
    repeated = pa.array(texts * 50)            # low cardinality: scrubbed per distinct value
    unique = pa.array([f"{t} #{i}" for i, t in enumerate(texts * 50)])  # high cardinality
    low = scrub.scrub(repeated).to_pylist()
    high = scrub.scrub(unique).to_pylist()
    assert [h.rsplit(" #", 1)[0] for h in high] == low


def test_chunked_input_is_accepted() -> None:
    chunked = pa.chunked_array([["a@b.example.com"], ["fine"]])
    assert scrub.scrub(chunked).to_pylist() == ["[email]", "fine"]


def test_given_known_values_then_they_are_replaced_in_any_row_and_case() -> None:
    # a bare national number no detector would call a phone is still the known subject's
    known = KnownValues(["Zoë Ørsted", "ab"], phones=["+44 20 7946 0999"], regions=("GB",))
    texts = ['{"signature": "Regards, ZOË Ørsted"}', None, "nothing here", "ring 2079460999 soon",
             "Zoë alone", "about"]
    assert scrub.scrub(pa.array(texts), known=known).to_pylist() == [
        '{"signature": "Regards, [pii]"}', None, "nothing here", "ring [pii] soon", "Zoë alone", "about"]
