"""Great Expectations 1.x pieces: quiet setup, a safe result format, custom expectations.

The custom expectations compute with Arrow (RE2 regexes, hash sets), not Python per
row.  Large value sets (subjects that must be absent or present, a batch's known PII
digests) are not put in an expectation's configuration, which GX copies into every
result: they are registered in this process under an opaque reference (``registered``)
and the expectation names the reference only.  Nothing registered outlives the task.

Results are always requested with ``SAFE_RESULT_FORMAT``: counts and row positions,
``exclude_unexpected_values`` so that GX does not copy the values it found into the
results (its default echoes them, a known leak of PII into validation stores and Data
Docs).  ``include_unexpected_rows`` is never used: that flag does not honour the
exclusion.

Every custom expectation says in words what it checks (``_Worded``: GX's legacy
prescriptive renderer, which Data Docs use, and the atomic summary, from one sentence),
naming columns, PII forms, patterns and the meaning of a registered set, never a value.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logging.getLogger("great_expectations").setLevel(logging.WARNING)  # before the import

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.execution_engine import PandasExecutionEngine, pandas_execution_engine  # noqa: E402
from great_expectations.expectations.expectation import (  # noqa: E402
    ColumnMapExpectation,
    ColumnPairMapExpectation,
)

# from the defining modules: a function and its module share a name there, and importing
# through the package makes type checkers take one for the other
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (  # noqa: E402
    column_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.column_map_metric_provider import (  # noqa: E402
    ColumnMapMetricProvider,
)
from great_expectations.expectations.metrics.map_metric_provider.column_pair_condition_partial import (  # noqa: E402
    column_pair_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.column_pair_map_metric_provider import (  # noqa: E402
    ColumnPairMapMetricProvider,
)
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent  # noqa: E402
from great_expectations.render.renderer.renderer import renderer  # noqa: E402
from great_expectations.render.renderer_configuration import (  # noqa: E402
    RendererConfiguration,
    RendererValueType,
)

from pseudozone.pii import scan  # noqa: E402
from pseudozone.validation import detect  # noqa: E402
from pseudozone.validation.known import KnownValues  # noqa: E402

logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

# GX fingerprints every DataFrame smaller than HASH_THRESHOLD bytes by hashing all of its
# values, only to label the batch in the results' metadata.  On a zone's files that was
# three quarters of a validation run's time (pandas hashes Arrow-backed columns row by
# row).  No fingerprint is needed here: the report names the files it validated.
pandas_execution_engine.HASH_THRESHOLD = 0

SAFE_RESULT_FORMAT: dict[str, Any] = {"result_format": "COMPLETE", "exclude_unexpected_values": True}
ERROR_PREFIX = "pseudozone metric error: "


_REGISTRY: dict[str, Any] = {}
_refs = itertools.count(1)


@contextmanager
def registered(value: Any, ref: str | None = None) -> Iterator[str]:
    """Make ``value`` (an Arrow value set or ``KnownValues``) known to expectations by a reference.

    A fixed ``ref`` lets a suite built once check a new value set each time.
    """
    ref = ref or f"ref-{next(_refs)}"
    if ref in _REGISTRY:
        raise RuntimeError(f"{ref!r} is already registered")
    _REGISTRY[ref] = value
    try:
        yield ref
    finally:
        del _REGISTRY[ref]


def _lookup(ref: str) -> Any:
    try:
        return _REGISTRY[ref]
    except KeyError:
        raise LookupError(f"no value set is registered as {ref!r} in this process") from None


def _arrow(column: pd.Series) -> pa.Array:
    # a Series backed by a chunked Arrow array (several files validated together) comes
    # back chunked: one contiguous array for the kernels below
    # back chunked: one contiguous array for the kernels below.  Dictionary-encoded
    # columns stay encoded: the metrics work on their distinct values.
    arr = pa.array(column, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def _typed(arr: pa.Array) -> pa.Array:
    """A column of nulls only (no type of its own, as pandas hands it over) as strings."""
    return arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr


def _safe(fn: Callable[..., pd.Series]) -> Callable[..., pd.Series]:
    """Re-raise a metric's error by type only: GX stores the message in its results, and a
    library's message may quote a value."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> pd.Series:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised without its text
            raise RuntimeError(f"{ERROR_PREFIX}{type(exc).__name__} in {fn.__qualname__}") from None

    return wrapper


