"""The synthetic test corpus: deterministic, complete, and its planting is real."""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import pytest
from stdnum import iban as stdiban

from pseudozone import corpus
from pseudozone.config import Settings
from pseudozone.corpus import (
    EMAIL_OBFUSCATIONS,
    ENCODINGS,
    FORMS,
    KINDS,
    LOCALES,
    NEGATIVE_FAMILIES,
    SAMPLE_PER_LOCALE,
    SAMPLE_SEED,
    Sample,
    detection_corpus,
    landing_dataset,
    load_sample,
    luhn_ok,
    write_sample,
)
from pseudozone.landing import discover, read_batch

SAMPLE_FILE = Path(__file__).resolve().parents[1] / "data" / "corpus_sample.jsonl"


@pytest.fixture(scope="module")
def sample() -> list[Sample]:
    return load_sample(SAMPLE_FILE)


def _leaves(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _leaves(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _leaves(v)]
    return [str(obj)]


def _json_unescape(text: str) -> str:
    if text.startswith("{"):
        return " ".join(_leaves(json.loads(text)))
    text = re.sub(r"(?:\\u[0-9a-fA-F]{4})+", lambda m: json.loads(f'"{m.group(0)}"'), text)
    return text.replace("\\/", "/")


def decode(text: str, encoding: str) -> str:
    """Undo ``encoding`` the way a careful reader would, then NFKC."""
    if encoding == "url_component":
        text = unquote(text)
    elif encoding == "form":
        text = unquote_plus(text)
    elif encoding == "double_url":
        text = unquote(unquote(text))
    elif encoding == "json_escape":
        text = _json_unescape(text)
    elif encoding == "html_entity":
        text = html.unescape(text)
    return unicodedata.normalize("NFKC", text)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _email_parts(email: str) -> list[str]:
    local, domain = email.split("@")
    return [local, *domain.split(".")]


def assert_planted(text: str, encoding: str, value: str, form: str) -> None:
    decoded = decode(text, encoding)
    if form in EMAIL_OBFUSCATIONS and form != "fullwidth_at":
        for part in _email_parts(value):
            assert _nfkc(part) in decoded, (part, text)
    else:
        assert _nfkc(value) in decoded, (value, text)


# --- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_corpus_and_different_seed_different() -> None:
    a = detection_corpus(seed=7, per_locale=12)
    assert a == detection_corpus(seed=7, per_locale=12)
    b = detection_corpus(seed=8, per_locale=12)
    assert len(a) == len(b) == 12 * len(LOCALES)
    assert sum(x != y for x, y in zip(a, b, strict=True)) > len(a) * 0.9


def test_module_imports_without_faker() -> None:
    code = "import sys; sys.modules['faker'] = None; import pseudozone.corpus as c; print(len(c.LOCALES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(len(LOCALES))


def test_committed_sample_equals_regeneration(sample: list[Sample], tmp_path: Path) -> None:
    assert sample == detection_corpus(seed=SAMPLE_SEED, per_locale=SAMPLE_PER_LOCALE)
    n = write_sample(tmp_path / "s.jsonl")
    assert n == len(sample)
    assert (tmp_path / "s.jsonl").read_bytes() == SAMPLE_FILE.read_bytes()


def test_cli_writes_the_sample(tmp_path: Path) -> None:
    assert corpus.main(["sample", str(tmp_path / "x.jsonl"), "--per-locale", "3"]) == 0
    assert len(load_sample(tmp_path / "x.jsonl")) == 3 * len(LOCALES)


# --- coverage --------------------------------------------------------------------------------------

def test_sample_covers_every_locale_kind_encoding_form_and_family(sample: list[Sample]) -> None:
    assert 600 <= len(sample) <= 1500
    assert {s.locale for s in sample} == set(LOCALES)
    positives = [s for s in sample if s.kind is not None]
    negatives = [s for s in sample if s.kind is None]
    assert {(s.kind, s.encoding) for s in positives} == {(k, e) for k in KINDS for e in ENCODINGS}
    assert {(s.kind, s.form) for s in positives} == {(k, f) for k in KINDS for f in FORMS[k]}
    assert {(s.negative, s.encoding) for s in negatives} == {(f, e) for f in NEGATIVE_FAMILIES
                                                             for e in ENCODINGS}
    for locale in LOCALES:
        kinds = {s.kind for s in sample if s.locale == locale}
        assert set(KINDS) | {None} <= kinds, locale
    assert all(s.values and s.negative is None for s in positives)
    assert all(not s.values and s.negative for s in negatives)


# --- the planting is real --------------------------------------------------------------------------

def test_every_planted_value_appears_once_the_text_is_decoded(sample: list[Sample]) -> None:
    for s in sample:
        for value in s.values:
            assert_planted(s.text, s.encoding, value, s.form)


def test_encodings_really_encode(sample: list[Sample]) -> None:
    for s in sample:
        if s.kind is None:
            continue
        value = s.values[0]
        if s.encoding == "json_escape" and ("@" in value or "+" in value or not value.isascii()):
            assert value not in s.text, s
        if s.encoding == "fullwidth" and s.kind != "name":
            assert value not in s.text, s
        if s.encoding in ("url_component", "double_url") and re.search(r"[^A-Za-z0-9_.~-]", value):
            assert value not in s.text, s
        if s.encoding == "double_url" and re.search(r"[^A-Za-z0-9_.~-]", value):
            assert "%25" in s.text, s
        if s.encoding == "html_entity":
            assert "&" in s.text and value not in s.text, s


def test_planted_values_are_well_formed(sample: list[Sample]) -> None:
    seen: Counter[str] = Counter()
    for s in sample:
        if s.kind is None:
            continue
        value = s.values[0]
        seen[s.kind] += 1
        if s.kind == "card":
            digits = re.sub(r"[ .-]", "", value)
            assert digits.isdigit() and 12 <= len(digits) <= 19 and luhn_ok(digits), value
        elif s.kind == "iban":
            assert stdiban.is_valid(value), value
        elif s.kind == "ip":
            ipaddress.ip_address(value.split("%")[0])
        elif s.kind == "email":
            local, _, domain = value.partition("@")
            assert local and "." in domain, value
        elif s.kind == "phone":
            assert sum(c.isdigit() for c in value) >= 7, value
    assert set(seen) == set(KINDS)


_TOKEN_RE = {
    "uuid4": r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}\b",
    "uuid4_hex": r"\b[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}\b",
    "ulid": r"\b[0-7][0-9A-HJKMNP-TV-Z]{25}\b",
    "ksuid": r"\b[0-9A-Za-z]{27}\b",
    "sha1": r"\b[0-9a-f]{40}\b",
    "sha256": r"\b[0-9a-f]{64}\b",
    "base64": r"[A-Za-z0-9+/]{20,}={0,2}",
    "jwt": r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}\b",
}


