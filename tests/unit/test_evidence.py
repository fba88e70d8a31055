"""Scan evidence: what the scrubber's scan found, reused by the gate for the rows left as they were.

The gate's verdict with evidence must be the verdict of a full check of what it is
given, whatever that is: the scrubbed output, the unscrubbed input (a scrubber that
replaced nothing), or rows in another order.  Checked on the committed Faker corpus
(ten locales, every encoding, hard negatives), with the planted names and phones known.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pseudozone import corpus, scrub
from pseudozone.pii import scan
from pseudozone.validation import detect
from pseudozone.validation.expectations import _clean
from pseudozone.validation.known import AnyKnown, KnownValues

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "corpus_sample.jsonl"
REGIONS = ("US", "GB", "DE", "FR", "ES", "BR", "JP", "IN", "CN", "RU")


@pytest.fixture(scope="module")
def texts() -> pa.Array:
    samples = corpus.load_sample(SAMPLE)
    values = [s.text for s in samples]
    # repeats (dictionary path), nulls and empties beside the corpus
    return pa.array(values + values[:50] + [None, "", None], pa.string())


@pytest.fixture(scope="module")
def known() -> AnyKnown:
    samples = corpus.load_sample(SAMPLE)
    names = [v for s in samples if s.kind == "name" for v in s.values]
    phones = [v for s in samples if s.kind == "phone" for v in s.values][:40]
    return AnyKnown(KnownValues(names[: len(names) // 2], regions=REGIONS),
                    KnownValues(names[len(names) // 2:], phones=phones, regions=REGIONS))


def _pii(values: pa.Array) -> pa.Array:
    return detect.any_of(values, detect.KINDS, REGIONS)


def test_evidence_is_what_the_full_checks_give_on_the_input(texts: pa.Array, known: AnyKnown) -> None:
    _, evidence = scrub.scrub_with_evidence(texts, regions=REGIONS, known=known)
    full_pii = np.asarray(_pii(texts).to_numpy(zero_copy_only=False))
    full_known = np.asarray(known.found_in(texts).to_numpy(zero_copy_only=False))
    assert evidence.values.equals(texts)
    assert evidence.pii.tolist() == full_pii.tolist()
    assert evidence.known_hit is not None and evidence.known_hit.tolist() == full_known.tolist()
    # the corpus plants PII in most texts: the evidence is not trivially all False
    assert 0.5 < full_pii.mean() < 0.9 and full_known.sum() >= 20


def test_repeated_values_spread_their_evidence_to_every_row(known: AnyKnown) -> None:
    base = ["call +49 30 1234567 today", "nothing here", None, "mail: zelda@example.org"]
    texts = pa.array(base * 600, pa.string())
    scrubbed, evidence = scrub.scrub_with_evidence(texts, regions=REGIONS, known=known)
    assert pa.types.is_dictionary(scrubbed.type)  # the distinct-value path was taken
    assert evidence.pii.tolist() == [True, False, False, True] * 600
    assert evidence.values.equals(texts)


@pytest.mark.parametrize("given", ["scrubbed", "unscrubbed", "shuffled", "truncated"])
def test_the_gate_verdict_with_evidence_is_that_of_a_full_check(
        texts: pa.Array, known: AnyKnown, given: str) -> None:
    scrubbed, evidence = scrub.scrub_with_evidence(texts, regions=REGIONS, known=known)
    checked = {"scrubbed": scan._strings(scrubbed), "unscrubbed": texts,
               "truncated": texts.slice(0, 100)}.get(given)
    if checked is None:
        order = list(range(len(texts)))
        random.Random(5).shuffle(order)
        checked = texts.take(pa.array(order))
    for found, shared in ((_pii, (evidence.pii, evidence.values)),
                          (known.found_in, (evidence.known_hit, evidence.values))):
        assert shared[0] is not None
        with_evidence = _clean(checked, None, found, (shared[0], shared[1]))
        full = _clean(checked, None, found, None)
        assert with_evidence.tolist() == full.tolist()
    if given == "unscrubbed":
        # what a scrubber that replaced nothing would publish: the gate sees every finding
        assert (~_clean(checked, None, _pii, (evidence.pii, evidence.values))).sum() == evidence.pii.sum()
    if given == "scrubbed":
        assert _clean(checked, None, _pii, (evidence.pii, evidence.values)).mean() > 0.99


def test_reuse_checks_only_the_rows_that_changed() -> None:
    before = pa.array(["a", "b", None, "d"], pa.string())
    after = pa.array(["a", "B", None, None], pa.string())
    seen: list[list[str | None]] = []

    def check(values: pa.Array) -> np.ndarray:
        seen.append(values.to_pylist())
        return np.ones(len(values), dtype=bool)

    out = scan.reuse(after, np.array([True, False, False, True]), before, check)
    assert seen == [["B", None]]
    assert out.tolist() == [True, True, False, True]