def _series(mask: pa.Array | np.ndarray, column: pd.Series) -> pd.Series:
    values = mask if isinstance(mask, np.ndarray) else mask.to_numpy(zero_copy_only=False)
    return pd.Series(values, index=column.index)


# -- words for Data Docs ------------------------------------------------------------------------

KIND_NAMES = {"email": "email address", "phone": "phone number", "ip": "IP address",
              "card": "card number", "iban": "IBAN"}


def _listed(items: Any) -> str:
    names = [str(i) for i in (items or [])]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


class _Worded:
    """A custom expectation's sentence in Data Docs (what it checks, in words).

    ``_words`` gives a template (``$name`` placeholders) and its params, all strings: the
    legacy prescriptive renderer (Data Docs' suite and validation pages) and the atomic
    summary (``_prescriptive_template``, used by GX's own summary renderer) share it.  A
    validation page lists the expectations under their column, so the column is left out of
    the sentence there (``include_column_name`` false).
    """

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    @classmethod
    def _sentence(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        template, params = cls._words(kwargs, column)
        params = {k: v for k, v in params.items() if f"${k}" in template}
        mostly = kwargs.get("mostly")
        if isinstance(mostly, int | float) and not isinstance(mostly, bool) and mostly < 1:
            template += " (for at least $mostly_pct % of the rows)"
            params["mostly_pct"] = f"{mostly * 100:g}"
        return template, params

    @classmethod
    def _prescriptive_template(cls, renderer_configuration: RendererConfiguration) -> RendererConfiguration:
        template, params = cls._sentence(dict(renderer_configuration.kwargs or {}),
                                         renderer_configuration.include_column_name)
        for name, value in params.items():
            renderer_configuration.add_param(name=name, param_type=RendererValueType.STRING, value=value)
        renderer_configuration.template_str = template
        return renderer_configuration

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None,
                               runtime_configuration: dict[str, Any] | None = None,
                               **kwargs: Any) -> list[RenderedStringTemplateContent]:
        # GX calls this with a configuration, a result, or neither (its docstring): narrow here
        config = configuration if configuration is not None else getattr(result, "expectation_config", None)
        runtime = runtime_configuration or {}
        template, params = cls._sentence(dict(getattr(config, "kwargs", None) or {}),
                                         runtime.get("include_column_name") is not False)
        return [RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": template, "params": params, "styling": runtime.get("styling")})]


def _column(kwargs: dict[str, Any], column: bool, key: str = "column") -> tuple[str, dict[str, str]]:
    """' of column $column' (or nothing, under the column's own heading) and its param."""
    return (f" of column ${key}", {key: str(kwargs.get(key))}) if column else ("", {})


class ColumnValuesFreeOfPii(ColumnMapMetricProvider):
    """Row is True when the value holds no PII of the given forms (confirming detectors on decoded text)."""

    condition_metric_name = "column_values.free_of_pii"
    filter_column_isnull = False  # nulls pass, decided by the metric itself (no row filtering)
    condition_value_keys = ("kinds", "regions", "skip_pattern", "scan_pattern", "evidence_ref")

    @column_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column: pd.Series, kinds: list[str], regions: list[str], skip_pattern: str | None,
                scan_pattern: str | None = None, evidence_ref: str | None = None, **kwargs: Any) -> pd.Series:
        found = _evidence(evidence_ref, column)
        shared = None
        if found is not None and set(found.kinds) == set(kinds) and found.regions == tuple(regions):
            shared = found.pii, found.values
        clean = _clean(_arrow(column), skip_pattern, lambda a: detect.any_of(a, kinds, regions), shared,
                       scan_pattern)
        return _series(clean, column)


