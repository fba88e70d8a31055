"""Confirming PII detectors: a candidate pattern, then a check that the field's own rules agree.

One small class per kind of PII behind one interface (``Detector.find``), listed
once in ``DETECTORS``.  Each runs on *decoded* text (``pseudozone.pii.normalize``)
and returns the spans it confirmed:

- **email**: local part (plus-addressing, Unicode), ``@`` or an obfuscated ``(at)``,
  ``[at]``, ``at … dot``; a domain with a letter TLD; not an image name (``icon@2x.png``);
- **phone**: libphonenumber (``phonenumbers``) on a phone-shaped candidate, under the
  regions that apply (international ``+``/``00`` forms under their own country code);
  extensions, the ``(0)`` trunk prefix, parentheses, dots, slashes and spaces;
  dates, ISBNs and bare digit runs (order numbers, epoch timestamps) are not phones;
- **ip**: IPv4 and every IPv6 form (compressed, ``::ffff:a.b.c.d``, zone ids,
  ``[addr]:port``), confirmed by ``ipaddress``;
- **card**: Luhn (``stdnum.luhn``) plus the issuer's prefix and length, with spaces,
  dashes or dots between groups;
- **iban**: the ISO 13616 mod-97 checksum and the country's length (``stdnum.iban``).

These detectors are what the publish gate and the nightly run check with; the
scrubber uses them to find what it replaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from functools import lru_cache

import phonenumbers
from stdnum import iban as std_iban
from stdnum import isbn as std_isbn
from stdnum import luhn as std_luhn

from pseudozone.errors import ConfigError

Span = tuple[int, int]
KINDS = ("email", "phone", "ip", "card", "iban")

# regions whose national phone formats are read when nothing narrower is known
DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "ES", "BR", "JP", "IN", "CN", "RU")
REGIONS_ENV = "PSEUDOZONE_PHONE_REGIONS"


def configured_regions() -> tuple[str, ...]:
    """The regions read for every tenant: ``PSEUDOZONE_PHONE_REGIONS`` (comma-separated ISO codes)."""
    raw = os.environ.get(REGIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_REGIONS
    regions = tuple(dict.fromkeys(r.strip().upper() for r in raw.split(",") if r.strip()))
    unknown = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
    if unknown or not regions:
        raise ConfigError(f"{REGIONS_ENV} holds {unknown or 'nothing'}; expected ISO 3166 region codes"
                          " that libphonenumber knows, such as DE,FR,US")
    return regions


class Detector(ABC):
    kind: str

    @abstractmethod
    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        """Confirmed spans of this kind in decoded ``text``."""


# -- email ------------------------------------------------------------------------------------

# word characters, with the combining marks of Indic and Thai scripts and Latin diacritics
# (Python's \w leaves out the vowel signs of मालिक@परीक्षा.भारत)
_MARKS = "\u0300-\u036f\u0900-\u0dff\u0e00-\u0e7f"
_LOCAL = rf"_*[^\W_](?:[\w{_MARKS}.+\-]{{0,63}}[\w{_MARKS}+\-])?"
_LABEL = rf"[^\W_](?:[\w{_MARKS}\-]{{0,61}}(?:[^\W_]|[{_MARKS}]))?"
_TLD = rf"(?:(?:[^\W\d_]|[{_MARKS}]){{2,24}}|xn--[a-z0-9\-]{{2,59}})"
_AT = r"(?:@|\s?[\(\[\{]\s?at\s?[\)\]\}]\s?)"
_DOT = r"(?:\.|\s?[\(\[\{]\s?dot\s?[\)\]\}]\s?)"
_EMAIL = re.compile(rf"(?<![\w{_MARKS}.+\-]){_LOCAL}{_AT}{_LABEL}(?:{_DOT}{_LABEL})*{_DOT}{_TLD}"
                    # glued to a '_' in a log key ('…@example.org_2024') it is still an email
                    rf"(?![^\W_]|[{_MARKS}\-]|\.[^\W_])", re.IGNORECASE)
_EMAIL_WORDS = re.compile(
    rf"(?<![\w.+\-]){_LOCAL}\s+at\s+{_LABEL}(?:\s+dot\s+{_LABEL})*\s+dot\s+{_TLD}(?![\w\-])", re.IGNORECASE)
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "bmp", "css", "js", "mjs",
                        "json", "html", "htm", "xml", "txt", "pdf", "zip", "gz", "mp4", "webm", "woff",
                        "woff2"})
_RETINA = re.compile(r"^\d(?:\.\d)?x$", re.IGNORECASE)


# git@github.com:acme/repo.git is a repository's address, not a person's
_SCP_REMOTE = re.compile(r"git@[\w.\-]+:[\w~]", re.IGNORECASE)


class EmailDetector(Detector):
    kind = "email"

    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        for pattern in (_EMAIL, _EMAIL_WORDS):
            for match in pattern.finditer(text):
                if self._plausible(match.group()) and not _SCP_REMOTE.match(text, match.start()):
                    yield match.span()

    @staticmethod
    def _plausible(found: str) -> bool:
        parts = re.split(r"\s*(?:@|[\(\[\{]\s?at\s?[\)\]\}]|\sat\s)\s*", found, maxsplit=1,
                         flags=re.IGNORECASE)
        if len(parts) != 2:
            return False
        local, domain = parts
        labels = re.split(r"\s*(?:\.|[\(\[\{]\s?dot\s?[\)\]\}]|\sdot\s)\s*", domain, flags=re.IGNORECASE)
        if ".." in local or len(local) > 64 or len(domain) > 253:
            return False
        return not (labels[-1].lower() in _FILE_TLDS or _RETINA.match(labels[0]))


# -- phone ------------------------------------------------------------------------------------

_SEP = r"[ \t.\-/\u00a0]"
# what may start a phone right after a comma (a list, a CSV field): an international form, an
# area code in parentheses, a trunk form grouped or whole ('0-4392-1805'), a whole number after
# '00', an area code and a slash ('58/929-0075') or dashed groups (806-222-1405)
_AFTER_COMMA = (r"\+|\(|0\d{0,5}[ .\-/]\d|0\d{8,11}(?!\d)|00[1-9]\d{6,13}(?!\d)|\d{1,4}/\d{3,4}[ \-]\d{3,4}"
                r"|\d{2,4}-\d{3}-\d{3,4}")
_PHONE = re.compile(
    # not glued to an id, an amount, another number or a time (CJK text has no spaces: only
    # Latin letters and digits count as glue)
    # a list joins phones with commas: '…5678,+49 30 8765…', '…4567,030 765…' (after a comma only
    # the forms of _AFTER_COMMA: '1,234,567' and '5,12345678' are numbers)
    r"(?:(?<=,)(?=" + _AFTER_COMMA + r")|(?<![A-Za-z0-9_@.\-#$€£¥+,]))(?<!\d:)"
    r"(?P<body>"
    # the country code: +49, 0049, and in parentheses, (+30) or +(370)
    r"(?P<intl>(?:\(\s?\+\s?\d{1,3}\s?\)|\+\s?\(\s?\d{1,3}\s?\)|(?:\+|\b00)" + _SEP + r"?\d{1,3})"
    + _SEP + r"{0,2}(?:\(\s?0\s?\)" + _SEP + r"{0,2})?)?"
    r"(?:\(\s?\d{1,5}\s?\)" + _SEP + r"{0,2})?"
    r"\d{1,15}(?:" + _SEP + r"{1,3}\(?\d{1,10}\)?){0,6}"
    r")"
    r"(?P<ext>\s{0,2}(?:x|ext\.?|extension|доб\.?|#)\s{0,2}\d{1,6})?"
    # (a comma then a digit is checked in ``find``: the next field of a list, or decimals)
    r"(?![A-Za-z0-9_@]|[.\-]\d|:\d)",
    re.IGNORECASE)
# an IBAN's or a creditor reference's (RF18 …) head before the groups of a candidate
_IBAN_HEAD = re.compile(r"(?:^|[^A-Za-z0-9])[A-Z]{2}\d{2}(?:[ .][A-Z0-9]{4})*[ .]$")
# a comma then the decimals of an amount, not the next field of a list
_DECIMALS = re.compile(r",\d{1,3}(?![\d\-/.:])")
_AMOUNT = re.compile(r"[1-9][\d .\u00a0]*")
_INTERNATIONAL = re.compile(r"\(?\s?\+|00")
# a standard number named just before: ISSN 0317-8471, DOI 10.1000/182, ISBN …
_NUMBER_NAME = re.compile(r"\b(?:isbn|issn|doi|ean|gtin|upc)\W{0,3}$", re.IGNORECASE)
# a year, then a dash, a slash or a dot: a reference or a build (2024-000123-45, 2023.10.23.5758)
_YEAR_REF = re.compile(r"^(?:19|20)\d{2}[\-/.]")
_ISBN_X = re.compile(r"[\- ]?[Xx](?![A-Za-z0-9])")
_ISBN10 = re.compile(r"^\d{1,5}-\d{1,7}-\d{1,6}-[\dX]$")
_DATE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")
_FORMATTED = re.compile(r"[ \t.\-/()\u00a0]")
_CONTEXT = re.compile(
    # a Latin word starts at a word boundary ('Hotel', 'recall' and 'pastel' are no phone words);
    # CJK text glues words without a space
    r"(?<![A-Za-z])"
    r"(?:phone|tel|tlf|mobile|mobil|cell|fax|whatsapp|handy|telefon|telefone|tel[eé]fono|t[eé]l[eé]phone|"
    r"ring\s+(?:mig|meg|os|oss|til)|"
    r"m[oó]vil|portable|celular|contato|call|sms|電話|携帯|电话|手机|телефон|тел|फ़ोन|फोन|"
    r"τηλ|κινητ|טלפון|נייד|전화|휴대폰|핸드폰|โทร|มือถือ|هاتف|جوال|"
    # 'number' alone is an order or reference number: only a *new* or *my* number is a phone
    r"नया नंबर|новый номер|мой номер телефона|新号码|新しい番号|"
    r"(?:my|new|your|our|mein|meine|neue|mon|nouveau|mi|nuevo|meu|novo)\s+(?:new\s+)?"
    r"(?:number|nummer|num[eé]ro|n[uú]mero))"
    # 'call me at', 'text us on' (not 'call started at', a log line's time)
    r"(?:\W{1,2}(?:me|us)\W{1,2}(?:at|on))?"
    r"\W{0,3}\w{0,12}\W{0,4}$",
    re.IGNORECASE)
_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")
# four two-digit numbers (scores, a draw, sizes): a Danish or Norwegian phone only with evidence
_PAIRS = re.compile(r"^\d{2}(?:[ .\-]\d{2}){3}$")
# an amount with a sign: thousands grouped by one separator ('+1 234 567', '+772.625.870')
_SIGNED_THOUSANDS = re.compile(r"^\+\s?[1-9]\d{0,2}(?P<sep>[ .\u00a0])\d{3}(?:(?P=sep)\d{3})*$")
_CURRENCY = r"(?:[€$£¥₹₽₩₺₪฿]|(?:EUR|USD|GBP|CHF|DKK|NOK|SEK|PLN|CZK|HUF|JPY|CNY|INR|RUB|BRL|kr|Kč|zł|Ft)\b)"
# after an amount's decimals: not the next field of a list
_AMOUNT_END = re.compile(r",\d{1,2}(?![\d,;\-/.:])")
_CURRENCY_AFTER = re.compile(r"(?:,\d{1,2})?\s?" + _CURRENCY)
_CURRENCY_BEFORE = re.compile(_CURRENCY + r"\s?$")
_ROUND_TAIL = re.compile(r"[ .\u00a0]000$")
_MOBILE_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
_HAN = re.compile(r"[\u3400-\u9fff\uff1a]")
_TOKEN = re.compile(r"\[(?:email|phone|ip|card|iban|pii)\]")
_POSSIBLE = (phonenumbers.ValidationResult.IS_POSSIBLE,)


@lru_cache(maxsize=65536)
def _possible(number: str, region: str | None) -> bool:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number_with_reason(parsed) in _POSSIBLE


@lru_cache(maxsize=65536)
def _valid(number: str, region: str | None) -> bool:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


@lru_cache(maxsize=65536)
def _mobile(number: str, region: str) -> bool:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in _MOBILE_TYPES


def _phone_word_before(text: str, start: int) -> bool:
    """A phone word just before ``start`` ('tel', 'mobil', 'ring mig på', '電話'), not our own tokens
    ('[phone]?ts=1793973303' is a timestamp)."""
    return bool(_CONTEXT.search(_TOKEN.sub(" ", text[max(0, start - 28):start])))


@lru_cache(maxsize=4096)
def calling_code_of(digits: str) -> str | None:
    """The country calling code an international number's digits start with (codes are prefix-free)."""
    for width in (1, 2, 3):
        code = digits[:width]
        if len(code) == width and code.isdigit() and int(code) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return code
    return None