def test_negatives_carry_no_email_and_tokens_have_their_alphabets(sample: list[Sample]) -> None:
    for s in sample:
        if s.kind is not None:
            continue
        decoded = decode(s.text, s.encoding)
        assert "@" not in decoded and "＠" not in decoded, s
        pattern = _TOKEN_RE.get(str(s.negative))
        if pattern is None:
            continue
        found = re.findall(pattern, decoded)
        assert found, s
        if s.negative == "jwt":
            header = found[0].split(".")[0]
            assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["typ"] == "JWT"
        if s.negative == "base64":
            assert any(re.search(r"[+/]", tok) for tok in found), s


# --- the landing dataset ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, corpus.PlantedTruth]:
    root = tmp_path_factory.mktemp("lake")
    truth = landing_dataset(root, seed=3, profiles_per_tenant=40, events_per_tenant=400, logs_per_tenant=200)
    return Settings(root=root), truth


def test_landing_files_read_against_their_contracts(landed: tuple[Settings, corpus.PlantedTruth]) -> None:
    settings, truth = landed
    refs = discover(settings)
    assert sorted(settings.landing / r.path for r in refs) == sorted(truth.files)
    assert {Path(r.path).suffix for r in refs} == {".parquet", ".csv", ".jsonl"}
    rows: Counter[str] = Counter()
    for ref in refs:
        table, _ = read_batch(settings, ref)  # raises ContractViolation if anything is off
        rows[ref.dataset] += table.num_rows
    assert dict(rows) == truth.rows == {"profiles": 160, "events": 1600, "server_logs": 800}


def test_known_subjects_appear_in_free_text(landed: tuple[Settings, corpus.PlantedTruth]) -> None:
    settings, truth = landed
    assert truth.values
    subjects = {s.user_id: s for s in truth.subjects}
    for kind in ("name", "email", "phone"):
        in_events = truth.known_in_free_text(kind, dataset="events")
        assert in_events and in_events <= truth.values, kind
    cells: dict[tuple[str, str, str], str] = {}
    for ref in discover(settings):
        table, _ = read_batch(settings, ref)
        key = {"profiles": "user_id", "events": "event_id", "server_logs": "request_id"}[ref.dataset]
        for row in table.to_pylist():
            for column in ("attributes_json", "page_url", "properties_json", "path"):
                if column in row and row[column] is not None:
                    cells[(ref.dataset, str(row[key]), column)] = row[column]
    free = [p for p in truth.plants if p.column in ("attributes_json", "page_url", "properties_json", "path")]
    assert {p.dataset for p in free} == {"profiles", "events", "server_logs"}
    assert {p.encoding for p in free if p.dataset == "events"} == set(ENCODINGS)
    for p in free:
        assert p.value in truth.values
        assert_planted(cells[(p.dataset, p.row_key, p.column)], p.encoding, p.value, p.form)
        if p.subject is not None:
            subject = subjects[p.subject]
            if p.kind == "name":
                assert p.value == subject.full_name
            elif p.kind == "email":
                assert p.value == subject.email
            elif p.kind == "phone" and p.form == "profile":
                assert p.value == subject.phone
    for s in truth.subjects:
        assert s.email in truth.values and s.full_name in truth.values


def test_landing_dataset_is_deterministic(tmp_path: Path) -> None:
    a = landing_dataset(tmp_path / "a", seed=5, tenants={"t1": ("de_DE", "ja_JP")}, profiles_per_tenant=10,
                        events_per_tenant=60, logs_per_tenant=30, batches=2)
    b = landing_dataset(tmp_path / "b", seed=5, tenants={"t1": ("de_DE", "ja_JP")}, profiles_per_tenant=10,
                        events_per_tenant=60, logs_per_tenant=30, batches=2)
    assert a.plants == b.plants and a.subjects == b.subjects and a.values == b.values
    for fa, fb in zip(a.files, b.files, strict=True):
        assert fa.relative_to(tmp_path / "a") == fb.relative_to(tmp_path / "b")
        if fa.suffix != ".parquet":
            assert fa.read_bytes() == fb.read_bytes()
