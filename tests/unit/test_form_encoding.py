"""Form encoding outside a query string: a value form-encoded into JSON or free text.

``urllib.parse.quote_plus`` (and HTML forms) write a space as '+' and a real '+' as %2B;
a reader still reads '%2B45+89962930' as '+45 89962930'.
"""

from __future__ import annotations

import json
import urllib.parse

import pyarrow as pa
import pytest

from pseudozone.pii import scan
from pseudozone.pii.normalize import normalize

REGIONS = ("US", "GB", "DE", "FR", "DK", "NL", "CZ", "PL", "PT")

PHONES = ["+45 89 96 29 30", "+420 608 222 007", "+48 22 322 08 32", "+31(0)577 166246",
          "(351) 968 565 013", "0820 346352", "+61 495 279 709"]


@pytest.mark.parametrize("phone", PHONES)
@pytest.mark.parametrize("template", ['{{"contact": "{x}"}}', "new number {x} from now", "tel={x}"])
def test_given_a_form_encoded_phone_anywhere_then_it_is_found_and_replaced(template: str, phone: str) -> None:
    text = template.format(x=urllib.parse.quote_plus(phone))
    [out] = scan.scrub(pa.array([text]), regions=REGIONS).to_pylist()
    assert "[phone]" in out
    digits = "".join(c for c in phone if c.isdigit())
    assert digits[-6:] not in "".join(c for c in out if c.isdigit())
    if template.startswith("{"):
        json.loads(out)


@pytest.mark.parametrize("text", ["price 10+5 EUR", "C++ and 1+1=2", "score 3+4", "a+b", "v2+build7"])
def test_given_plus_between_small_numbers_then_nothing_is_found(text: str) -> None:
    assert scan.find(pa.array([text]), regions=REGIONS).spans == {}


def test_a_plus_addressed_email_in_a_percent_encoded_token_stays_whole() -> None:
    # encodeURIComponent writes '+' as %2B: a literal '+' before letters is the address's own
    for text in ("zelda%2Bshop%40example.org", "zelda+shop%40example.org"):
        found = scan.find(pa.array([f"mail {text}"]), regions=REGIONS).spans[0]
        assert found == [("email", 5, 5 + len(text))]


def test_the_map_points_at_the_original_characters() -> None:
    doc = normalize("x %2B45+89962930 y")
    assert doc.text == "x +45 89962930 y"
    start = doc.text.index("8")
    assert doc.source_span(start, start + 8) == (8, 16)