def _country_code(number: str) -> bool:
    return calling_code_of(number[1:]) is not None


@lru_cache(maxsize=512)
def _no_trunk_prefix(region: str) -> bool:
    """Whether national numbers of ``region`` are dialled without a trunk prefix (DK, NO, ES)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return meta is not None and not meta.national_prefix


class PhoneDetector(Detector):
    kind = "phone"

    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        for match in _PHONE.finditer(text):
            body = match.group("body").rstrip()
            start = match.start()
            if self._not_a_phone(body, text, start, regions):
                continue
            if not match.group("intl") and _DECIMALS.match(text, match.end()) and _AMOUNT.fullmatch(body):
                continue  # '123 456 789,05' (a trunk form or an international one: the next field)
            if self._signed_amount(body, text, start, match.end()):
                continue  # '+772 625 870,41 €', 'Saldo: +1 234 567,89 EUR'
            # an extension says "phone"; but '#' and digits after a bare number is as often an
            # order or a ticket ('1607285508088 #656396'): only after a phone word
            ext = match.group("ext")
            extension = ext is not None and (ext.lstrip()[:1] != "#" or _phone_word_before(text, start))
            if self._confirm(body, match.group("intl"), text, start, regions, extension=extension):
                yield start, match.end()
                continue
            # the candidate may have taken a following number ('… 0412 302' in a log line):
            # the phone is the longest run of its leading groups that checks out
            ends = [m.start() for m in re.finditer(r"\s+\d+\)?", body)]
            for end in reversed(ends):
                if not self._not_a_phone(body[:end], text, start, regions) and \
                        self._confirm(body[:end], match.group("intl"), text, start, regions, extension=False):
                    yield start, start + end
                    break

    @staticmethod
    def _signed_amount(body: str, text: str, start: int, end: int) -> bool:
        """A '+' before thousands (a balance, a change), not a country code: the groups are
        thousands and decimals or a currency follow (or a currency comes before); a comma and two
        digits then another field (',12,x') is a CSV quantity after a phone, and a phone word
        before keeps it a phone."""
        if not _SIGNED_THOUSANDS.match(body) or _phone_word_before(text, start):
            return False
        return bool(_AMOUNT_END.match(text, end) or _CURRENCY_AFTER.match(text, end)
                    or _CURRENCY_BEFORE.search(text[max(0, start - 6):start]))

    @staticmethod
    def _not_a_phone(body: str, text: str, start: int, regions: tuple[str, ...]) -> bool:
        """Shapes that are something else: dates, ISBNs, versions, card or account groups."""
        digits = re.sub(r"\D", "", body)
        if _DATE.match(body):
            return True
        if len(digits) in (10, 13) and "-" in body and std_isbn.is_valid(digits) and \
                (len(digits) == 13 or _ISBN10.match(body) or re.search(r"isbn\W{0,3}$", text[:start], re.I)):
            return True
        if len(digits) == 9 and "-" in body and _ISBN_X.match(text, start + len(body)) and \
                std_isbn.is_valid(digits + "X"):
            return True  # an ISBN-10 whose check digit is X (0-445-34282-X)
        groups = re.findall(r"\d+", body)
        international = bool(_INTERNATIONAL.match(body))
        if "." in body and not international and (
                re.search(r"\s", body) or any(len(g) < 2 for g in groups[1:]) or len(groups) == 2
                or (len(groups[0]) <= 2 and not groups[0].startswith("0"))):
            # version strings (1.24.3 10.4.12 13.28.201.6570) and decimals (48.858844), not
            # 555.123.4567 or 01.23.45.67.89
            return True
        named = _NUMBER_NAME.search(text[max(0, start - 8):start])
        if not international and (_YEAR_REF.match(body) or named):
            return True
        if not international and len(groups) >= 3 and all(len(g) == 3 for g in groups[1:]) and \
                "000" in groups[1:] and re.fullmatch(r"[\d ]+", body) and not body.startswith("0") and \
                (_ROUND_TAIL.search(body) or not any(_mobile(body, r) for r in regions)) and \
                not _phone_word_before(text, start):
            # a round amount with space-separated thousands (125 000 000, 1 000 000); a trunk form,
            # a phone word or a mobile number of a region (612 000 345 in Spain) is a phone
            return True
        # groups of four: a card or an account number, not a phone
        return sum(len(g) == 4 for g in groups) >= 4 or \
            bool(_IBAN_HEAD.search(text[max(0, start - 48):start]))

    @staticmethod
    def _confirm(body: str, intl: str | None, text: str, start: int, regions: tuple[str, ...], *,
                 extension: bool) -> bool:
        digits = re.sub(r"\D", "", body)
        if not 7 <= len(digits) <= 15:
            return False
        groups = re.findall(r"\d+", body)
        if intl:
            # +49 (0) 30 …: the trunk 0 in parentheses is not dialled from abroad
            number = "+" + re.sub(r"\D", "", re.sub(r"\(\s?0\s?\)", "", body).removeprefix("00"))
            if body.startswith("00"):
                if body == digits and not _phone_word_before(text, start):
                    # a whole run of digits after '00' is a zero-padded id ('id,0095451651,ok')
                    # unless it is a number a phone could have ('00393974364888')
                    return _valid("+" + digits[2:], None)
                return _possible("+" + digits[2:], None)
            # a '+' before 8 or more digits of a real country code is a phone, possible or not
            return _possible(number, None) or (len(digits) >= 8 and _country_code(number))
        if _PAIRS.match(body) and not _phone_word_before(text, start):
            return False  # '21 34 55 89': scores or a draw, unless a phone word says otherwise
        if len(groups) > 1 and "." not in body and not digits.startswith("0") and "(" not in body and \
                ((len(groups) < 3 and not re.search(r"[\-/]", body)) or len(digits) < 9):
            # '200 39504' (a status and a size), '12 345': not without more shape; but in a
            # region without a trunk prefix (Denmark, Norway, Greece) '412 34 567' is how phones
            # look, and after a phone word any grouping ('tlf 9857 5311', 'tel: 6911 084364')
            return (len(groups) >= 3 or _phone_word_before(text, start)) and \
                any(_valid(body, r) for r in regions if _no_trunk_prefix(r))
        if _FORMATTED.search(body) or extension:
            return any(_possible(body, r) for r in regions)
        # a bare digit run is an order number or a timestamp unless something says otherwise
        if digits.startswith("0"):
            return not digits.startswith("00") and 9 <= len(digits) <= 12 and \
                any(_possible(digits, r) for r in regions)
        # what comes just before, without our own tokens ('[phone]?ts=1793973303' is a timestamp)
        before = _TOKEN.sub(" ", text[max(0, start - 28):start])
        if "CN" in regions and _CN_MOBILE.match(digits) and _HAN.search(before) and _valid(digits, "CN"):
            return True  # a mainland mobile number written in Chinese text, as it usually is
        if _phone_word_before(text, start):
            return any(_possible(digits, r) for r in regions)
        return False


# -- IP addresses -----------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![A-Za-z0-9_.])(?:\d{1,3}\.){3}\d{1,3}(?![A-Za-z0-9_]|\.\d)")
_H16 = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(
    r"(?<![A-Za-z0-9_.%])(?<![0-9A-Fa-f]:)(?P<addr>(?:" + _H16 + r"|:)?(?::" + _H16 + r"){0,7}:{1,2}"
    r"(?:" + _H16 + r"(?::" + _H16 + r"){0,6})?(?::?(?:\d{1,3}\.){3}\d{1,3})?)"
    r"(?P<zone>%[\w.\-]{1,16})?(?![A-Za-z0-9_:]|\.\d)")


# a product or a version word just before four dotted numbers (a version, not an IPv4 address):
# the products of user agents and the runtimes that print four-part versions, standing alone
# (Chrome/1.2.3.4, Firefox/128.0.2.1, Version/17.2.1.0); any other word before a slash is a
# label or a path (IP/203.0.113.45, Client/198.51.100.7, /Admin/Block/203.0.113.9)
_PRODUCTS = ("Mozilla|Firefox|Chrome|Chromium|CriOS|FxiOS|Safari|Version|AppleWebKit|WebKit|Gecko|Trident|"
             "Edge|Edg|EdgA|EdgiOS|OPR|OPiOS|Opera|Vivaldi|Brave|YaBrowser|SamsungBrowser|UCBrowser|"
             "MiuiBrowser|HuaweiBrowser|Silk|Mobile|Thunderbird|SeaMonkey|Electron|Java|Python|Node|Ruby|"
             "PHP|Perl|Dalvik|Darwin|CFNetwork")
_PRODUCT_VERSION = re.compile(r"(?:(?<![/\w])(?:" + _PRODUCTS + r"|\w*(?:Browser|[Bb]ot))/"
                              r"|\b(?i:version|ver|build|release|python|v)\s?)$")
# the first group of the short compressed addresses people write (fe80::1, 2001:db8::1, fd00::5)
_SHORT_V6 = re.compile(r"^(?:fe[89ab][0-9a-f]|f[cd][0-9a-f]{0,2}|ff[0-9a-f]{2}|200[12]|64)$", re.IGNORECASE)
_CIDR = re.compile(r"/(\d{1,3})(?!\d)")


class IpDetector(Detector):
    kind = "ip"

    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        # IPv6 first: ::ffff:192.0.2.1 is one address, not an IPv4 inside something
        v6: list[Span] = []
        if ":" in text:
            for match in _IPV6.finditer(text):
                addr, start = match.group("addr"), match.start()
                if addr.startswith(":") and not addr.startswith("::"):
                    addr, start = addr[1:], start + 1  # a colon before the address ('Adresse:fe80::1')
                if addr.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", addr) or \
                        self._code(addr):
                    continue
                try:
                    ip6 = ipaddress.IPv6Address(addr + (match.group("zone") or ""))
                except ValueError:
                    continue
                if not self._network(ip6, text, match.end(), 64):
                    v6.append((start, match.end()))
        yield from v6
        for match in _IPV4.finditer(text):
            try:
                ip4 = ipaddress.IPv4Address(match.group())
            except ValueError:
                continue
            if _PRODUCT_VERSION.search(text[max(0, match.start() - 24):match.start()]):
                continue  # Firefox/128.0.2.1, Python 3.11.4.1: a version with four parts
            if self._network(ip4, text, match.end(), 24):
                continue
            if not any(s <= match.start() < e for s, e in v6):
                yield match.span()

    @staticmethod
    def _code(addr: str) -> bool:
        """A scope operator in code (std::vector, a::b::c(), dead::beef), not an address: two
        groups around '::' that are both names (a letter first) and start no address block
        people write short (fe80::abcd)."""
        groups = [g for g in addr.split(":") if g]
        if addr.startswith("::") or len(groups) >= 3 or "." in addr:
            return False
        return not _SHORT_V6.match(groups[0]) and all(g[0].isalpha() for g in groups)

    @staticmethod
    def _network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str, end: int, widest: int) -> bool:
        """A network in CIDR notation (10.0.0.0/8, 2001:db8::/32): no one's address when its host
        bits are zero and its prefix no longer than ``widest`` (the zone's own generalization)."""
        prefix = _CIDR.match(text, end)
        if prefix is None or int(prefix.group(1)) > widest:
            return False
        try:
            ipaddress.ip_network(f"{ip}/{prefix.group(1)}", strict=True)
        except ValueError:
            return False
        return True


# -- cards ------------------------------------------------------------------------------------

# boundaries are ASCII: CJK text glues numbers to words without a space
# a comma may stand on either side (a CSV field: 'Smith,4111 1111 1111 1111,12/27')
_CARD = re.compile(r"(?<![A-Za-z0-9_.\-+])\d{4}(?P<sep>[ .\-]?)\d{2,6}(?:(?P=sep)\d{1,6}){0,4}"
                   r"(?![A-Za-z0-9_]|[.\-]\d)")
# the groups of a card as people type them, with doubled or mixed separators
# ('4111  1111 - 1111.1111'): four-digit groups, or American Express's and Diners' 4-6-5 and 4-6-4
_CARD_SEP = r"(?:[ \t]{0,2}[.\-][ \t]{0,2}|[ \t]{1,3})"
_CARD_LOOSE = re.compile(r"(?<![A-Za-z0-9_.\-+])\d{4}(?:(?:" + _CARD_SEP + r"\d{4}){2}" + _CARD_SEP
                         + r"\d{1,7}|" + _CARD_SEP + r"\d{6}" + _CARD_SEP + r"\d{4,5})"
                         r"(?![A-Za-z0-9_]|[.\-]\d)")
# issuer prefixes (IIN ranges) and the lengths their cards have
_ISSUERS: tuple[tuple[tuple[int, int], tuple[int, ...]], ...] = (
    ((4, 4), (13, 16, 19)),                       # Visa
    ((51, 55), (16,)), ((2221, 2720), (16,)),     # Mastercard
    ((34, 34), (15,)), ((37, 37), (15,)),         # American Express
    # Discover
    ((6011, 6011), (16, 17, 18, 19)), ((644, 649), (16, 17, 18, 19)), ((65, 65), (16, 17, 18, 19)),
    ((300, 305), (14, 15, 16, 17, 18, 19)), ((309, 309), (14, 16, 19)),        # Diners Club
    ((36, 36), (14, 15, 16, 17, 18, 19)), ((38, 39), (14, 15, 16, 17, 18, 19)),
    # JCB (3528-3589 by the book; generators and test data use all of 35xx)
    ((35, 35), (16, 17, 18, 19)), ((2131, 2131), (15,)), ((1800, 1800), (15,)),
    ((62, 62), (16, 17, 18, 19)), ((81, 81), (16,)), ((60, 60), (16, 19)),     # UnionPay, RuPay
    ((2200, 2204), (16, 17, 18, 19)),             # Mir
    ((50, 50), (12, 13, 14, 15, 16, 17, 18, 19)), ((56, 69), (12, 13, 14, 15, 16, 17, 18, 19)),  # Maestro
)


def card_issuer_fits(digits: str) -> bool:
    for (lo, hi), lengths in _ISSUERS:
        width = len(str(lo))
        if len(digits) in lengths and lo <= int(digits[:width]) <= hi:
            return True
    return False


# a card word just before a number (any script's word for it)
CARD_WORDS = (r"card|karte|carte|tarjeta|cart[aã]o|carta|kort|karta|kaart|карт[аы]?|kartı|κάρτα|כרטיס"
               r"|بطاقة|カード|卡|카드|कार्ड|\bpan\b")
# a card word, then at most two short words ('Card used: …', 'Carte utilisée : …', '"pan": …')
_CARD_WORD = re.compile(r"(?i)(?:" + CARD_WORDS + r")\w{0,6}\W{0,4}(?:\w{1,9}\W{1,4}){0,2}$")


class CardDetector(Detector):
    """Luhn and the issuer's prefix and length. A bare run of 12 or 13 digits is as often an
    order number (one in ten passes Luhn): it is a card only after a card word."""

    kind = "card"

    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        found: list[Span] = []
        for span in (*self._find(_CARD, text), *self._find(_CARD_LOOSE, text)):
            if not any(span[0] < e and s < span[1] for s, e in found):
                found.append(span)
                yield span

    @staticmethod
    def _find(pattern: re.Pattern[str], text: str) -> Iterator[Span]:
        for match in pattern.finditer(text):
            if _NUMBER_NAME.search(text[max(0, match.start() - 8):match.start()]):
                continue  # EAN 5901234123457: a product's number
            found = CardDetector._groups_that_check_out(text, match)
            if found is not None:
                yield found

    @staticmethod
    def _groups_that_check_out(text: str, match: re.Match[str]) -> Span | None:
        """The card among a candidate's groups: the candidate may have taken a following number
        as a last group ('4111 … 1111 201'), or a number before it as its first ('order 2024
        4111 …'): the card is the longest run of groups that checks out, from the earliest
        four-digit group that starts one."""
        raw = match.group()
        groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", raw)]
        for i, (first, _) in enumerate(groups):
            if i and groups[i][1] - first != 4:
                continue
            start = match.start() + first
            for k in range(len(groups), i, -1):
                digits = re.sub(r"\D", "", raw[first:groups[k - 1][1]])
                if len(digits) < 12:
                    break
                if len(digits) <= 19 and card_issuer_fits(digits) and std_luhn.is_valid(digits):
                    if k == i + 1 and len(digits) < 14 and \
                            not _CARD_WORD.search(text[max(0, start - 24):start]):
                        break  # a bare 12-13 digit run without a card word: an order number, an epoch
                    return start, match.start() + groups[k - 1][1]
        return None


# -- IBAN -------------------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z]{2}\d{2}(?:[ .\-]?[A-Za-z0-9]){11,30}")
_IBAN_HEAD_AT = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z]{2}\d{2}")


