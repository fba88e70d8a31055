"""The id tokenizer's fast path gives exactly what its per-row definition gives.

``linkage.replace_ids`` finds and replaces ids over the bytes of many rows at once (numpy, Arrow
kernels) and leaves only the rows where ``scan.replace_spans`` may do more than put a token in
place of an id to the per-row code.  The definition (docs/adr/0010-linkage.md) is written out here
once more, row by row, as it was before the fast path: every ``ID_RE`` match, the ids the detectors
confirm as PII left in rows with scrubber evidence, then ``scan.replace_spans``.  Both run over
messy generated text (Faker in several locales, uuids, ULIDs, hex, epoch milliseconds, JSON valid
and not, URLs with ids in their host, the characters a fast path might use as separators).
"""

from __future__ import annotations

import json
import random
import string
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from faker import Faker

from pseudozone import linkage
from pseudozone.keys import KeyRing
from pseudozone.pii import scan

KR = KeyRing(bytes(range(32)), pseudonym_version=1)
LOCALES = ["en_US", "de_DE", "fr_FR", "ja_JP", "ru_RU", "ar_AA", "hi_IN", "he_IL", "zh_CN", "pt_BR"]
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def pseudonymize(values: list[str]) -> list[str]:
    return KR.pseudonymize("acme", linkage.TEXT_PURPOSE, values)


def definition(values: list[str | None], evidence: scan.Evidence | None = None) -> list[str | None]:
    """The per-row definition: ``ID_RE`` matches, spared PII, ``scan.replace_spans``."""
    out = list(values)
    suspect = None
    if evidence is not None:
        suspect = evidence.pii if evidence.known_hit is None else evidence.pii | evidence.known_hit
    rows = [i for i, v in enumerate(values) if v is not None]
    texts = [values[i] for i in rows]
    spans = [[(m.start(), m.end()) for m in linkage.ID_RE.finditer(t)] for t in texts]
    if suspect is not None and evidence is not None and suspect.any():
        spans = linkage._spare_pii(texts, spans, suspect[rows], evidence)
    distinct = sorted({t[s:e] for t, found in zip(texts, spans, strict=True) for s, e in found})
    tokens = {d: linkage.token_of(p.rpartition(":")[2]) for d, p in zip(distinct, pseudonymize(distinct),
                                                                         strict=True)}
    for i, t, found in zip(rows, texts, spans, strict=True):
        if found:
            out[i] = scan.replace_spans(t, [(tokens[t[s:e]], s, e) for s, e in found], token=lambda k: k)
    return out


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _ulid(rng: random.Random) -> str:
    return rng.choice("01234567") + "".join(rng.choice(CROCKFORD + CROCKFORD.lower()) for _ in range(25))


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(n))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _id(rng: random.Random) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        return _uuid(rng)
    if kind == 1:  # a uuid of digits only: its groups are 8 and 12 digit runs too
        return "-".join(_digits(rng, n) for n in (8, 4, 4, 4, 12))
    if kind == 2:
        return _ulid(rng)
    if kind == 3:
        return _hex(rng, rng.choice([15, 16, 17, 24, 32, 64]))
    if kind == 4:  # epoch seconds and milliseconds
        return str(rng.randrange(1_600_000_000, 1_900_000_000) * rng.choice([1, 1000]))
    if kind == 5:
        return _digits(rng, rng.randrange(5, 20))
    if kind == 6:  # almost: a letter or dash too many or too few
        base = rng.choice([_uuid(rng), _ulid(rng), _hex(rng, 16), _digits(rng, 7)])
        cut = rng.randrange(len(base) + 1)
        return base[:cut] + rng.choice(["", "x", "-", "I", "0", "-0"]) + base[cut + 1:]
    if kind == 7:
        return "-".join(_hex(rng, n) for n in rng.choice([(8, 4, 4, 4), (8, 4, 4, 4, 12, 4), (4, 12)]))
    if kind == 8:
        return _digits(rng, 26)
    if kind == 9:
        return rng.choice(["0", "-", ""]) + _digits(rng, rng.randrange(6, 14)) + rng.choice(
            ["", ".5", "e5", "E+10", ".0001"])
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randrange(1, 30)))