class ExpectColumnValuesToBeFreeOfPii(_Worded, ColumnMapExpectation):
    """Expect no value to hold an email, phone, IP address, card number or IBAN (or the given forms).

    Each form is confirmed by its own rules (libphonenumber under ``regions``, mod-97,
    Luhn and issuer ranges, ``ipaddress``) on the text decoded as a reader sees it.
    """

    kinds: list[str] = list(detect.KINDS)  # noqa: RUF012 - a pydantic field, copied per instance
    regions: list[str] = list(detect.DEFAULT_REGIONS)  # noqa: RUF012 - a pydantic field
    skip_pattern: str | None = None  # values matching it whole (pure ids) need no scan
    scan_pattern: str | None = None  # ...unless they match this (an IBAN can be all hex)
    evidence_ref: str | None = None  # registered scan evidence (per column) to reuse, if any
    map_metric = "column_values.free_of_pii"
    success_keys = ("kinds", "regions", "skip_pattern", "scan_pattern", "evidence_ref", "mostly")

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        of, params = _column(kwargs, column)
        kinds = kwargs.get("kinds") or detect.KINDS
        template = (f"No value{of} matches any PII form ($kinds), each confirmed by its own rules on the"
                    " text as a reader sees it (URL, JSON and HTML decoded, NFKC); phone numbers as dialled"
                    " in $regions.")
        if kwargs.get("skip_pattern"):
            template += " Pure ids (UUID, hex, ULID) are not scanned unless they could be an IBAN."
        return template, {**params, "kinds": _listed(KIND_NAMES.get(k, k) for k in kinds),
                          "regions": ", ".join(kwargs.get("regions") or detect.DEFAULT_REGIONS)}


class ColumnValuesInRegisteredSet(ColumnMapMetricProvider):
    """Row is True when the value is (``absent``: is not) in the registered value set; nulls pass."""

    condition_metric_name = "column_values.in_registered_set"
    filter_column_isnull = False  # nulls pass, decided by the metric itself (no row filtering)
    condition_value_keys = ("set_ref", "absent")

    @column_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column: pd.Series, set_ref: str, absent: bool, **kwargs: Any) -> pd.Series:
        arr = _typed(_arrow(column))
        value_set = _lookup(set_ref)
        member = detect.per_distinct(arr, lambda distinct: pc.is_in(distinct, value_set=value_set))
        ok = pc.invert(member) if absent else member
        return _series(pc.or_(ok, arr.is_null()), column)


class ExpectColumnValuesToBeInRegisteredSet(_Worded, ColumnMapExpectation):
    """Expect every value to be in a value set registered in this process (by reference)."""

    set_ref: str
    absent: bool = False
    set_name: str | None = None  # what the set is, in words (Data Docs); never its members
    map_metric = "column_values.in_registered_set"
    success_keys = ("set_ref", "absent", "mostly")

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        of, params = _column(kwargs, column)
        params |= {"set_name": str(kwargs.get("set_name") or "values of a registered set"),
                   "set_ref": str(kwargs.get("set_ref"))}
        where = " (a set registered for this run as $set_ref; its members are not shown)"
        if kwargs.get("absent"):
            return f"No value{of} is one of the $set_name{where}.", params
        return f"Every value{of} is one of the $set_name{where}; nulls pass.", params


class ColumnPairOwnedByRegisteredSets(ColumnPairMapMetricProvider):
    """Row is True when its subject (column A) is in one registered set, or it has no subject
    and its cookie (column B) is in another: a logged-out row that follows its subjects."""

    condition_metric_name = "column_pair_values.owned_by_registered_sets"
    condition_domain_keys = ("batch_id", "table", "column_A", "column_B", "row_condition",
                             "condition_parser", "ignore_row_if")
    condition_value_keys = ("subject_ref", "cookie_ref")

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, subject_ref: str,
                cookie_ref: str, **kwargs: Any) -> pd.Series:
        subjects, cookies = _typed(_arrow(column_A)), _typed(_arrow(column_B))
        owned = pc.fill_null(detect.per_distinct(
            subjects, lambda distinct: pc.is_in(distinct, value_set=_lookup(subject_ref))), False)
        followed = pc.and_(subjects.is_null(), pc.fill_null(detect.per_distinct(
            cookies, lambda distinct: pc.is_in(distinct, value_set=_lookup(cookie_ref))), False))
        return _series(pc.or_(owned, followed), column_A)