def _mod97(compact: str) -> bool:
    """ISO 13616's check alone (stdnum then checks the country's length and format)."""
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


class IbanDetector(Detector):
    kind = "iban"

    def find(self, text: str, regions: tuple[str, ...]) -> Iterator[Span]:
        # every place an IBAN may start, tried in turn: a candidate that starts earlier (the
        # 'ba42-0f2c…' of a uuid) can run through words into a real IBAN and must not hide it
        done = 0
        for head in _IBAN_HEAD_AT.finditer(text):
            if head.start() < done:
                continue
            match = _IBAN.match(text, head.start())
            if match is None:
                continue
            found = self._valid_prefix(text, match)
            if found is not None:
                done = found[1]
                yield found

    @staticmethod
    def _valid_prefix(text: str, match: re.Match[str]) -> Span | None:
        """The longest valid IBAN that ``match`` starts with, or None."""
        # the candidate may run into the next word: the IBAN is the longest valid
        # prefix that ends at a group or word boundary
        start, raw = match.start(), match.group()
        after = start + len(raw)
        last = after < len(text) and text[after].isascii() and text[after].isalnum()
        # (or where only letters follow: a BIC glued after it, 'IT60X…123456BIC')
        ends = [k for k in range(len(raw), 14, -1)
                if raw[k - 1].isalnum() and (raw[k] in " .-" or (raw[k:].isalpha() and not last)
                                             if k < len(raw) else not last)]
        for k in ends:
            compact = re.sub(r"[ .\-]", "", raw[:k]).upper()
            if 15 <= len(compact) <= 34 and _mod97(compact) and std_iban.is_valid(compact):
                return start, start + k
        return None