SEPARATORS = [" ", "", "-", "_", ".", ",", "/", ":", "=", "&", "?", "#", "\x00", "\x01", "\x02", "\x03",
              "\n", "\t", "\u00a0", "é", "日", "🙂", '"', "\\", "\\\"", "[", "]", "{", "}", "\u2009", "+"]


def _words(rng: random.Random, fake: Faker) -> str:
    parts = []
    for _ in range(rng.randrange(0, 8)):
        r = rng.random()
        if r < 0.35:
            parts.append(_id(rng))
        elif r < 0.5:
            parts.append(fake.word())
        elif r < 0.6:
            parts.append(fake.name())
        elif r < 0.65:
            parts.append(fake.phone_number())
        elif r < 0.7:
            parts.append(fake.email())
        else:
            parts.append(str(rng.randrange(0, 10 ** rng.randrange(1, 12))))
        parts.append(rng.choice(SEPARATORS))
    return "".join(parts)


def _json_value(rng: random.Random, fake: Faker, depth: int = 0) -> object:
    r = rng.random()
    if depth < 4 and r < 0.15:
        return {fake.word(): _json_value(rng, fake, depth + 1) for _ in range(rng.randrange(0, 4))}
    if depth < 4 and r < 0.25:
        return [_json_value(rng, fake, depth + 1) for _ in range(rng.randrange(0, 4))]
    if r < 0.45:
        return int(_digits(rng, rng.randrange(1, 15)))
    if r < 0.5:
        return -int(_digits(rng, rng.randrange(7, 12)))
    if r < 0.55:
        return rng.choice([1234567.5, 0.12345678, 1e21, 12345678.0, True, False, None])
    return _words(rng, fake)


def _json_text(rng: random.Random, fake: Faker) -> str:
    value = {fake.word(): _json_value(rng, fake) for _ in range(rng.randrange(1, 6))}
    if rng.random() < 0.2:
        value = [value, _json_value(rng, fake)]
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1]))
    r = rng.random()
    if r < 0.1:  # no longer JSON
        cut = rng.randrange(len(text))
        return text[:cut] + rng.choice(["", ",", '"', "}", _id(rng)]) + text[cut + 1:]
    if r < 0.15:  # a bare hex or uuid where a number would be
        bare = rng.choice([_hex(rng, 20), _uuid(rng), _ulid(rng)])
        return text.replace(": ", f': {bare}, "x": ', 1)
    if r < 0.2:
        return rng.choice([" ", "\n", "\u00a0", "\ufeff"]) + text + rng.choice(["", " ", "\n"])
    if r < 0.25:  # JSON with numbers Python reads but RFC 8259 does not
        return text.replace(": ", ": NaN, \"y\": ", 1)
    return text


def _url(rng: random.Random, fake: Faker) -> str:
    host = rng.choice([fake.domain_name(), _id(rng) + "." + fake.domain_name(), f"[{_id(rng)}]",
                       f"{fake.user_name()}:{_id(rng)}@{fake.domain_name()}"])
    path = "/".join(_id(rng) if rng.random() < 0.4 else fake.word() for _ in range(rng.randrange(0, 4)))
    query = "&".join(f"{fake.word()}={_id(rng)}" for _ in range(rng.randrange(0, 3)))
    return f"{rng.choice(['https', 'http', 'ftp'])}://{host}/{path}" + (f"?{query}" if query else "") + (
        f"#{_id(rng)}" if rng.random() < 0.2 else "")