class ExpectRowsToBelongToRegisteredOwners(_Worded, ColumnPairMapExpectation):
    """Expect every row to be a registered subject's, or a logged-out row of a registered cookie.

    ``column_A`` is the subject column, ``column_B`` the cookie column; a row with neither is
    unexpected (``ignore_row_if="neither"``).
    """

    subject_ref: str
    cookie_ref: str
    subject_set_name: str | None = None  # what the sets are, in words (Data Docs)
    cookie_set_name: str | None = None
    ignore_row_if: str = "neither"
    # as GX's own pair expectations declare it: without ignore_row_if in the domain, the
    # engine receives None and rejects it
    domain_keys = ("batch_id", "column_A", "column_B", "row_condition",  # type: ignore[assignment]
                   "condition_parser", "ignore_row_if")
    map_metric = "column_pair_values.owned_by_registered_sets"
    success_keys = ("subject_ref", "cookie_ref", "mostly")

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        return ("Every row is of one of the $subject_set_name (column $column_A), or is a logged-out row"
                " (no $column_A) of one of the $cookie_set_name (column $column_B); both sets are registered"
                " for this run as $subject_ref and $cookie_ref, their members are not shown."), {
            "column_A": str(kwargs.get("column_A")), "column_B": str(kwargs.get("column_B")),
            "subject_set_name": str(kwargs.get("subject_set_name") or "registered subjects"),
            "cookie_set_name": str(kwargs.get("cookie_set_name") or "registered cookies"),
            "subject_ref": str(kwargs.get("subject_ref")), "cookie_ref": str(kwargs.get("cookie_ref"))}


class ColumnValuesFreeOfKnownValues(ColumnMapMetricProvider):
    """Row is True when the text holds none of a registered ``KnownValues``' values."""

    condition_metric_name = "column_values.free_of_known_values"
    filter_column_isnull = False  # nulls pass, decided by the metric itself (no row filtering)
    condition_value_keys = ("known_ref", "skip_pattern", "scan_pattern", "evidence_ref")

    @column_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column: pd.Series, known_ref: str, skip_pattern: str | None,
                scan_pattern: str | None = None, evidence_ref: str | None = None, **kwargs: Any) -> pd.Series:
        known: KnownValues = _lookup(known_ref)
        found = _evidence(evidence_ref, column)
        shared = None
        if found is not None and found.known is known and found.known_hit is not None:
            shared = found.known_hit, found.values
        return _series(_clean(_arrow(column), skip_pattern, known.found_in, shared, scan_pattern), column)


class ExpectColumnValuesToBeFreeOfKnownValues(_Worded, ColumnMapExpectation):
    """Expect no text to contain a known value of the tenant's subjects (keyed-hash comparison)."""

    known_ref: str
    skip_pattern: str | None = None  # values matching it whole (pure ids) need no search
    scan_pattern: str | None = None  # ...unless they match this
    evidence_ref: str | None = None  # registered scan evidence (per column) to reuse, if any
    map_metric = "column_values.free_of_known_values"
    success_keys = ("known_ref", "skip_pattern", "scan_pattern", "evidence_ref", "mostly")

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        of, params = _column(kwargs, column)
        template = (f"No text{of} contains a known value of the tenant's subjects (their identifiers and PII,"
                    " compared as keyed hashes of word sequences under a one-off key; registered for this run"
                    " as $known_ref, no value is kept).")
        if kwargs.get("skip_pattern"):
            template += " Pure ids (UUID, hex, ULID) are not searched unless they could be an IBAN."
        return template, {**params, "known_ref": str(kwargs.get("known_ref"))}


def _evidence(ref: str | None, column: pd.Series) -> scan.Evidence | None:
    """The scan evidence registered under ``ref`` for this column, if any."""
    if not ref:
        return None
    shared = _REGISTRY.get(ref) or {}
    found = shared.get(column.name)
    return found if isinstance(found, scan.Evidence) else None