_NOT_DIGIT = re.compile(r"\D+")
_EMAIL_HINT = re.compile(r"@|[\(\[\{]\s?at\s?[\)\]\}]|\sat\s", re.IGNORECASE)

DETECTORS: tuple[Detector, ...] = (EmailDetector(), IbanDetector(), CardDetector(), IpDetector(),
                                   PhoneDetector())
BY_KIND = {d.kind: d for d in DETECTORS}


def find_all(text: str, kinds: Iterable[str] = KINDS,
             regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every confirmed finding in decoded ``text``, earlier kinds first.

    A later detector's finding that overlaps an earlier one is dropped: an email's
    digits are not also a phone, nor an IP address a phone, nor a card a phone.
    """
    wanted = set(kinds)
    digits = len(_NOT_DIGIT.sub("", text))
    # forms that cannot be there are not looked for (each detector needs some digits, or an '@')
    if digits < 7:
        wanted &= {"email", "ip"}
        if digits < 4 and ":" not in text:
            wanted.discard("ip")
    if digits < 12:
        wanted.discard("card")
    if "email" in wanted and not _EMAIL_HINT.search(text):
        wanted.discard("email")
    found: list[tuple[str, int, int]] = []
    for detector in DETECTORS:
        if detector.kind not in wanted:
            continue
        for start, end in detector.find(text, regions):
            if not any(start < e and s < end for _, s, e in found):
                found.append((detector.kind, start, end))
    found.sort(key=lambda f: f[1])
    return found