def messy(seed: int, n: int) -> list[str | None]:
    rng = random.Random(seed)
    fakes = [Faker(locale) for locale in LOCALES]
    for k, fake in enumerate(fakes):
        fake.seed_instance(seed * 100 + k)
    out: list[str | None] = []
    for _ in range(n):
        fake = rng.choice(fakes)
        r = rng.random()
        if r < 0.03:
            out.append(None)
        elif r < 0.4:
            out.append(_json_text(rng, fake))
        elif r < 0.6:
            out.append(_url(rng, fake))
        elif r < 0.65:
            one = _id(rng)
            out.append(rng.choice(["", " ", one, json.dumps(one), f"[{one}]", f"{{{one}}}"]))
        else:
            out.append(_words(rng, fake))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_the_fast_path_gives_what_the_definition_gives(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    values = messy(seed, 1500)
    if seed % 2:
        monkeypatch.setattr(linkage, "_CHUNK_BYTES", 1 + seed * 97)  # many chunks, rows cut anywhere
    assert linkage.replace_ids(pa.array(values, pa.string()), pseudonymize).to_pylist() == definition(values)


@pytest.mark.parametrize("seed", [100, 101])
def test_the_fast_path_spares_confirmed_pii_as_the_definition_does(seed: int) -> None:
    values = messy(seed, 600)
    rng = random.Random(seed)
    # rows with a card or phone the scrubber was told to keep: the evidence marks them
    for i in rng.sample(range(len(values)), 150):
        values[i] = (values[i] or "") + rng.choice([" card 4539148803436467 ", ' {"n": 4111111111111111}',
                                                    " call +49 30 1234567", " 0301234567 "])
    arr = pa.array(values, pa.string())
    evidence = scan.find_with_evidence(arr)[1]
    assert evidence.pii.any()
    got = linkage.replace_ids(arr, pseudonymize, evidence=evidence).to_pylist()
    assert got == definition(values, evidence)
    # dictionary-encoded, as the scrubber hands over a repetitive column
    encoded = pc.dictionary_encode(pa.array(values + values[:300], pa.string()))
    spread = evidence.spread(pa.array(list(range(len(values))) + list(range(300)), pa.int32()),
                             pa.array(values + values[:300], pa.string()))
    out = linkage.replace_ids(encoded, pseudonymize, evidence=spread)
    assert out.cast(pa.string()).to_pylist() == got + got[:300]


def test_ids_side_by_side_at_row_edges_and_in_json() -> None:
    uid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    values = ["1234567 7654321", "1234567-1234567", f"{uid}-{uid}", "12345678-1234-1234-1234-123456789012x",
              f"{uid}", "1234567", '{"a": 1234567, "b": "7654321", "c": -1234567}',
              '{"a": 1234567.5}', '[1234567,7654321]', '{"k": "\\"1234567\\\\", "n": 12345678}',
              '{"a": 1234567, "b": NaN}', 'x {"a": 1234567}', "https://1234567.example/1234567",
              "ab1234567 1234567ab 1234567_ 0123456789abcdef0 0123456789abcdefg",
              "a uuid cut at a row's end 1234567 0f8fad5b-", "d9cb-469f-a165-70867728950e starts the next"]
    got = linkage.replace_ids(pa.array(values), pseudonymize).to_pylist()
    assert got == definition(values)
    assert json.loads(got[8])[0].startswith("[id:")  # a bare id becomes a JSON string
    assert all(v != g for v, g in zip(values[:10], got[:10], strict=True))


def test_json_and_urls_do_not_need_the_per_row_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows of the bench's shapes (JSON with ids in and out of its strings, escaped quotes and
    backslashes, URLs with ids in their path and query) never reach the per-row code."""
    slow: list[str] = []
    per_row = linkage._replace_rows

    def spy(texts: list[str], *args: object) -> list[str]:
        slow.extend(texts)
        return per_row(texts, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(linkage, "_replace_rows", spy)
    values = ['{"order_id": 1234567890, "sku": "SKU-12345-XL", "ts": 1793617118, "ts_ms": 1793617118123}',
              '{"order": "#350538961513", "cart_token": "5ede80135380235c", "placed_at": 1793617118}',
              '{"k": "\\"1234567\\\\", "n": 12345678, "m": ["a\\\\", 7654321, {"x": 12345678}]}',
              '[{"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, 01ARZ3NDEKTSV4RRFFQ69G5FAV]',
              " \n{\"ulid\": \"01ARZ3NDEKTSV4RRFFQ69G5FAV\", \"n\": 1793617118123}\n",
              "https://shop.example.com/orders/556579753806?ts=1793530813",
              "/api/v1/orders/0f8fad5b-d9cb-469f-a165-70867728950e?page=2", "GET /x 1234567 ms"]
    got = linkage.replace_ids(pa.array(values), pseudonymize).to_pylist()
    assert got == definition(values)
    assert slow == [values[3]]  # a bare ULID: no JSON, so the definition decides
    assert json.loads(got[0])["ts"].startswith("[id:") and json.loads(got[2])["m"][1].startswith("[id:")