def _clean(arr: pa.Array, skip_pattern: str | None, found: Callable[[pa.Array], pa.Array],
           shared: tuple[np.ndarray, pa.Array] | None = None, scan_pattern: str | None = None) -> np.ndarray:
    """True where a value passes: ``found`` (PII, a known value) is False, or it matches
    ``skip_pattern`` whole (a pure id) and not ``scan_pattern`` (a German IBAN is hex too).

    ``shared`` is scan evidence (``found`` per value, and the values): it stands for the rows
    whose value is still the one scanned (``scan.reuse``); the others are checked here.
    """
    def hits(values: pa.Array) -> np.ndarray:
        return np.asarray(found(values).to_numpy(zero_copy_only=False), dtype=bool)

    if not skip_pattern:
        return ~hits(arr) if shared is None else ~scan.reuse(arr, shared[0], shared[1], hits)
    plain = arr.cast(arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr
    def skip(distinct: pa.Array) -> pa.Array:
        pure = pc.match_substring_regex(distinct, skip_pattern)
        if not scan_pattern:
            return pure
        return pc.and_not(pure, pc.match_substring_regex(distinct, scan_pattern))

    skipped = np.asarray(pc.fill_null(detect.per_distinct(plain, skip), False).to_numpy(zero_copy_only=False))
    if shared is not None:
        return ~scan.reuse(plain, shared[0], shared[1], hits) | skipped
    if not skipped.any():
        return ~hits(arr)
    result = np.ones(len(plain), dtype=bool)
    rest = np.flatnonzero(~skipped)
    if len(rest):
        result[rest] = ~hits(plain.take(pa.array(rest)))
    return result


class ColumnValuesCiphertext(ColumnMapMetricProvider):
    """Row is True when the value is binary, long enough for AES-GCM, and does not read as text."""

    condition_metric_name = "column_values.ciphertext"
    filter_column_isnull = False  # nulls pass, decided by the metric itself (no row filtering)
    condition_value_keys = ()

    @column_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        return _series(detect.ciphertext_like(_arrow(column)), column)


class ExpectColumnValuesToBeCiphertext(_Worded, ColumnMapExpectation):
    """Expect every value of a PII-zone column to be AES-GCM ciphertext, never plaintext."""

    map_metric = "column_values.ciphertext"
    success_keys = ("mostly",)

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        of, params = _column(kwargs, column)
        return (f"Every value{of} is AES-GCM ciphertext: binary, long enough for nonce and tag, and not"
                " readable as text; nulls pass."), params


class ColumnValuesMatchPattern(ColumnMapMetricProvider):
    """Row is True when the value matches the RE2 pattern (Arrow; nulls pass)."""

    condition_metric_name = "column_values.match_pattern"
    filter_column_isnull = False  # nulls pass, decided by the metric itself (no row filtering)
    condition_value_keys = ("pattern",)

    @column_condition_partial(engine=PandasExecutionEngine)
    @_safe
    def _pandas(cls, column: pd.Series, pattern: str, **kwargs: Any) -> pd.Series:
        arr = _arrow(column)
        value_type = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
        if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
            return _series(np.asarray(arr.is_null().to_numpy(zero_copy_only=False)), column)
        matched = detect.per_distinct(arr, lambda distinct: pc.match_substring_regex(distinct, pattern))
        return _series(pc.or_(matched, arr.is_null()), column)


class ExpectColumnValuesToMatchPattern(_Worded, ColumnMapExpectation):
    """Expect every value to match an RE2 pattern; a non-string column fails every non-null row."""

    pattern: str
    pattern_name: str | None = None  # what the pattern admits, in words (Data Docs)
    map_metric = "column_values.match_pattern"
    success_keys = ("pattern", "mostly")

    @classmethod
    def _words(cls, kwargs: dict[str, Any], column: bool) -> tuple[str, dict[str, str]]:
        of, params = _column(kwargs, column)
        params["pattern"] = str(kwargs.get("pattern"))
        if kwargs.get("pattern_name"):
            return (f"Every value{of} is $pattern_name, by the RE2 pattern $pattern; nulls pass.",
                    {**params, "pattern_name": str(kwargs["pattern_name"])})
        return f"Every value{of} matches the RE2 pattern $pattern; nulls pass.", params


def context() -> Any:
    """An ephemeral GX context without progress bars (this module builds no Data Docs)."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx
