"""Detection benchmark: pseudozone's scrubber and PII checks on the Faker test corpus, against Presidio.

One invocation:

1. generates ``pseudozone.corpus.detection_corpus(seed, per_locale)`` (default seed 7,
   400 texts per locale, 10 locales: not the seed of the committed test sample) in a
   child process, which measures pseudozone on it:

   * **detector recall** per kind (email, phone, ip, card, iban) and encoding: each
     locale's texts scrubbed by ``pseudozone.scrub.scrub`` with that locale's country
     as the tenant's regions (``tenant``), and again with ``DEFAULT_REGIONS`` for all
     (``default``).  A positive is found when none of its planted values survives in
     the output read every way a person might (HTML entities and JSON ``\\uXXXX``
     decoded, then 0 to 3 rounds of percent-decoding, with and without ``+`` as a
     space, NFKC, case-folded; for phones, cards and IBANs also digits only; for emails
     also with ``(at)``/``at`` and ``(dot)``/``dot`` collapsed).  Partial leaks (7+
     digits of a phone or card left, ...) are listed apart;
   * **known-subject recall**: ``KnownValues`` built per locale from the planted names
     (and, separately, the planted emails and phones) and passed as ``known=``;
   * **the independent check** (``pseudozone.validation.detect.any_of``): the share of
     positives it flags before scrubbing, and what it still flags after;
   * **hard negatives**: per family, the share of texts the scrubber alters and the
     share of word tokens it alters, and the 50-text batches in which the check flags
     something after scrubbing (a quarantined batch at the publish gate);
   * **throughput** of ``scrub`` over all texts, best of ``--repeat`` runs, with the
     detectors' memo caches cleared before each run;

2. runs Presidio's pattern recognizers (Email, Phone with the 10 regions, Ip,
   CreditCard, Iban; no NLP engine) on the same texts in a second child, replacing what
   they find, for the same recall figures and the same throughput measurement;
3. writes the JSON report to ``<workdir>/detection.json`` and
   prints a summary: recall tables, misses grouped by kind, encoding and form
   (sample indices only, never values), negatives altered per family, quarantined
   batches, throughputs, and PASS/MISS against the targets.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_plus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402  (after the path insert)

if TYPE_CHECKING:
    from pseudozone.corpus import Sample

DEFAULT_WORKDIR = HERE / "out"
RESULTS = "detection.json"
CORPUS_FILE = "detection-corpus.jsonl"
SEED = 7
PER_LOCALE = 400
DETECTOR_KINDS: tuple[str, ...] = ("email", "phone", "ip", "card", "iban")
KNOWN_KINDS: tuple[str, ...] = ("name", "email", "phone")
ENCODINGS: tuple[str, ...] = ("raw", "url_component", "form", "double_url", "json_escape", "html_entity",
                              "fullwidth")
ENC_SHORT = {"raw": "raw", "url_component": "url", "form": "form", "double_url": "dbl_url",
             "json_escape": "json", "html_entity": "html", "fullwidth": "fullw"}
CONFIGS: tuple[str, ...] = ("tenant", "default")
BATCH = 50
RECALL_TARGET = 0.99
KNOWN_TARGET = 1.0
TOKENS_TARGET = 0.01
SPEED_TARGET = 20.0
PRESIDIO_BUDGET_S = 90.0
PRESIDIO_PILOT = 200
WARMUP_TEXTS = 200
PRESIDIO_ENTITIES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip",
                     "CREDIT_CARD": "card", "IBAN_CODE": "iban"}
_SCRUB_TOKEN = re.compile(r"\[(email|phone|ip|card|iban|pii)\]")
_WORD = re.compile(r"\w+")

Json = dict[str, Any]


# -- reading a text as a person would (independent of pseudozone's own decoder) ---------------

_JSON_ESC = re.compile(r"\\u([0-9a-fA-F]{4})|\\/")
_AT = re.compile(r"\s*[\(\[\{]\s*at\s*[\)\]\}]\s*|\s+at\s+")
_DOT = re.compile(r"\s*[\(\[\{]\s*dot\s*[\)\]\}]\s*|\s+dot\s+")
_NOT_DIGIT = re.compile(r"[^0-9]")


def _json_unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out = _JSON_ESC.sub(lambda m: "/" if m.group(1) is None else chr(int(m.group(1), 16)), text)
    # \ud83d\ude00 arrives as two surrogates: join them (a lone one becomes U+FFFD)
    return out.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def views(text: str, *, email: bool = False) -> list[str]:
    """``text`` read every way it may be meant, NFKC-normalized and case-folded: HTML entities and
    JSON escapes decoded, then 0, 1, 2 and 3 rounds of percent-decoding (an IPv6 zone ``%12`` is
    not an escape), once with ``+`` kept and once with ``+`` as a space (form encoding).  For
    emails also with spelled-out ``at``/``dot`` collapsed to ``@``/``.``."""
    out: list[str] = []

    def add(t: str) -> None:
        folded = _fold(t)
        out.append(folded)
        if email:
            out.append(_DOT.sub(".", _AT.sub("@", folded)))

    base = _json_unescape(html.unescape(text))
    add(base)
    for unq in (unquote, unquote_plus):
        t = base
        for _ in range(3):
            decoded = _json_unescape(html.unescape(unq(t)))
            if decoded == t:
                break
            t = decoded
            add(t)
    return list(dict.fromkeys(out))


def survives(sample: Sample, text: str) -> tuple[bool, bool]:
    """(a planted value is still in ``text``, only a part of one is: 7+ digits of a phone or a
    card, 8+ of an IBAN, an email's ``local@``, a word of 3+ letters of a name)."""
    kind = sample.kind or ""
    seen = views(text, email=kind == "email")
    digits = [_NOT_DIGIT.sub("", v) for v in seen] if kind in ("phone", "card", "iban") else []
    partial = False
    for value in sample.values:
        v = _fold(value)
        if any(v in view for view in seen):
            return True, False
        if digits:
            d = _NOT_DIGIT.sub("", v)
            if d and any(d in dv for dv in digits):
                return True, False
            width = 8 if kind == "iban" else 7
            if len(d) > width and any(d[i:i + width] in dv for i in range(len(d) - width + 1)
                                      for dv in digits):
                partial = True
        elif kind == "email" and "@" in v:
            local = v.split("@", 1)[0]
            if len(local) >= 3 and any(local + "@" in view for view in seen):
                partial = True
        elif kind == "name":
            words = [w for w in v.split() if len(w) >= 3 and "." not in w]
            if len(words) > 1 and any(w in view for w in words for view in seen):
                partial = True
    return False, partial


def scrub_tokens(before: str, after: str) -> dict[str, int]:
    """Typed tokens the scrubber put in (those in ``after`` but not in ``before``)."""
    added = Counter(_SCRUB_TOKEN.findall(after))
    added.subtract(Counter(_SCRUB_TOKEN.findall(before)))
    return {k: n for k, n in sorted(added.items()) if n > 0}


def altered_tokens(before: str, after: str) -> tuple[int, int]:
    """(word tokens of ``before``, how many of them are missing from ``after``), as multisets."""
    orig = Counter(_WORD.findall(before))
    gone = orig - Counter(_WORD.findall(after))
    return sum(orig.values()), sum(gone.values())


# -- evaluation shared by both children --------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _cell() -> Json:
    return {"found": 0, "total": 0}


def _finish(cells: dict[str, dict[str, Json]]) -> dict[str, dict[str, Json]]:
    for row in cells.values():
        row["all"] = {"found": sum(c["found"] for c in row.values()),
                      "total": sum(c["total"] for c in row.values())}
        for c in row.values():
            c["recall"] = _ratio(c["found"], c["total"])
    return cells


def _brief(i: int, s: Sample) -> Json:
    return {"index": i, "kind": s.kind, "encoding": s.encoding, "form": s.form, "locale": s.locale}


def recall(samples: Sequence[Sample], outputs: Sequence[str | None], kinds: Iterable[str], *,
           texts: bool = True) -> Json:
    """Recall per kind x encoding; every miss and partial leak (with the values, text and output
    when ``texts``: synthetic data, for the JSON report only)."""
    wanted = tuple(kinds)
    cells: dict[str, dict[str, Json]] = {k: {e: _cell() for e in ENCODINGS} for k in wanted}
    misses: list[Json] = []
    partial: list[Json] = []
    blind: list[int] = []
    for i, (s, out) in enumerate(zip(samples, outputs, strict=True)):
        if s.kind not in wanted or out is None:
            continue
        if not survives(s, s.text)[0]:
            blind.append(i)  # the check cannot see the value even before scrubbing
            continue
        cell = cells[s.kind][s.encoding]
        cell["total"] += 1
        left, part = survives(s, out)
        entry = _brief(i, s)
        if texts:
            entry.update(values=list(s.values), text=s.text, output=out)
        if left:
            misses.append(entry)
            continue
        cell["found"] += 1
        if part:
            partial.append(entry)
    return {"cells": _finish(cells), "misses": misses, "partial": partial, "blind": blind}


def negatives(samples: Sequence[Sample], outputs: Sequence[str | None], *, texts: bool = True) -> Json:
    """Per family: texts and word tokens the scrubber altered; the altered texts (with the text and
    output when ``texts``)."""
    fam: dict[str, Json] = defaultdict(lambda: {"samples": 0, "altered": 0, "tokens": 0,
                                                "tokens_altered": 0})
    altered: list[Json] = []
    for i, (s, out) in enumerate(zip(samples, outputs, strict=True)):
        if s.kind is not None or out is None:
            continue
        row = fam[s.negative or s.form]
        row["samples"] += 1
        tokens, gone = altered_tokens(s.text, out)
        row["tokens"] += tokens
        if out != s.text:
            row["altered"] += 1
            row["tokens_altered"] += gone
            altered.append({"index": i, "family": s.negative, "encoding": s.encoding, "locale": s.locale,
                            "replaced": scrub_tokens(s.text, out), "tokens_altered": gone,
                            **({"text": s.text, "output": out} if texts else {})})
    families = {k: fam[k] for k in sorted(fam)}
    total = {key: sum(int(r[key]) for r in families.values())
             for key in ("samples", "altered", "tokens", "tokens_altered")}
    for r in [*families.values(), total]:
        r["altered_share"] = _ratio(r["altered"], r["samples"])
        r["tokens_altered_share"] = _ratio(r["tokens_altered"], r["tokens"])
    return {"families": families, "all": total, "altered": altered}


def by_locale(samples: Sequence[Sample]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.locale].append(i)
    return dict(groups)


def corpus_stats(samples: Sequence[Sample]) -> Json:
    per_locale: dict[str, Json] = {}
    for loc, idx in by_locale(samples).items():
        pos = sum(1 for i in idx if samples[i].kind is not None)
        per_locale[loc] = {"texts": len(idx), "positives": pos, "negatives": len(idx) - pos,
                           "bytes": sum(len(samples[i].text.encode()) for i in idx)}
    cells = Counter(f"{s.kind}/{s.encoding}" for s in samples if s.kind)
    return {"texts": len(samples), "positives": sum(1 for s in samples if s.kind),
            "negatives": sum(1 for s in samples if not s.kind),
            "bytes": sum(len(s.text.encode()) for s in samples),
            "mb": sum(len(s.text.encode()) for s in samples) / 1e6, "per_locale": per_locale,
            "per_kind": dict(sorted(Counter(str(s.kind or "negative") for s in samples).items())),
            "per_kind_encoding": dict(sorted(cells.items()))}


def forbid_network() -> list[str]:
    """Make every socket connection and name lookup fail, and record the attempts."""
    import socket

    attempts: list[str] = []

    def refuse(*args: Any, **_kwargs: Any) -> Any:
        attempts.append(repr(args[1:2])[:120])
        raise OSError("network disabled by bench_detection")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    return attempts


# -- child: pseudozone -----------------------------------------------------------------------


def _clear_memo_caches() -> int:
    """Clear the ``functools`` caches of pseudozone's detectors (a repeat run must not find its
    phone numbers already parsed).  Returns how many caches were cleared."""
    import pseudozone.pii.detectors as detectors
    import pseudozone.pii.normalize as normalize
    import pseudozone.pii.scan as scan
    import pseudozone.validation.known as known

    cleared = 0
    for mod in (detectors, normalize, scan, known):
        for obj in list(vars(mod).values()):
            clear = getattr(obj, "cache_clear", None)
            if hasattr(obj, "cache_info") and callable(clear) and not isinstance(obj, type):
                clear()
                cleared += 1
    return cleared


def _strs(arr: Any) -> list[str | None]:
    return list(arr.to_pylist())


def _arrays(values: Sequence[str | None], groups: dict[str, list[int]]) -> dict[str, Any]:
    import pyarrow as pa

    return {loc: pa.array([values[i] for i in idx], pa.string()) for loc, idx in groups.items()}


def _scrub(arrays: dict[str, Any], known: dict[str, Any] | None, loc: str, regions: tuple[str, ...]) -> Any:
    from pseudozone.scrub import scrub

    return scrub(arrays[loc], regions=regions, known=known[loc] if known is not None else None)


def _any_of(arrays: dict[str, Any], loc: str, regions: tuple[str, ...]) -> Any:
    from pseudozone.validation import detect

    return detect.any_of(arrays[loc], regions=regions)


def _found_in(known: dict[str, Any], arrays: dict[str, Any], loc: str, _regions: tuple[str, ...]) -> Any:
    return known[loc].found_in(arrays[loc])


def phase_pseudozone(args: argparse.Namespace) -> Json:
    import pyarrow as pa

    from pseudozone.corpus import COUNTRY, detection_corpus
    from pseudozone.pii.detectors import DEFAULT_REGIONS
    from pseudozone.scrub import scrub
    from pseudozone.validation.known import KnownValues

    attempts = forbid_network()
    t0 = time.perf_counter()
    samples = detection_corpus(seed=args.seed, per_locale=args.per_locale)
    gen_s = time.perf_counter() - t0
    corpus_path = Path(args.workdir) / CORPUS_FILE
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    corpus_path.write_text("".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples),
                           encoding="utf-8")
    texts = [s.text for s in samples]
    groups = by_locale(samples)
    arrays = _arrays(texts, groups)

    def regions_for(config: str, locale: str) -> tuple[str, ...]:
        return (COUNTRY[locale],) if config == "tenant" else tuple(DEFAULT_REGIONS)

    def per_group(config: str, run: Callable[[str, tuple[str, ...]], Any]) -> list[Any]:
        """``run(locale, regions)`` on each locale's texts (one tenant each), back in corpus order."""
        out: list[Any] = [None] * len(samples)
        for loc, idx in groups.items():
            for i, v in zip(idx, run(loc, regions_for(config, loc)).to_pylist(), strict=True):
                out[i] = v
        return out

    report: Json = {"corpus": corpus_stats(samples), "generate_s": gen_s, "corpus_file": str(corpus_path),
                    "configs": {}}
    for config in CONFIGS:
        res: Json = {"regions": "locale's country" if config == "tenant" else list(DEFAULT_REGIONS)}
        _clear_memo_caches()
        t = time.perf_counter()
        scrubbed = per_group(config, partial(_scrub, arrays, None))
        res["scrub_once_s"] = time.perf_counter() - t
        res["detectors"] = recall(samples, scrubbed, DETECTOR_KINDS)
        res["negatives"] = negatives(samples, scrubbed)

        # the independent check, on the raw texts and on the scrubber's output
        _clear_memo_caches()
        t = time.perf_counter()
        flag_raw = per_group(config, partial(_any_of, arrays))
        res["check_raw_s"] = time.perf_counter() - t
        flag_out = per_group(config, partial(_any_of, _arrays(scrubbed, groups)))
        res["check"] = check_report(samples, flag_raw, flag_out, groups)

        # known subjects: names, then emails and phones, per locale (one tenant each)
        known_res: Json = {}
        for label, kinds in (("names", ("name",)), ("emails_phones", ("email", "phone"))):
            holders: dict[str, Any] = {}
            for loc, idx in groups.items():
                mine = [samples[i] for i in idx if samples[i].kind in kinds]
                holders[loc] = KnownValues([v for s in mine if s.kind != "phone" for v in s.values],
                                           phones=[v for s in mine if s.kind == "phone" for v in s.values],
                                           regions=regions_for(config, loc))
            out = per_group(config, partial(_scrub, arrays, holders))
            found_raw = per_group(config, partial(_found_in, holders, arrays))
            found_out = per_group(config, partial(_found_in, holders, _arrays(out, groups)))
            neg = negatives(samples, out)
            plain = {a["index"] for a in res["negatives"]["altered"]}
            known_res[label] = {"recall": recall(samples, out, kinds),
                                "values": sum(len(s.values) for s in samples if s.kind in kinds),
                                "check": known_check(samples, found_raw, found_out, kinds),
                                "negatives_altered": neg["all"],
                                "negatives_altered_beyond_plain_scrub": [
                                    a for a in neg["altered"] if a["index"] not in plain]}
        res["known"] = known_res
        report["configs"][config] = res

    # throughput: every text, best of --repeat, memo caches cleared before each run
    whole = pa.array(texts, pa.string())
    warm = pa.array(texts[:: max(1, len(texts) // WARMUP_TEXTS)], pa.string())
    scrub(warm, regions=tuple(DEFAULT_REGIONS))
    for loc in groups:
        scrub(warm, regions=(COUNTRY[loc],))
    runs: dict[str, list[float]] = {"tenant": [], "default": []}
    for _ in range(args.repeat):
        _clear_memo_caches()
        t = time.perf_counter()
        for loc, arr in arrays.items():
            scrub(arr, regions=(COUNTRY[loc],))
        runs["tenant"].append(time.perf_counter() - t)
        _clear_memo_caches()
        t = time.perf_counter()
        scrub(whole, regions=tuple(DEFAULT_REGIONS))
        runs["default"].append(time.perf_counter() - t)
    report["throughput"] = {k: throughput(v, report["corpus"]) for k, v in runs.items()}
    report["memo_caches_cleared"] = _clear_memo_caches()
    report["pyarrow"] = pa.__version__
    report["network_attempts"] = attempts
    return report


def check_report(samples: Sequence[Sample], raw: Sequence[Any], out: Sequence[Any],
                 groups: dict[str, list[int]]) -> Json:
    """What ``detect.any_of`` flags: positives before and after scrubbing, negatives, and the
    batches of 50 negatives (per locale: one tenant) with a flag after scrubbing."""
    cells: dict[str, dict[str, Json]] = {k: {e: _cell() for e in ENCODINGS} for k in DETECTOR_KINDS}
    still: list[Json] = []
    neg_raw: list[Json] = []
    neg_out: list[Json] = []
    for i, s in enumerate(samples):
        if s.kind in DETECTOR_KINDS:
            cell = cells[s.kind][s.encoding]
            cell["total"] += 1
            cell["found"] += bool(raw[i])
            if out[i]:
                still.append(_brief(i, s))
        elif s.kind is None:
            if raw[i]:
                neg_raw.append({"index": i, "family": s.negative, "encoding": s.encoding, "locale": s.locale})
            if out[i]:
                neg_out.append({"index": i, "family": s.negative, "encoding": s.encoding, "locale": s.locale})
    batches = quarantined = 0
    quarantined_batches: list[Json] = []
    for loc, idx in groups.items():
        negs = [i for i in idx if samples[i].kind is None]
        for b in range(0, len(negs), BATCH):
            chunk = negs[b:b + BATCH]
            batches += 1
            flagged = [i for i in chunk if out[i]]
            if flagged:
                quarantined += 1
                quarantined_batches.append({"locale": loc, "batch": b // BATCH, "flagged": flagged})
    return {"positives_flagged_raw": _finish(cells), "positives_flagged_after_scrub": still,
            "negatives_flagged_raw": neg_raw, "negatives_flagged_after_scrub": neg_out,
            "negative_batches": batches, "quarantined_batches": quarantined,
            "quarantined": quarantined_batches}


def known_check(samples: Sequence[Sample], raw: Sequence[Any], out: Sequence[Any],
                kinds: tuple[str, ...]) -> Json:
    """``KnownValues.found_in`` (the gate's known-value search) before and after scrubbing."""
    cells: dict[str, dict[str, Json]] = {k: {e: _cell() for e in ENCODINGS} for k in kinds}
    still: list[Json] = []
    neg = 0
    for i, s in enumerate(samples):
        if s.kind in kinds:
            cell = cells[s.kind][s.encoding]
            cell["total"] += 1
            cell["found"] += bool(raw[i])
            if out[i]:
                still.append(_brief(i, s))
        elif s.kind is None and raw[i]:
            neg += 1
    return {"flagged_raw": _finish(cells), "flagged_after_scrub": still, "negatives_flagged_raw": neg}


def throughput(walls: list[float], corpus: Json) -> Json:
    best = min(walls)
    return {"runs_s": walls, "best_s": best, "texts": corpus["texts"], "bytes": corpus["bytes"],
            "texts_per_s": corpus["texts"] / best, "mb_per_s": corpus["bytes"] / 1e6 / best}


# -- child: presidio --------------------------------------------------------------------------


def _recognizers() -> list[tuple[Any, str]]:
    import tldextract.tldextract as tld_module
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    from pseudozone.pii.detectors import DEFAULT_REGIONS

    # EmailRecognizer validates with tldextract.extract, which would fetch the public
    # suffix list on first use: use the snapshot bundled with tldextract, no cache, no URL
    tld_module.TLD_EXTRACTOR = tld_module.TLDExtract(suffix_list_urls=(), cache_dir=None,
                                                     fallback_to_snapshot=True)
    return [(EmailRecognizer(), "EMAIL_ADDRESS"),
            (PhoneRecognizer(supported_regions=tuple(DEFAULT_REGIONS)), "PHONE_NUMBER"),
            (IpRecognizer(), "IP_ADDRESS"), (CreditCardRecognizer(), "CREDIT_CARD"),
            (IbanRecognizer(), "IBAN_CODE")]


def presidio_scrub(text: str, recognizers: list[tuple[Any, str]]) -> str:
    """Find with every recognizer, merge overlapping results, replace each span by its token."""
    spans: list[tuple[int, int, float, str]] = []
    for rec, entity in recognizers:
        for r in rec.analyze(text, entities=[entity], nlp_artifacts=None):
            if r.score > 0:
                spans.append((r.start, r.end, r.score, entity))
    if not spans:
        return text
    spans.sort(key=lambda s: (s[0], s[0] - s[1]))
    merged: list[list[Any]] = []
    for start, end, score, entity in spans:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], end)
            if score > last[2]:
                last[2], last[3] = score, entity
            continue
        merged.append([start, end, score, entity])
    parts: list[str] = []
    pos = 0
    for start, end, _score, entity in merged:
        parts.append(text[pos:start])
        parts.append(f"[{PRESIDIO_ENTITIES[entity]}]")
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def phase_presidio(args: argparse.Namespace) -> Json:
    import presidio_analyzer

    from pseudozone.corpus import load_sample

    attempts = forbid_network()
    samples = load_sample(Path(args.workdir) / CORPUS_FILE)
    recognizers = _recognizers()
    texts = [s.text for s in samples]

    # a pilot on every k-th text (also the warm-up) estimates a full run
    step = max(1, len(texts) // PRESIDIO_PILOT)
    pilot = texts[::step]
    t = time.perf_counter()
    for text in pilot:
        presidio_scrub(text, recognizers)
    pilot_s = time.perf_counter() - t
    estimate = pilot_s / max(1, len(pilot)) * len(texts)
    every = 1
    if estimate * args.repeat > args.presidio_budget:
        every = int(estimate * args.repeat / args.presidio_budget) + 1
    chosen = list(range(0, len(texts), every))
    subset = [texts[i] for i in chosen]
    subset_bytes = sum(len(x.encode()) for x in subset)

    walls: list[float] = []
    outputs: list[str] = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        outputs = [presidio_scrub(text, recognizers) for text in subset]
        walls.append(time.perf_counter() - t)
    full: list[str | None] = [None] * len(samples)
    for i, out in zip(chosen, outputs, strict=True):
        full[i] = out
    found = recall(samples, full, DETECTOR_KINDS, texts=False)
    neg = negatives(samples, full, texts=False)
    # Presidio misses by the thousand: grouped, sample indices only
    found["misses"] = grouped(found["misses"], ("kind", "encoding", "form"))
    found["partial"] = grouped(found["partial"], ("kind", "encoding", "form"))
    neg["altered"] = grouped(neg["altered"], ("family", "encoding"))
    return {"version": getattr(presidio_analyzer, "__version__", None) or _dist_version("presidio-analyzer"),
            "recognizers": [type(r).__name__ for r, _ in recognizers],
            "phone_regions": list(recognizers[1][0].supported_regions),
            "pilot": {"texts": len(pilot), "wall_s": pilot_s, "estimated_full_run_s": estimate},
            "subset": {"every": every, "texts": len(subset), "of": len(texts), "bytes": subset_bytes},
            "throughput": throughput(walls, {"texts": len(subset), "bytes": subset_bytes}),
            "detectors": found, "negatives": neg,
            "network_attempts": attempts}


def grouped(items: list[Json], keys: tuple[str, ...]) -> dict[str, list[int]]:
    """``{"k1/k2/...": [sample indices]}``, largest groups first."""
    out: dict[str, list[int]] = defaultdict(list)
    for item in items:
        out["/".join(str(item[k]) for k in keys)].append(int(item["index"]))
    return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


PHASES = {"pseudozone": phase_pseudozone, "presidio": phase_presidio}


# -- parent ------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _known_cells(res: Json, which: str) -> dict[str, dict[str, Json]]:
    """The name, email and phone rows of the two known-subject runs (``recall`` or ``check``)."""
    names, other = res["known"]["names"][which], res["known"]["emails_phones"][which]
    if which == "recall":
        return {**names["cells"], **other["cells"]}
    return {**names["flagged_raw"], **other["flagged_raw"]}


def verdicts(pz: Json, presidio: Json) -> Json:
    out: Json = {}
    for config in CONFIGS:
        res = pz["configs"][config]
        cells = res["detectors"]["cells"]
        out[f"{config}: detector recall"] = {
            k: {"value": cells[k]["all"]["recall"], "target": f">= {RECALL_TARGET:.0%}",
                "pass": (cells[k]["all"]["recall"] or 0) >= RECALL_TARGET} for k in DETECTOR_KINDS}
        known = _known_cells(res, "recall")
        out[f"{config}: known-subject recall"] = {
            k: {"value": known[k]["all"]["recall"], "target": "100%",
                "pass": (known[k]["all"]["recall"] or 0) >= KNOWN_TARGET} for k in KNOWN_KINDS}
        q = res["check"]["quarantined_batches"]
        out[f"{config}: quarantined batches"] = {"value": q, "of": res["check"]["negative_batches"],
                                                 "target": "0", "pass": q == 0}
        share = res["negatives"]["all"]["tokens_altered_share"] or 0.0
        out[f"{config}: negative tokens altered"] = {"value": share, "target": f"< {TOKENS_TARGET:.0%}",
                                                     "pass": share < TOKENS_TARGET}
    ratio = pz["throughput"]["default"]["mb_per_s"] / presidio["throughput"]["mb_per_s"]
    out["speed pseudozone/presidio (10 regions each)"] = {"value": ratio, "target": f">= {SPEED_TARGET:.0f}x",
                                                          "pass": ratio >= SPEED_TARGET}
    return out


def _matrix(title: str, cells: dict[str, dict[str, Json]], err: Callable[[str], None]) -> None:
    err(title)
    head = f"  {'kind':<7}" + "".join(f"{ENC_SHORT[e]:>9}" for e in ENCODINGS) + f"{'all':>14}"
    err(head)
    for kind, row in cells.items():
        a = row["all"]
        err(f"  {kind:<7}" + "".join(f"{_pct(row[e]['recall']):>9}" for e in ENCODINGS)
            + f"{_pct(a['recall']):>7} {a['found']:>3}/{a['total']:<3}")


def _group_misses(items: list[Json]) -> list[tuple[tuple[str, str, str], list[Json]]]:
    groups: dict[tuple[str, str, str], list[Json]] = defaultdict(list)
    for m in items:
        groups[(str(m["kind"]), str(m["encoding"]), str(m["form"]))].append(m)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _list_misses(label: str, items: list[Json], err: Callable[[str], None], limit: int = 40) -> None:
    grouped = _group_misses(items)
    legend = " (kind, encoding, form: count, sample indices, locales)" if items else ""
    err(f"{label}: {len(items)}{legend}")
    for (kind, enc, form), ms in grouped[:limit]:
        idx = ", ".join(str(m["index"]) for m in ms[:6]) + (", ..." if len(ms) > 6 else "")
        locs = ",".join(sorted({str(m["locale"]) for m in ms}))
        err(f"  {kind:<6} {enc:<14} {form:<18} {len(ms):>3}  [{idx}]  {locs}")
    if len(grouped) > limit:
        err(f"  ... {len(grouped) - limit} more groups in the JSON report")


def print_summary(report: Json, err: Callable[[str], None]) -> None:
    pz, pres, corpus = report["pseudozone"], report["presidio"], report["pseudozone"]["corpus"]
    err("")
    err(f"pseudozone detection benchmark: {corpus['texts']:,} texts ({corpus['positives']:,} positives, "
        f"{corpus['negatives']:,} hard negatives), {corpus['mb']:.3f} MB, seed {report['config']['seed']}, "
        f"{report['config']['per_locale']} per locale, {os.cpu_count()} CPU(s)")
    err("per locale (texts +pos/-neg, KB): " + "  ".join(
        f"{loc} {c['texts']} +{c['positives']}/-{c['negatives']} {c['bytes'] / 1e3:.0f}"
        for loc, c in corpus["per_locale"].items()))
    err("per kind: " + "  ".join(f"{k} {n}" for k, n in corpus["per_kind"].items()))
    for config in CONFIGS:
        res = pz["configs"][config]
        where = "tenant regions (the locale's country)" if config == "tenant" else "regions=DEFAULT_REGIONS"
        err("")
        err(f"== pseudozone, {where} ==")
        _matrix("detector recall % (scrub), per encoding:", res["detectors"]["cells"], err)
        if res["detectors"]["blind"]:
            err(f"  (not counted: {len(res['detectors']['blind'])} positives whose value the benchmark "
                f"cannot see in the raw text: {res['detectors']['blind'][:10]})")
        known = _known_cells(res, "recall")
        _matrix("known-subject recall % (scrub with known=KnownValues of the planted values):", known, err)
        kcheck = _known_cells(res, "check")
        _matrix("known-value check % (KnownValues.found_in on the raw texts):", kcheck, err)
        still_known = (len(res["known"]["names"]["check"]["flagged_after_scrub"])
                       + len(res["known"]["emails_phones"]["check"]["flagged_after_scrub"]))
        extra = {label: [a["index"] for a in res["known"][label]["negatives_altered_beyond_plain_scrub"]]
                 for label in ("names", "emails_phones")}
        err(f"  known values still found by found_in after the known scrub: {still_known}; negatives the "
            f"known scrub alters beyond the plain scrub's: names {len(extra['names'])} {extra['names'][:8]}, "
            f"emails+phones {len(extra['emails_phones'])} {extra['emails_phones'][:8]}")
        chk = res["check"]
        _matrix("independent check % (detect.any_of on the raw texts flags the positive):",
                chk["positives_flagged_raw"], err)
        err("  positives still flagged by any_of after scrubbing: "
            f"{len(chk['positives_flagged_after_scrub'])}  (misses above: {len(res['detectors']['misses'])})")
        err(f"  negatives flagged by any_of: raw {len(chk['negatives_flagged_raw'])}, after scrubbing "
            f"{len(chk['negatives_flagged_after_scrub'])}; quarantined batches (50 negatives, per locale): "
            f"{chk['quarantined_batches']}/{chk['negative_batches']}")
        _list_misses("detector misses", res["detectors"]["misses"], err)
        _list_misses("partial leaks (value gone, 7+ digits / local@ / a name word left)",
                     res["detectors"]["partial"], err)
        _list_misses("known-subject misses", res["known"]["names"]["recall"]["misses"]
                     + res["known"]["emails_phones"]["recall"]["misses"], err)
        _list_misses("positives still flagged after scrubbing", chk["positives_flagged_after_scrub"], err)
        _negatives_table(res["negatives"], err)
    err("")
    err(f"== presidio-analyzer {pres['version']} pattern recognizers (no NLP engine), phone regions: "
        f"{','.join(pres['phone_regions'])} ==")
    sub = pres["subset"]
    if sub["every"] > 1:
        err(f"  NOTE: run on every {sub['every']}th text only ({sub['texts']} of {sub['of']}): a full run "
            f"was estimated at {pres['pilot']['estimated_full_run_s']:.0f} s")
    _matrix("detector recall % (find + replace), per encoding:", pres["detectors"]["cells"], err)
    neg = pres["negatives"]["all"]
    err(f"  negatives altered: {neg['altered']}/{neg['samples']} texts ({_pct(neg['altered_share'])} %), "
        f"{_pct(neg['tokens_altered_share'], 2)} % of tokens")
    err("")
    err("throughput (best of runs; pseudozone's memo caches cleared before each run):")
    head = f"  {'':<38}{'best s':>8}{'texts/s':>10}{'MB/s':>8}   runs s"
    err(head)
    for label, tp in (("pseudozone scrub, tenant regions", pz["throughput"]["tenant"]),
                      ("pseudozone scrub, DEFAULT_REGIONS", pz["throughput"]["default"]),
                      ("presidio 5 recognizers + replace", pres["throughput"])):
        err(f"  {label:<38}{tp['best_s']:>8.3f}{tp['texts_per_s']:>10,.0f}{tp['mb_per_s']:>8.3f}   "
            + ", ".join(f"{w:.3f}" for w in tp["runs_s"]))
    d = pz["configs"]["default"]
    err(f"  (one pass of detect.any_of over the raw texts: {d['check_raw_s']:.3f} s with DEFAULT_REGIONS, "
        f"{pz['configs']['tenant']['check_raw_s']:.3f} s with tenant regions)")
    err("")
    err("targets:")
    for name, v in report["verdicts"].items():
        if "pass" in v:
            value = v["value"]
            shown = f"{value:.1f}x" if "speed" in name else (f"{value}/{v['of']}" if "of" in v
                                                            else f"{100 * value:.2f} %")
            err(f"  {name:<46}{shown:>12}   target {v['target']:<7} {_verdict(v['pass'])}")
            continue
        for kind, kv in v.items():
            err(f"  {name + ' ' + kind:<46}{_pct(kv['value'], 2) + ' %':>12}   target {kv['target']:<7} "
                f"{_verdict(kv['pass'])}")
    attempts = len(pz["network_attempts"]) + len(pres["network_attempts"])
    err(f"network connection attempts (refused): {attempts}")


def _negatives_table(neg: Json, err: Callable[[str], None]) -> None:
    err("hard negatives altered by the scrubber, per family:")
    err(f"  {'family':<15}{'texts':>6}{'altered':>8}{'%':>7}{'tokens':>8}{'altered':>8}{'%':>7}")
    for fam, r in [*neg["families"].items(), ("all", neg["all"])]:
        err(f"  {fam:<15}{r['samples']:>6}{r['altered']:>8}{_pct(r['altered_share']):>7}{r['tokens']:>8}"
            f"{r['tokens_altered']:>8}{_pct(r['tokens_altered_share'], 2):>7}")
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for a in neg["altered"]:
        put_in = ",".join(a["replaced"]) or "(changed)"
        groups[(str(a["family"]), str(a["encoding"]), put_in)].append(a["index"])
    if groups:
        err("  altered (family, encoding, tokens put in: count, sample indices):")
        for (fam, enc, toks), idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(map(str, idx[:6])) + (", ..." if len(idx) > 6 else "")
            err(f"    {fam:<15}{enc:<14}{toks:<14}{len(idx):>3}  [{shown}]")


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: 1-minute load average is {load_start[0]:.2f} before the benchmark; "
              "other work on this machine may skew the timings", file=sys.stderr, flush=True)
    extra = ["--workdir", str(workdir), "--seed", str(args.seed), "--per-locale", str(args.per_locale),
             "--repeat", str(args.repeat), "--presidio-budget", str(args.presidio_budget)]
    t0 = time.perf_counter()
    pz = bi.run_child("pseudozone", *extra, script=Path(__file__))
    print(f"pseudozone measured in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    presidio = bi.run_child("presidio", *extra, script=Path(__file__))
    print(f"presidio measured in {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    report: Json = {
        "config": {"seed": args.seed, "per_locale": args.per_locale, "repeat": args.repeat,
                   "batch": BATCH, "presidio_budget_s": args.presidio_budget},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pyarrow": pz.get("pyarrow"),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "pseudozone": pz, "presidio": presidio, "verdicts": verdicts(pz, presidio),
        "wall_s": time.perf_counter() - t0}
    if not args.keep:
        Path(pz["corpus_file"]).unlink(missing_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    out = workdir / RESULTS
    out.write_text(text, encoding="utf-8")
    print_summary(report, print)
    print(f"\nresults: {out}", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"corpus seed (default {SEED}; not the committed test sample's)")
    parser.add_argument("--per-locale", type=int, default=PER_LOCALE,
                        help=f"texts per locale, 10 locales (default {PER_LOCALE})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per scrubber; best wins (default 3)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help="where the corpus file and detection.json go (default bench/out)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated corpus (<workdir>/detection-corpus.jsonl)")
    parser.add_argument("--presidio-budget", type=float, default=PRESIDIO_BUDGET_S,
                        help="seconds Presidio's timed runs may take; beyond that, every k-th text "
                             "only (default 90)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.per_locale < 1 or args.repeat < 1 or args.presidio_budget <= 0:
        parser.error("--per-locale, --repeat and --presidio-budget must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return bi.run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    sys.exit(main())
