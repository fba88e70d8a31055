"""A lone UTF-16 surrogate, escaped or decoded, never breaks detection (synthetic values only).

JSON allows ``\\ud83d`` on its own; Python decodes it to a lone surrogate, which no UTF-8
encoder accepts (Arrow, hashing).  A reader sees U+FFFD there: detection reads it so, and
the stored value stays itself.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pseudozone import scrub
from pseudozone.pii import scan
from pseudozone.pii.normalize import normalize
from pseudozone.validation import detect
from pseudozone.validation.known import AnyKnown, KnownValues

NAME = "Zelda Plantedpii"
PHONE = "+49 30 1234567"

# texts that hold a lone surrogate once decoded the old way, and nothing known
LONE = [
    '{"note":"\\ud83d"}',              # a lone high surrogate escape
    '{"note":"\\ude00 ok"}',           # a lone low surrogate escape
    '{"note":"\\ude00\\ud83d"}',       # a pair in the wrong order
    '{"note":"\\ud83d\\u0041"}',       # a high surrogate before no low one
    "x &#xD83D; y",                    # HTML reads it as U+FFFD
    "x &#55357 y",
    "a %ED%A0%BD b",                   # not UTF-8: left as it is
    "a %5Cud83d b",                    # a chain: percent, then JSON
    "a &#x5c;ud83d b",                 # a chain: HTML, then JSON
    "a \\u005cud83d b",                # a chain: JSON twice
]


def _known() -> KnownValues:
    return KnownValues([NAME], phones=[PHONE], regions=("DE",))


@pytest.mark.parametrize("text", LONE)
def test_a_lone_surrogate_breaks_no_check_and_the_value_stays_itself(text: str) -> None:
    known = _known()
    arr = pa.array([text, f"{text} {NAME}"], pa.string())
    assert scan.find(arr, known=known).known is not None
    assert known.found_in(arr).to_pylist() == [False, True]
    assert AnyKnown(known, KnownValues(["Other Synthname"])).found_in(arr).to_pylist() == [False, True]
    out, evidence = scan.scrub_with_evidence(arr, known=known)
    assert out.to_pylist()[0] == text
    assert "[pii]" in out.to_pylist()[1] and NAME not in out.to_pylist()[1]
    assert evidence.known_hit is not None and evidence.known_hit.tolist() == [False, True]
    assert scrub.scrub(arr, regions=("DE",), known=known).to_pylist()[0] == text
    assert detect.any_of(arr).to_pylist()[0] is False


@pytest.mark.parametrize("text", [
    '{"note":"\\ud83d' + NAME + '"}',                      # glued: a reader sees U+FFFD between
    '{"note":"Zelda\\udc00Plantedpii"}',
    '{"note":"\\ud83d call +49 30 1234567"}',
    '{"note":"\\ud83d call 030 1234567"}',
])
def test_known_values_beside_a_lone_surrogate_are_found_and_replaced(text: str) -> None:
    known = _known()
    arr = pa.array([text], pa.string())
    assert known.found_in(arr).to_pylist() == [True]
    found = scan.find(arr, known=known)
    assert found.known is not None and found.known.tolist() == [True]
    out, _ = scan.scrub_with_evidence(arr, known=known)
    value = out.to_pylist()[0]
    assert value != text and "Plantedpii" not in value and "1234567" not in value
    json.loads(value)  # still JSON


def test_a_surrogate_pair_escape_still_decodes_to_its_character() -> None:
    assert normalize('"\\ud83d\\ude00 x"').text == '"\U0001f600 x"'


def test_decoding_never_gives_a_lone_surrogate() -> None:
    for text in [*LONE, "raw \ud83d in a Python str", "\udc00"]:
        doc = normalize(text)
        doc.text.encode("utf-8")  # would raise on a lone surrogate
        assert len(doc.starts) == len(doc.ends) == len(doc.text)


def test_python_strings_holding_a_lone_surrogate_are_searched_without_error() -> None:
    # Arrow strings are UTF-8 and cannot hold one; a Python str can
    known = KnownValues([NAME, "Broken\ud83dSynthname"], phones=[PHONE], regions=("DE",))
    assert known.spans(f"hi {NAME}\ud83d") == [(3, 3 + len(NAME))]
    assert known.spans("ruf \udc00030 1234567 an") != []
    assert known.found_in(pa.array([f"x {NAME}"])).to_pylist() == [True]
