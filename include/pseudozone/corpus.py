"""A test corpus of messy, realistic, synthetic data that no detector was tuned on.

Two things are generated here, both seeded and deterministic (same seed, same
output, with the Faker, phonenumbers and python-stdnum versions in ``uv.lock``):

``detection_corpus``
    Short free texts of the shapes PII really turns up in (JSON properties,
    URLs and query strings, server-log lines, support-chat sentences in the
    locale's language, HTML snippets), each either carrying PII of one kind
    (email, phone, IP, card, IBAN, name) in one of several forms and
    encodings (percent-encoded, form-encoded, double-encoded, JSON ``\\uXXXX``
    escapes, HTML entities, full-width characters), or carrying a *hard
    negative*: an identifier that looks like PII to a careless pattern but is
    not (UUIDs, ULIDs, KSUIDs, hashes, JWTs, order numbers, SKUs, epochs,
    timestamps, prices, versions, tracking numbers, ISBNs, plain text with
    numbers).  Every sample records what was planted, so recall and false
    positive rates can be measured per kind, form and encoding.

``landing_dataset``
    Landing files for the bundled contracts (profiles, events, server logs)
    with Faker subjects from several locales per tenant, whose names, emails
    and phones (and unrelated PII) are planted in the free-text columns.
    ``PlantedTruth`` lists every planted value and where it went.

The corpus is built from what real data looks like -- the output of Faker,
``phonenumbers`` and ``python-stdnum`` plus hand-written shapes -- and was
written without looking at the project's detectors, so that measuring them on
it means something.  Do not tune the corpus to what the detectors find.

Faker is a dev dependency: it is imported lazily, so this module imports
without it.  ``tests/data/corpus_sample.jsonl`` is a committed fixed sample (a test
checks it equals a regeneration); after upgrading one of those packages, regenerate it
with ``python -m pseudozone.corpus sample tests/data/corpus_sample.jsonl``.
All data here is fake.
"""

from __future__ import annotations

import argparse
import base64
import html
import html.entities
import ipaddress
import json
import random
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from faker import Faker

LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "pt_BR", "ja_JP", "hi_IN",
                            "zh_CN", "ru_RU")
COUNTRY: dict[str, str] = {"en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "es_ES": "ES",
                           "pt_BR": "BR", "ja_JP": "JP", "hi_IN": "IN", "zh_CN": "CN", "ru_RU": "RU"}
CURRENCY: dict[str, str] = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "BR": "BRL",
                            "JP": "JPY", "IN": "INR", "CN": "CNY", "RU": "RUB"}

KINDS: tuple[str, ...] = ("email", "phone", "ip", "card", "iban", "name")
ENCODINGS: tuple[str, ...] = ("raw", "url_component", "form", "double_url", "json_escape", "html_entity",
                              "fullwidth")
CARD_TYPES: tuple[str, ...] = ("visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners",
                               "jcb15", "jcb16", "maestro", "unionpay", "mir")
_CARD_LOCALE = {"unionpay": "zh_CN", "mir": "ru_RU"}
EMAIL_OBFUSCATIONS: tuple[str, ...] = ("fullwidth_at", "paren_at", "bracket_at", "word_at")
FORMS: dict[str, tuple[str, ...]] = {
    "email": ("faker", "free", "company", "plus", "upper", "unicode_local", "idn_domain", "unicode_both",
              "punycode", *EMAIL_OBFUSCATIONS),
    "phone": ("faker", "intl_plus", "intl_00", "e164", "ext", "slash"),
    "ip": ("ipv4", "ipv4_public", "ipv4_port", "ipv6", "ipv6_compressed", "ipv4_mapped", "ipv6_zone",
           "ipv6_bracket_port"),
    "card": CARD_TYPES,
    "iban": ("faker_compact", "faker_grouped", "handmade_compact", "handmade_grouped"),
    "name": ("faker", "plain"),
}
NEGATIVE_FAMILIES: tuple[str, ...] = (
    "uuid4", "uuid4_hex", "ulid", "ksuid", "sha1", "sha256", "base64", "jwt", "order_number", "sku",
    "epoch_s", "epoch_ms", "iso_timestamp", "iso_date", "price", "semver", "tracking", "isbn",
    "locale_text")

SAMPLE_SEED = 20261201
SAMPLE_PER_LOCALE = 100
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KSUID_EPOCH = 1_400_000_000
_EPOCH_LO = 1_672_531_200  # 2023-01-01
_EPOCH_HI = 1_798_761_600  # 2027-01-01


@dataclass(frozen=True)
class Sample:
    """One corpus text and what was planted in it.

    ``values`` are the planted PII values as they were before encoding (for an
    obfuscated email, the plain address it spells); empty for a hard negative.
    ``form`` names the shape of the value (``FORMS[kind]``) or the negative family.
    """

    text: str
    kind: str | None
    encoding: str
    values: tuple[str, ...]
    negative: str | None
    locale: str
    form: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "encoding": self.encoding, "values": list(self.values),
                "negative": self.negative, "locale": self.locale, "form": self.form}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Sample:
        return cls(text=str(raw["text"]), kind=raw["kind"], encoding=str(raw["encoding"]),
                   values=tuple(str(v) for v in raw["values"]), negative=raw["negative"],
                   locale=str(raw["locale"]), form=str(raw.get("form", "")))


# ---------------------------------------------------------------------------------------------------
# encodings

def fullwidth(text: str) -> str:
    """ASCII ``!``..``~`` as full-width forms (U+FF01..U+FF5E), spaces as ideographic spaces."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


def html_entities(text: str, rng: random.Random) -> str:
    """``@`` and ``+`` (and non-ASCII) as entities, some digits and dots as numeric entities."""
    out: list[str] = []
    for c in text:
        code = ord(c)
        if c == "@":
            out.append(rng.choice(("&#64;", "&commat;", "&#x40;")))
        elif c == "+":
            out.append(rng.choice(("&#43;", "&plus;", "&#x2B;")))
        elif c in "&<>\"'":
            out.append(html.escape(c))
        elif code > 127:
            name = html.entities.codepoint2name.get(code)
            out.append(f"&{name};" if name and rng.random() < 0.6 else f"&#{code};")
        elif c.isdigit() and rng.random() < 0.3:
            out.append(f"&#{code};")
        elif c in ".:-" and rng.random() < 0.3:
            out.append(rng.choice((f"&#{code};", f"&#x{code:x};")))
        else:
            out.append(c)
    result = "".join(out)
    if result == text:  # nothing happened to be encoded: encode the first character
        result = f"&#{ord(text[0])};{text[1:]}"
    return result


def encode_token(token: str, encoding: str, rng: random.Random) -> str:
    """``token`` as it appears in text under ``encoding`` (json_escape is applied by the container)."""
    if encoding in ("raw", "json_escape"):
        return token
    if encoding == "url_component":
        return quote(token, safe="")
    if encoding == "form":
        return quote_plus(token, safe="")
    if encoding == "double_url":
        return quote(quote(token, safe=""), safe="")
    if encoding == "html_entity":
        return html_entities(token, rng)
    if encoding == "fullwidth":
        return fullwidth(token)
    raise ValueError(f"unknown encoding {encoding!r}")


def json_escaped(obj: Any, rng: random.Random) -> str:
    """JSON with every non-ASCII character, ``@`` and ``+`` as ``\\uXXXX`` (some as PHP's ``\\/``)."""
    text = json.dumps(obj, ensure_ascii=True).replace("@", "\\u0040").replace("+", "\\u002b")
    return text.replace("/", "\\/") if rng.random() < 0.3 else text


# ---------------------------------------------------------------------------------------------------
# identifiers built from the seeded RNG (never uuid4() or the random module's globals)

def uuid4_from(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def ulid_from(rng: random.Random, ts: float | None = None) -> str:
    ms = int((ts if ts is not None else rng.uniform(_EPOCH_LO, _EPOCH_HI)) * 1000)
    value = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def ksuid_from(rng: random.Random) -> str:
    ts = rng.randint(_EPOCH_LO, _EPOCH_HI) - KSUID_EPOCH
    value = (ts << 128) | rng.getrandbits(128)
    chars: list[str] = []
    while value:
        value, digit = divmod(value, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars)).rjust(27, "0")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(rng: random.Random, n: int, *, lead: str = "") -> str:
    body = "".join(rng.choice("0123456789") for _ in range(n - len(lead)))
    return lead + body if lead else str(rng.randint(1, 9)) + body[1:]


def _not_luhn(digits: str) -> str:
    """Bare digit runs of card length in negatives fail Luhn, so that they are unambiguous."""
    if 12 <= len(digits) <= 19 and luhn_ok(digits):
        return digits[:-1] + str((int(digits[-1]) + 1) % 10)
    return digits


# ---------------------------------------------------------------------------------------------------
# locale text

_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"email": ("You can reach me at {x} if anything changes.", "Please send the invoice to {x}"),
           "phone": ("Please call me back on {x} after 5pm.", "My new number is {x}"),
           "ip": ("The login came from {x}, which wasn't me.", "Whitelisted address: {x}"),
           "card": ("I was charged twice on card {x}.", "Card used: {x}"),
           "iban": ("Please refund to my IBAN {x}.", "Bank account: {x}"),
           "name": ("Kind regards, {x}", "The parcel is for {x}, please leave it at the door."),
           "ref": ("My reference is {x}.", "It says {x} on the confirmation.")},
    "de": {"email": ("Sie erreichen mich unter {x}.", "Bitte schicken Sie die Rechnung an {x}"),
           "phone": ("Bitte rufen Sie mich unter {x} zurück.", "Meine neue Nummer: {x}"),
           "ip": ("Die Anmeldung kam von {x}, das war nicht ich.", "Freigegebene Adresse: {x}"),
           "card": ("Meine Karte {x} wurde doppelt belastet.", "Bezahlt mit Karte {x}"),
           "iban": ("Bitte erstatten Sie den Betrag auf meine IBAN {x}.", "Kontoverbindung: {x}"),
           "name": ("Mit freundlichen Grüßen, {x}", "Das Paket ist für {x}."),
           "ref": ("Meine Referenz lautet {x}.", "Auf der Bestätigung steht {x}.")},
    "fr": {"email": ("Vous pouvez me joindre à {x}.", "Merci d'envoyer la facture à {x}"),
           "phone": ("Merci de me rappeler au {x} après 18h.", "Mon nouveau numéro : {x}"),
           "ip": ("La connexion venait de {x}, ce n'était pas moi.", "Adresse autorisée : {x}"),
           "card": ("J'ai été débité deux fois sur la carte {x}.", "Carte utilisée : {x}"),
           "iban": ("Merci de rembourser sur mon IBAN {x}.", "Coordonnées bancaires : {x}"),
           "name": ("Cordialement, {x}", "Le colis est pour {x}."),
           "ref": ("Ma référence est {x}.", "Sur la confirmation il est écrit {x}.")},
    "es": {"email": ("Pueden escribirme a {x}.", "Envíen la factura a {x}, por favor"),
           "phone": ("Llámenme al {x} por la tarde, por favor.", "Mi nuevo número: {x}"),
           "ip": ("El acceso vino de {x} y no fui yo.", "Dirección autorizada: {x}"),
           "card": ("Me cobraron dos veces en la tarjeta {x}.", "Tarjeta usada: {x}"),
           "iban": ("Por favor, devuelvan el importe a mi IBAN {x}.", "Cuenta bancaria: {x}"),
           "name": ("Saludos cordiales, {x}", "El paquete es para {x}."),
           "ref": ("Mi referencia es {x}.", "En la confirmación pone {x}.")},
    "pt": {"email": ("Podem me escrever em {x}.", "Mandem a nota fiscal para {x}, por favor"),
           "phone": ("Por favor, me liguem no {x} depois das 18h.", "Meu novo número: {x}"),
           "ip": ("O acesso veio de {x} e não fui eu.", "Endereço liberado: {x}"),
           "card": ("Fui cobrado duas vezes no cartão {x}.", "Cartão usado: {x}"),
           "iban": ("Favor reembolsar no meu IBAN {x}.", "Conta bancária: {x}"),
           "name": ("Atenciosamente, {x}", "A encomenda é para {x}."),
           "ref": ("Minha referência é {x}.", "Na confirmação aparece {x}.")},
    "ja": {"email": ("連絡先メールアドレスは {x} です。", "請求書は {x} に送ってください。"),
           "phone": ("{x} まで折り返しお電話ください。", "新しい電話番号：{x}"),
           "ip": ("{x} からログインがありましたが、私ではありません。", "許可するアドレス：{x}"),
           "card": ("カード {x} で二重に請求されました。", "使用したカード：{x}"),
           "iban": ("返金は IBAN {x} へお願いします。", "振込先：{x}"),
           "name": ("{x} です。よろしくお願いします。", "お届け先：{x} 様"),
           "ref": ("参照番号は {x} です。", "確認メールには {x} と書いてあります。")},
    "hi": {"email": ("आप मुझसे {x} पर संपर्क कर सकते हैं।", "कृपया बिल {x} पर भेजें"),
           "phone": ("कृपया मुझे {x} पर वापस कॉल करें।", "मेरा नया नंबर: {x}"),
           "ip": ("लॉगिन {x} से हुआ था, वह मैं नहीं था।", "अनुमत पता: {x}"),
           "card": ("मेरे कार्ड {x} से दो बार पैसे कटे।", "इस्तेमाल किया गया कार्ड: {x}"),
           "iban": ("कृपया मेरे IBAN {x} पर धनवापसी करें।", "बैंक खाता: {x}"),
           "name": ("धन्यवाद, {x}", "पार्सल {x} के लिए है।"),
           "ref": ("मेरा संदर्भ नंबर {x} है।", "पुष्टि में {x} लिखा है।")},
    "zh": {"email": ("请发邮件到 {x} 联系我。", "发票请寄到 {x}"),
           "phone": ("请回电 {x}，谢谢。", "我的新号码：{x}"),
           "ip": ("登录来自 {x}，不是我本人。", "允许的地址：{x}"),
           "card": ("我的卡 {x} 被重复扣款了。", "使用的卡：{x}"),
           "iban": ("请退款到我的IBAN {x}。", "银行账户：{x}"),
           "name": ("此致，{x}", "收件人：{x}"),
           "ref": ("我的参考号是 {x}。", "确认邮件上写的是 {x}。")},
    "ru": {"email": ("Пишите мне на {x}.", "Пожалуйста, отправьте счёт на {x}"),
           "phone": ("Перезвоните мне, пожалуйста, по номеру {x}.", "Мой новый номер: {x}"),
           "ip": ("Вход был с адреса {x}, это был не я.", "Разрешённый адрес: {x}"),
           "card": ("С карты {x} списали деньги дважды.", "Оплачено картой {x}"),
           "iban": ("Верните, пожалуйста, деньги на мой IBAN {x}.", "Банковский счёт: {x}"),
           "name": ("С уважением, {x}", "Посылка для {x}."),
           "ref": ("Мой номер обращения {x}.", "В подтверждении указано {x}.")},
}
_NUMBER_TEXT: dict[str, tuple[str, ...]] = {
    "en": ("Ordered {qty} items in {year}, {pct}% off with the spring sale, delivered in {days} days.",
           "The box weighs {kg} kg, measures {w} x {h} cm and {pct}% of {qty} reviewers gave it 5 stars."),
    "de": ("{qty} Stück im Jahr {year} bestellt, {pct} % Rabatt, Lieferung in {days} Tagen.",
           "Das Paket wiegt {kg} kg, misst {w} x {h} cm, {pct} % von {qty} Bewertungen sind positiv."),
    "fr": ("{qty} articles commandés en {year}, remise de {pct} %, livraison sous {days} jours.",
           "Le colis pèse {kg} kg, mesure {w} x {h} cm ; {pct} % des {qty} avis sont positifs."),
    "es": ("Pedí {qty} unidades en {year} con un {pct} % de descuento; llega en {days} días.",
           "La caja pesa {kg} kg, mide {w} x {h} cm y el {pct} % de {qty} opiniones son positivas."),
    "pt": ("Pedi {qty} unidades em {year} com {pct}% de desconto; chega em {days} dias.",
           "A caixa pesa {kg} kg, mede {w} x {h} cm e {pct}% de {qty} avaliações são positivas."),
    "ja": ("{year}年に{qty}個注文し、{pct}%割引で{days}日以内に届きました。",
           "重さ{kg}kg、サイズ{w}×{h}cm、{qty}件のレビューの{pct}%が星5つです。"),
    "hi": ("{year} में {qty} सामान मंगाए, {pct}% छूट मिली, {days} दिन में डिलीवरी हुई।",
           "डिब्बे का वज़न {kg} किलो है, आकार {w} x {h} सेमी, {qty} समीक्षाओं में {pct}% सकारात्मक।"),
    "zh": ("{year}年订购了{qty}件，优惠{pct}%，{days}天内送达。",
           "包裹重{kg}公斤，尺寸{w}×{h}厘米，{qty}条评价中{pct}%是五星。"),
    "ru": ("Заказал {qty} шт. в {year} году, скидка {pct}%, доставка за {days} дней.",
           "Коробка весит {kg} кг, размер {w} x {h} см, {pct}% из {qty} отзывов положительные."),
}
_ACCENTED_FIRST: dict[str, tuple[str, ...]] = {
    "en": ("zoë", "renée", "chloé", "josé", "noël", "siân", "bjørn", "añna"),
    "de": ("jürgen", "jörg", "günther", "björn", "käthe", "sören", "uwe.öz"),
    "fr": ("hélène", "françois", "jérôme", "éloïse", "anaïs", "gaël"),
    "es": ("josé", "íñigo", "begoña", "núria", "ramón", "inés"),
    "pt": ("joão", "conceição", "antônio", "thaís", "luís", "inês"),
}
_IDN: dict[str, tuple[str, ...]] = {
    "en": ("exämple.com", "café-example.co.uk", "naïve-shop.com"),
    "de": ("exämple.de", "bücher-beispiel.de", "müller-shop.de"),
    "fr": ("société-exemple.fr", "crème-exemple.fr"),
    "es": ("españa-ejemplo.es", "niño-tienda.es"),
    "pt": ("exemplo-ação.com.br", "loja-açaí.com.br"),
    "ja": ("例え.jp", "例え.テスト", "お店.jp"),
    "hi": ("उदाहरण.भारत", "परीक्षा.भारत"),
    "zh": ("例子.中国", "测试.公司", "例子.广告"),
    "ru": ("пример.рф", "почта.рф", "пример.испытание"),
}
_PLUS_TAGS = ("news", "shop", "amazon", "2024", "promo", "orders", "spam", "work", "x")
_HOSTS: dict[str, tuple[str, ...]] = {
    "US": ("shop.example.com", "www.example.com"), "GB": ("shop.example.co.uk", "store.example.com"),
    "DE": ("www.example.de", "shop.beispiel.example"), "FR": ("boutique.example.fr", "www.example.fr"),
    "ES": ("tienda.example.es", "www.example.es"), "BR": ("loja.example.com.br", "www.example.com.br"),
    "JP": ("shop.example.jp", "www.example.co.jp"), "IN": ("store.example.in", "www.example.co.in"),
    "CN": ("shop.example.cn", "www.example.com.cn"), "RU": ("magazin.example.ru", "www.example.ru"),
}
_PATHS = ("/account", "/account/settings", "/checkout/confirm", "/support/ticket/new",
          "/api/v2/customers/lookup", "/newsletter/subscribe", "/orders/track", "/cart", "/login",
          "/password/reset")
_PATH_TEMPLATES = ("/users/{x}/orders", "/api/v1/customers/{x}", "/unsubscribe/{x}", "/account/{x}/profile",
                   "/v1/contacts/{x}")
_PARAMS: dict[str, tuple[str, ...]] = {
    "email": ("email", "contact", "e", "login", "user"), "phone": ("phone", "tel", "msisdn", "callback"),
    "ip": ("ip", "client", "addr", "remote"), "card": ("card", "pan", "cc"), "iban": ("iban", "account"),
    "name": ("name", "customer", "fullname", "to"),
}
_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "email": ("email", "contact_email", "reply_to"), "phone": ("phone", "callback_number", "mobile"),
    "ip": ("client_ip", "remote_addr", "ip"), "card": ("card_number", "pan"),
    "iban": ("iban", "refund_account"),
    "name": ("customer_name", "recipient", "signed_by"),
    "uuid4": ("request_id", "trace_id", "device_id"), "uuid4_hex": ("session", "cart_id"),
    "ulid": ("event_id", "id"), "ksuid": ("id", "object_id"), "sha1": ("commit", "etag"),
    "sha256": ("checksum", "digest"), "base64": ("token", "nonce", "state"),
    "jwt": ("access_token", "id_token"),
    "order_number": ("order_id", "order"), "sku": ("sku", "item"), "epoch_s": ("ts", "created"),
    "epoch_ms": ("ts_ms", "sent_at"), "iso_timestamp": ("timestamp", "created_at"),
    "iso_date": ("date", "delivery_date"), "price": ("price", "total"), "semver": ("app_version", "version"),
    "tracking": ("tracking_number", "tracking"), "isbn": ("isbn",), "locale_text": ("note", "comment"),
}
_LOG_AGENTS = ("okhttp/4.12.0", "curl/8.5.0", "python-requests/2.31.0", "Go-http-client/2.0")
_SERVICES = ("checkout", "support", "accounts", "notifier", "search")
_GB_BANKS = ("NWBK", "BARC", "LOYD", "MIDL", "HBUK", "MONZ")
_IBAN_BBAN: dict[str, str] = {"DE": "18n", "FR": "10n11c2n", "ES": "20n", "GB": "4b14n", "BR": "23n1a1c",
                              "IT": "1a10n12c", "NL": "4a10n", "BE": "12n", "AT": "16n", "CH": "5n12c",
                              "PL": "24n", "PT": "21n", "IE": "4b14n", "SE": "20n"}
_CARD_GROUPS: dict[int, tuple[int, ...]] = {12: (4, 4, 4), 13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5),
                                            16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3)}


def _group(text: str, sizes: Sequence[int], sep: str) -> str:
    parts, i = [], 0
    for size in sizes:
        if i >= len(text):
            break
        parts.append(text[i:i + size])
        i += size
    if i < len(text):
        parts.append(text[i:])
    return sep.join(parts)


def _iso(ts: float, rng: random.Random) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    style = rng.randrange(4)
    if style == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if style == 2:
        offset = timezone(timedelta(hours=rng.choice((-5, 1, 2, 3, 5.5, 8, 9))))
        return moment.astimezone(offset).isoformat(timespec="milliseconds")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------------------
# the generator for one locale

_FAKERS: dict[tuple[str, bool], Faker] = {}


def _faker(locale: str, seed: int, *, spare: bool = False) -> Faker:
    """A Faker for ``locale`` reseeded with ``seed``.

    Building a Faker takes ~60 ms, so instances are kept and reseeded: reseeding
    resets all of an instance's randomness, so the output depends on the seed only.
    Generators in use at the same time must not share one (``spare`` is a second set).
    """
    key = (locale, spare)
    fake = _FAKERS.get(key)
    if fake is None:
        from faker import Faker

        fake = _FAKERS[key] = Faker(locale)
    fake.seed_instance(seed)
    return fake


class _Gen:
    """Faker and a seeded RNG for one locale, and the builders for values and containers."""

    def __init__(self, locale: str, seed: int, salt: str = "corpus") -> None:
        self.locale = locale
        self.lang = locale.split("_")[0]
        self.country = COUNTRY[locale]
        self.rng = random.Random(f"pseudozone-{salt}:{seed}:{locale}")
        self._side: dict[str, Faker] = {}
        self.fake = _faker(locale, random.Random(f"pseudozone-{salt}-faker:{seed}:{locale}").getrandbits(48))

    def side_faker(self, locale: str) -> Faker:
        """A second seeded Faker, for what this locale's providers lack (card brands)."""
        if locale not in self._side:
            self._side[locale] = _faker(locale, self.rng.getrandbits(48), spare=True)
        return self._side[locale]

    # -- small pieces ---------------------------------------------------------------------------

    def epoch(self) -> int:
        return self.rng.randint(_EPOCH_LO, _EPOCH_HI)

    def template(self, slot: str) -> str:
        return self.rng.choice(_TEMPLATES[self.lang][slot])

    def sentence(self) -> str:
        return str(self.fake.sentence())

    def join(self, *parts: str) -> str:
        sep = "" if self.lang in ("ja", "zh") else " "
        return sep.join(p for p in parts if p)

    def chat(self, filled: str) -> str:
        """A support-chat message: the filled template between the locale's Faker sentences."""
        if filled.startswith("https://") and self.lang in ("ja", "zh"):
            filled = f" {filled} "  # a pasted link stands apart even in Japanese or Chinese text
        where = self.rng.randrange(3)
        if where == 0:
            return self.join(filled, self.sentence())
        if where == 1:
            return self.join(self.sentence(), filled)
        return self.join(self.sentence(), filled, self.sentence())

    def host(self) -> str:
        return self.rng.choice(_HOSTS[self.country])

    def filler_params(self) -> list[tuple[str, str]]:
        rng = self.rng
        pool = [("ref", rng.choice(("newsletter", "footer", "banner", "app"))),
                ("utm_source", rng.choice(("newsletter", "google", "facebook", "partner"))),
                ("utm_medium", rng.choice(("email", "cpc", "social"))),
                ("utm_campaign", f"{rng.choice(('spring', 'summer', 'bf'))}_{rng.randint(2023, 2026)}"),
                ("lang", self.locale.replace("_", "-").lower()), ("page", str(rng.randint(1, 9))),
                ("step", str(rng.randint(1, 4)))]
        return rng.sample(pool, rng.randint(0, 3))

    def url(self, param: str, enc: str, *, path_ok: bool, host: bool = True) -> str:
        rng = self.rng
        params = self.filler_params()
        if path_ok and rng.random() < 0.35:
            path = rng.choice(_PATH_TEMPLATES).format(x=enc)
        else:
            path = rng.choice(_PATHS)
            params.insert(rng.randint(0, len(params)), (param, enc))
        query = "&".join(f"{k}={v}" for k, v in params)
        full = f"{path}?{query}" if query else path
        return f"https://{self.host()}{full}" if host else full

    def log_line(self, *, path: str | None = None, msg: str | None = None) -> str:
        rng = self.rng
        ts = _iso(self.epoch(), rng)
        if path is not None:
            method = rng.choice(("GET", "GET", "POST", "PUT"))
            status = rng.choice((200, 200, 201, 302, 400, 404))
            if rng.random() < 0.5:
                return (f'[{ts}] "{method} {path} HTTP/1.1" {status} {rng.randint(0, 90000)} "-" '
                        f'"{rng.choice(_LOG_AGENTS)}" rt={rng.random():.3f}')
            return f"{ts} {method} {path} {status} {rng.randint(0, 90000)}B {rng.randint(1, 900)}ms"
        level = rng.choice(("info", "warn", "debug"))
        return (f'ts={ts} level={level} svc={rng.choice(_SERVICES)} request_id={uuid4_from(rng)} '
                f'msg="{msg}"')

    # -- positive values ------------------------------------------------------------------------

    def make(self, kind: str, form: str) -> tuple[str, tuple[str, ...], str]:
        """(token as planted, values, form actually used)."""
        if kind == "email":
            return self.email(form)
        if kind == "phone":
            token = self.phone(form)
            return token, (token,), form
        if kind == "ip":
            token, addr = self.ip(form)
            return token, (addr,), form
        if kind == "card":
            token = self.card(form)
            return token, (token,), form
        if kind == "iban":
            token, used = self.iban(form)
            return token, (token,), used
        if kind == "name":
            token = self.name(form)
            return token, (token,), form
        raise ValueError(f"unknown kind {kind!r}")

    def _unicode_local(self) -> str:
        fake, rng = self.fake, self.rng
        if self.lang in ("ja", "zh", "hi", "ru"):
            last, first = str(fake.last_name()), str(fake.first_name())
            local = f"{last}.{first}" if rng.random() < 0.5 else f"{last}{first}"
        else:
            first = str(fake.first_name())
            if first.isascii():
                first = rng.choice(_ACCENTED_FIRST[self.lang])
            local = f"{first}.{fake.last_name()}" if rng.random() < 0.7 else first
        return re.sub(r"[\s'’]", "", local).lower()

    def _ascii_email(self) -> str:
        maker = self.rng.choice((self.fake.email, self.fake.free_email, self.fake.company_email))
        return str(maker())

    def email(self, form: str) -> tuple[str, tuple[str, ...], str]:
        fake, rng = self.fake, self.rng
        if form == "faker":
            e = str(fake.email())
        elif form == "free":
            e = str(fake.free_email())
        elif form == "company":
            e = str(fake.company_email())
        elif form == "plus":
            local, dom = self._ascii_email().split("@")
            e = f"{local}+{rng.choice(_PLUS_TAGS)}@{dom}"
        elif form == "upper":
            local, dom = self._ascii_email().split("@")
            e = rng.choice((f"{local}@{dom}".upper(), f"{local.title()}@{dom.upper()}",
                            f"{local.capitalize()}@{dom.capitalize()}"))
        elif form == "unicode_local":
            domain = str(fake.free_email_domain() if rng.random() < 0.5 else fake.domain_name())
            e = f"{self._unicode_local()}@{domain}"
        elif form == "idn_domain":
            e = f"{fake.user_name()}@{rng.choice(_IDN[self.lang])}"
        elif form == "unicode_both":
            e = f"{self._unicode_local()}@{rng.choice(_IDN[self.lang])}"
        elif form == "punycode":
            local = self._unicode_local() if rng.random() < 0.5 else str(fake.user_name())
            e = f"{local}@{rng.choice(_IDN[self.lang]).encode('idna').decode('ascii')}"
        elif form in EMAIL_OBFUSCATIONS:
            e = self._ascii_email()
            local, dom = e.split("@")
            if form == "fullwidth_at":
                token = f"{local}＠{dom}"
            elif form == "paren_at":
                token = f"{local}{rng.choice(('(at)', ' (at) ', '(AT)'))}{dom}"
            elif form == "bracket_at":
                token = f"{local} [at] {dom.replace('.', ' [dot] ')}"
            else:
                at, dot = rng.choice((("at", "dot"), ("AT", "DOT")))
                token = f"{local} {at} {dom.replace('.', f' {dot} ')}"
            return token, (e,), form
        else:
            raise ValueError(f"unknown email form {form!r}")
        return e, (e,), form

    def parsed_phone(self) -> tuple[str, Any]:
        import phonenumbers

        for _ in range(40):
            raw = str(self.fake.phone_number())
            try:
                num = phonenumbers.parse(raw, self.country)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(num):
                return raw, num
        raise RuntimeError(f"Faker gave no parseable phone number for {self.locale}")

    def phone(self, form: str) -> str:
        import phonenumbers

        rng = self.rng
        if form == "faker":
            return str(self.fake.phone_number())
        raw, num = self.parsed_phone()
        nsn = phonenumbers.national_significant_number(num)
        valid = phonenumbers.is_valid_number(num)
        if valid:
            intl = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        else:  # phonenumbers only formats numbers it knows; group the rest by hand
            intl = f"+{num.country_code} {_group(nsn, (3, 3), ' ')}"
        if form == "intl_plus":
            if valid and rng.random() < 0.3:
                rfc = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.RFC3966)
                return str(rfc).removeprefix("tel:")
            return intl
        if form == "intl_00":
            return "00" + intl[1:]
        if form == "e164":
            return f"+{num.country_code}{nsn}"
        if form == "ext":
            base = re.sub(r"\s*(?:x|ext\.?)\s*\d+$", "", raw)
            ext = str(rng.randint(2, 9999))
            return base + rng.choice((f" ext. {ext}", f" ext {ext}", f" x{ext}", f", ext. {ext}"))
        if form == "slash":
            meta = phonenumbers.PhoneMetadata.metadata_for_region(self.country)
            trunk = meta.national_prefix if meta is not None and meta.national_prefix in ("0", "8") else ""
            cut = phonenumbers.length_of_national_destination_code(num) if valid else 0
            cut = cut or min(3, len(nsn) - 4)
            return f"{trunk}{nsn[:cut]}/{nsn[cut:]}"
        raise ValueError(f"unknown phone form {form!r}")

    def ipv6_compressed(self) -> str:
        rng = self.rng
        prefix = rng.choice(("2001:db8", "2a02:8108", "2607:f8b0", "2a00:1450", "2804:14c", "240e:3b7",
                             "2409:8a1e", "2a03:2880", "2405:201"))
        groups = prefix.split(":") + [f"{rng.getrandbits(16):x}" for _ in range(6)]
        start = rng.randint(2, 5)
        for i in range(start, min(8, start + rng.randint(2, 5))):
            groups[i] = "0"
        return ipaddress.IPv6Address(":".join(groups)).compressed

    def ip(self, form: str) -> tuple[str, str]:
        """(token, address): the token may carry a port or brackets around the address."""
        fake, rng = self.fake, self.rng
        port = str(rng.choice((443, 8080, 8443, 3000, 5432, rng.randint(1024, 65535))))
        if form == "ipv4":
            addr = str(fake.ipv4())
            return addr, addr
        if form == "ipv4_public":
            addr = str(fake.ipv4_public())
            return addr, addr
        if form == "ipv4_port":
            addr = str(fake.ipv4_public())
            return f"{addr}:{port}", addr
        if form == "ipv6":
            addr = str(fake.ipv6())
            return addr, addr
        if form == "ipv6_compressed":
            addr = self.ipv6_compressed()
            return addr, addr
        if form == "ipv4_mapped":
            addr = f"::ffff:{fake.ipv4_public()}"
            return addr, addr
        if form == "ipv6_zone":
            tail = ":".join(f"{rng.getrandbits(16):x}" for _ in range(rng.choice((1, 4))))
            addr = f"fe80::{tail}%{rng.choice(('eth0', 'en0', 'wlan0', 'enp3s0', '12'))}"
            return addr, addr
        if form == "ipv6_bracket_port":
            addr = self.ipv6_compressed() if rng.random() < 0.6 else str(fake.ipv6())
            return f"[{addr}]:{port}", addr
        raise ValueError(f"unknown ip form {form!r}")

    def card(self, card_type: str) -> str:
        try:
            number = str(self.fake.credit_card_number(card_type))
        except KeyError:  # zh_CN's and ru_RU's Faker know only their local brands (and visa, mastercard)
            number = str(self.side_faker(_CARD_LOCALE.get(card_type, "en_US")).credit_card_number(card_type))
        sep = self.rng.choice(("", " ", " ", "-", "."))
        sizes = _CARD_GROUPS.get(len(number), (4,) * 5)
        return _group(number, sizes, sep) if sep else number

    def handmade_iban(self, country: str | None = None) -> str:
        from stdnum import iban as stdiban

        rng = self.rng
        cc = country or (self.country if self.country in _IBAN_BBAN else rng.choice(sorted(_IBAN_BBAN)))
        for _ in range(2000):
            bban = []
            for count, kind in re.findall(r"(\d+)([nacb])", _IBAN_BBAN[cc]):
                if kind == "b":
                    bban.append(rng.choice(_GB_BANKS))
                    continue
                alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                            "c": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}[kind]
                bban.append("".join(rng.choice(alphabet) for _ in range(int(count))))
            candidate = f"{cc}00{''.join(bban)}"
            candidate = f"{cc}{stdiban.calc_check_digits(candidate)}{candidate[4:]}"
            if stdiban.is_valid(candidate):
                return candidate
        raise RuntimeError(f"no valid {cc} IBAN")  # pragma: no cover - structures above are valid

    def iban(self, form: str) -> tuple[str, str]:
        from stdnum import iban as stdiban

        used = form
        if form.startswith("faker"):
            number = str(self.fake.iban())
            if not stdiban.is_valid(number):  # zh_CN's Faker IBANs are too short to be valid
                number = self.handmade_iban()
                used = form.replace("faker", "handmade")
        else:
            number = self.handmade_iban()
        if form.endswith("grouped"):
            number = _group(number, (4,) * 9, " ")
        return number, used

    def name(self, form: str) -> str:
        fake = self.fake
        if form == "faker":
            return str(fake.name())
        if self.lang == "ja":
            return f"{fake.last_name()}{fake.first_name()}"
        if self.lang == "zh":
            return f"{fake.last_name()} {fake.first_name()}"
        if self.lang == "ru":
            return f"{fake.first_name()} {fake.last_name()}"
        return f"{fake.first_name()} {fake.last_name()}"

    # -- negatives ------------------------------------------------------------------------------

    def negative_token(self, family: str) -> str:
        rng = self.rng
        if family == "uuid4":
            u = str(uuid4_from(rng))
            return u.upper() if rng.random() < 0.15 else u
        if family == "uuid4_hex":
            return uuid4_from(rng).hex
        if family == "ulid":
            return ulid_from(rng)
        if family == "ksuid":
            return ksuid_from(rng)
        if family == "sha1":
            return f"{rng.getrandbits(160):040x}"
        if family == "sha256":
            return f"{rng.getrandbits(256):064x}"
        if family == "base64":
            for _ in range(50):
                token = base64.b64encode(rng.randbytes(rng.randint(16, 47))).decode()
                if "+" in token or "/" in token:
                    return token
            return token
        if family == "jwt":
            header = _b64url(json.dumps({"alg": rng.choice(("HS256", "RS256")), "typ": "JWT"},
                                        separators=(",", ":")).encode())
            iat = self.epoch()
            claims = {"sub": rng.choice((str(uuid4_from(rng)), f"usr_{ulid_from(rng)}")), "iat": iat,
                      "exp": iat + rng.choice((900, 3600, 86400)),
                      "scope": rng.choice(("orders:read", "openid"))}
            payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
            return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"
        if family == "order_number":
            style = rng.randrange(4)
            if style == 0:
                return _not_luhn(_digits(rng, rng.randint(6, 12)))
            if style == 1:
                return f"ORD-{rng.randint(2019, 2026)}-{rng.randint(1, 999999):06d}"
            if style == 2:
                return f"#{_not_luhn(_digits(rng, rng.randint(7, 10)))}"
            return f"{rng.choice(('A', 'B', 'W'))}{rng.randint(10, 99)}-{rng.randint(1000000, 9999999)}"
        if family == "sku":
            style = rng.randrange(4)
            size = rng.choice(("XS", "S", "M", "L", "XL", "XXL"))
            if style == 0:
                return f"SKU-{rng.randint(10000, 99999)}-{size}"
            if style == 1:
                letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
                return f"{letters}-{rng.randint(1000, 9999)}-{rng.randint(100, 999)}"
            if style == 2:
                item = rng.choice(("TSHIRT", "HOODIE", "MUG", "CAP"))
                colour = rng.choice(("BLK", "WHT", "RED"))
                return f"{item}-{colour}-{size}"
            from stdnum import ean

            for _ in range(50):
                body = _digits(rng, 12, lead=rng.choice(("400", "590", "301", "871", "450", "690")))
                code = body + ean.calc_check_digit(body)
                if not luhn_ok(code):
                    return code
            return f"SKU-{rng.randint(10000, 99999)}-{size}"
        if family == "epoch_s":
            return str(self.epoch())
        if family == "epoch_ms":
            return str(self.epoch() * 1000 + rng.randint(0, 999))
        if family == "iso_timestamp":
            return _iso(self.epoch(), rng)
        if family == "iso_date":
            d = datetime.fromtimestamp(self.epoch(), UTC).date()
            return d.isoformat() if rng.random() < 0.8 else d.strftime("%Y%m%d")
        if family == "price":
            return self._price()
        if family == "semver":
            major, minor, patch = rng.randint(0, 12), rng.randint(0, 30), rng.randint(0, 40)
            return rng.choice((f"{major}.{minor}.{patch}", f"v{major}.{minor}.{patch}",
                               f"v{major}.0.0-rc.{rng.randint(1, 5)}",
                               f"{major}.{minor}.{patch}-beta.{patch}",
                               f"{major}.{minor}.{patch}+build.{rng.randint(1, 999)}"))
        if family == "tracking":
            return self._tracking()
        if family == "isbn":
            return self._isbn()
        if family == "locale_text":
            return self.rng.choice(_NUMBER_TEXT[self.lang]).format(
                qty=rng.randint(2, 250), year=rng.randint(1990, 2026),
                pct=rng.choice((5, 10, 15, 20, 25, 30)),
                days=rng.randint(1, 14), kg=f"{rng.uniform(0.2, 25):.1f}", w=rng.randint(10, 120),
                h=rng.randint(5, 80))
        raise ValueError(f"unknown negative family {family!r}")

    def _price(self) -> str:
        rng = self.rng
        amount = rng.choice((rng.uniform(1, 99), rng.uniform(100, 9999)))
        whole, cents = int(amount), round((amount - int(amount)) * 100) % 100
        en = f"{whole:,}.{cents:02d}"
        eu = en.replace(",", " ").replace(".", ",").replace(" ", ".")
        return rng.choice({
            "US": (f"${en}", f"{whole}.{cents:02d}", f"USD {en}"),
            "GB": (f"£{en}", f"{whole}.{cents:02d}", f"GBP {en}"),
            "DE": (f"€ {eu}", f"{eu} €", f"{whole}.{cents:02d}"),
            "FR": (f"{eu} €", f"{whole},{cents:02d} EUR"),
            "ES": (f"{eu} €", f"€{eu}"), "BR": (f"R$ {eu}", f"R${eu}"),
            "JP": (f"¥{whole * 10:,}", f"{whole * 10:,}円"), "IN": (f"₹{whole:,}", f"Rs. {en}"),
            "CN": (f"¥{en}", f"{en}元", f"CNY {en}"), "RU": (f"{whole:,} ₽".replace(",", " "), f"{eu} руб."),
        }[self.country])

    def _tracking(self) -> str:
        rng = self.rng
        style = rng.randrange(5)
        if style == 0:  # UPS 1Z: shipper (6), service (2), package (7), check digit
            body = "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(6))
            body += rng.choice(("01", "02", "03", "12", "13"))
            body += "".join(rng.choice("0123456789") for _ in range(7))
            total = 0
            for i, ch in enumerate(body):
                v = int(ch) if ch.isdigit() else (ord(ch) - 63) % 10
                total += v * 2 if i % 2 else v
            return f"1Z{body}{(10 - total % 10) % 10}"
        if style == 1:
            return _not_luhn(_digits(rng, 12))
        if style == 2:
            return _not_luhn(_digits(rng, 15))
        if style == 3:
            return _digits(rng, 20)
        token = _digits(rng, 22, lead=rng.choice(("9400", "9205", "9361")))
        return _group(token, (4,) * 5, " ") if rng.random() < 0.3 else token

    def _isbn(self) -> str:
        from stdnum import ean, isbn

        rng = self.rng
        if rng.random() < 0.6:
            lead = rng.choice(("9780", "9781", "9783", "9782", "97910", "9784", "9785"))
            body = _digits(rng, 12, lead=lead)
            number = body + ean.calc_check_digit(body)
        else:
            body = _digits(rng, 9, lead=rng.choice(("0", "1", "3", "2", "4", "5")))
            check = sum((10 - i) * int(d) for i, d in enumerate(body)) % 11
            number = body + ("X" if (11 - check) % 11 == 10 else str((11 - check) % 11))
        if rng.random() < 0.6:
            try:
                return str(isbn.format(number))
            except Exception:  # noqa: BLE001 - an unassigned range cannot be hyphenated: keep it bare
                return number
        return number

    # -- containers -----------------------------------------------------------------------------

    def json_obj(self, slot: str, token: str, *, numeric_ok: bool, text_slot: str) -> dict[str, Any]:
        rng = self.rng
        value: Any = token
        if numeric_ok and token.isdigit() and token[0] != "0" and rng.random() < 0.4:
            value = int(token)
        shape = rng.randrange(3)
        if text_slot == "text":  # the token is itself a sentence
            return {"note": token, "ticket": f"TCK-{rng.randint(10000, 999999)}", "ts": self.epoch()}
        if shape == 0:
            filled = self.template(text_slot).format(x=token)
            return {"note": filled, "order_id": rng.randint(100000, 99999999), "ts": self.epoch()}
        if shape == 1:
            obj: dict[str, Any] = {"event": rng.choice(("support_message", "profile_update", "checkout")),
                                   rng.choice(_JSON_KEYS[slot]): value,
                                   "channel": rng.choice(("web", "ios", "android", "email"))}
            if rng.random() < 0.5:
                obj["client_ts_ms"] = self.epoch() * 1000 + rng.randint(0, 999)
            return obj
        return {"customer": {"message": self.template(text_slot).format(x=token)},
                "cart": {"items": rng.randint(1, 6), "total": round(rng.uniform(5, 500), 2)},
                "lang": self.locale}

    def html_snippet(self, enc: str, label: str, text_slot: str, *, mailto: bool) -> str:
        rng = self.rng
        style = rng.randrange(4 if mailto else 3)
        if style == 0:
            template = "{x}" if text_slot == "text" else self.template(text_slot)
            before, _, after = template.partition("{x}")
            return f"<p>{html.escape(before)}{enc}{html.escape(after)}</p>"
        if style == 1:
            return f'<tr><td class="label">{label}</td><td class="value">{enc}</td></tr>'
        if style == 2:
            return f'<div class="msg"><span data-field="{label}">{enc}</span></div>'
        return f'<a href="mailto:{enc}">{enc}</a>'

    def place(self, token: str, encoding: str, slot: str, *, text_slot: str, numeric_ok: bool = False,
              mailto: bool = False) -> str:
        """Put ``token`` (encoded) into a container text of a realistic shape."""
        rng = self.rng
        if encoding == "json_escape":
            text = json_escaped(self.json_obj(slot, token, numeric_ok=numeric_ok, text_slot=text_slot), rng)
            if rng.random() < 0.25:
                text = f"{_iso(self.epoch(), rng)} INFO webhook delivered payload={text}"
            return text
        enc = encode_token(token, encoding, rng)
        param = rng.choice(_PARAMS[slot] if slot in _PARAMS else _JSON_KEYS[slot])
        if encoding == "html_entity":
            return self.html_snippet(enc, param, text_slot, mailto=mailto and "@" in token)
        if encoding in ("url_component", "form", "double_url"):
            path_ok = encoding != "form"
            where = rng.randrange(4)
            if where == 0:
                return self.url(param, enc, path_ok=path_ok)
            if where == 1:
                return self.log_line(path=self.url(param, enc, path_ok=path_ok, host=False))
            if where == 2:
                return json.dumps({"referrer": self.url(param, enc, path_ok=path_ok), "ts": self.epoch()},
                                  ensure_ascii=False)
            return self.chat(self.url(param, enc, path_ok=path_ok))
        filled = enc if text_slot == "text" else self.template(text_slot).format(x=enc)
        if encoding == "fullwidth":
            if rng.random() < 0.6:
                return self.chat(filled)
            obj = self.json_obj(slot, enc, numeric_ok=False, text_slot=text_slot)
            return json.dumps(obj, ensure_ascii=False)
        # raw
        where = rng.randrange(4)
        if where == 0:
            return self.chat(filled)
        if where == 1:
            return json.dumps(self.json_obj(slot, enc, numeric_ok=numeric_ok, text_slot=text_slot),
                              ensure_ascii=False)
        if where == 2:
            return self.log_line(msg=filled)
        if re.search(r"\s", enc):
            return self.chat(filled)
        return self.url(param, enc, path_ok=True)

    def positive(self, kind: str, form: str, encoding: str) -> Sample:
        token, values, used = self.make(kind, form)
        for _ in range(5):  # a card number typed with spaces is what makes percent-encoding show
            if kind != "card" or encoding not in ("url_component", "form", "double_url") or " " in token:
                break
            token, values, used = self.make(kind, form)
        numeric_ok = kind in ("card", "phone") and token.isdigit()
        text = self.place(token, encoding, kind, text_slot=kind, numeric_ok=numeric_ok,
                          mailto=kind == "email")
        return Sample(text=text, kind=kind, encoding=encoding, values=values, negative=None,
                      locale=self.locale, form=used)

    def negative(self, family: str, encoding: str) -> Sample:
        token = self.negative_token(family)
        numeric_ok = family in ("order_number", "epoch_s", "epoch_ms")
        text_slot = "text" if family == "locale_text" else "ref"
        text = self.place(token, encoding, family, text_slot=text_slot, numeric_ok=numeric_ok)
        return Sample(text=text, kind=None, encoding=encoding, values=(), negative=family,
                      locale=self.locale, form=family)


# ---------------------------------------------------------------------------------------------------
# 1. the detection corpus

def detection_corpus(seed: int = 0, per_locale: int = 40,
                     locales: Sequence[str] = LOCALES) -> list[Sample]:
    """``per_locale`` samples for each locale: 7 in 10 positives, 3 in 10 hard negatives.

    Positives cycle over the kinds; within a kind, over every (form, encoding) pair
    in a seeded order, so that ~6 * 91 positives cover every pair.  Negatives cycle
    over every (family, encoding) pair likewise (133 pairs).
    """
    if per_locale < 0:
        raise ValueError("per_locale must be >= 0")
    plan_rng = random.Random(f"pseudozone-corpus-plan:{seed}")
    plans: dict[str, list[tuple[str, str]]] = {}
    for kind in KINDS:
        pairs = [(form, enc) for form in FORMS[kind] for enc in ENCODINGS]
        plan_rng.shuffle(pairs)
        plans[kind] = pairs
    negatives = [(fam, enc) for fam in NEGATIVE_FAMILIES for enc in ENCODINGS]
    plan_rng.shuffle(negatives)
    done = dict.fromkeys(KINDS, 0)
    n_pos = n_neg = 0
    out: list[Sample] = []
    for locale in locales:
        gen = _Gen(locale, seed)
        for i in range(per_locale):
            if i % 10 < 7:
                kind = KINDS[n_pos % len(KINDS)]
                n_pos += 1
                form, enc = plans[kind][done[kind] % len(plans[kind])]
                done[kind] += 1
                out.append(gen.positive(kind, form, enc))
            else:
                family, enc = negatives[n_neg % len(negatives)]
                n_neg += 1
                out.append(gen.negative(family, enc))
    return out


def write_sample(path: Path, *, seed: int = SAMPLE_SEED, per_locale: int = SAMPLE_PER_LOCALE) -> int:
    """Write ``detection_corpus(seed, per_locale)`` as JSON lines; returns the number of samples."""
    samples = detection_corpus(seed=seed, per_locale=per_locale)
    text = "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(samples)


def load_sample(path: Path) -> list[Sample]:
    with open(path, encoding="utf-8") as fh:
        return [Sample.from_dict(json.loads(line)) for line in fh if line.strip()]


# ---------------------------------------------------------------------------------------------------
# 2. a landing dataset with planted truth

DEFAULT_TENANTS: dict[str, tuple[str, ...]] = {
    "northwind": ("en_US", "en_GB", "hi_IN"),
    "rheinmarkt": ("de_DE", "fr_FR", "es_ES"),
    "sakura-mart": ("ja_JP", "zh_CN", "en_US"),
    "mercado.sul": ("pt_BR", "es_ES", "ru_RU"),
}
EVENT_NAMES = ("page_view", "page_view", "page_view", "search", "add_to_cart", "checkout", "purchase",
               "login", "app_open", "support_message")
_API_PATHS = ("/api/v1/orders", "/api/v1/products?page={n}&per_page=50", "/api/v2/cart/items", "/healthz",
              "/graphql", "/api/v1/auth/token", "/.well-known/openid-configuration",
              "/static/js/app.{h}.js", "/api/v1/orders/{order}", "/api/v1/search?q={q}&sort=price_asc")


@dataclass(frozen=True)
class Subject:
    """A known data subject: a profile row's id and PII as written to the profiles batch."""

    tenant_id: str
    user_id: str
    locale: str
    email: str
    full_name: str
    phone: str | None


@dataclass(frozen=True)
class Plant:
    """One PII value planted in one free-text cell (or a profile's PII column)."""

    dataset: str
    tenant_id: str
    file: str  # relative to the landing zone
    column: str
    row_key: str  # user_id, event_id or request_id of the row
    kind: str
    value: str
    encoding: str
    form: str
    subject: str | None  # user_id of the known subject the value belongs to, None if unrelated


@dataclass
class PlantedTruth:
    """What ``landing_dataset`` wrote.

    ``values``: every PII value planted in free text (as planted, before encoding; an
    obfuscated email as the address it spells) plus every profile's email, full_name,
    phone, street_address and city.  ``files``: the landing files; ``rows``: rows per
    dataset; ``plants``: where each value went (``Plant.column`` is a profile PII column
    or a free-text column); ``subjects``: the profiles.
    """

    values: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    subjects: list[Subject] = field(default_factory=list)
    plants: list[Plant] = field(default_factory=list)

    def known_in_free_text(self, kind: str | None = None, dataset: str | None = None) -> set[str]:
        """Values of known subjects planted in free text (optionally of one kind / dataset)."""
        return {p.value for p in self.plants
                if p.subject is not None and p.column not in _PII_COLUMNS
                and (kind is None or p.kind == kind) and (dataset is None or p.dataset == dataset)}


_PII_COLUMNS = ("email", "full_name", "phone", "street_address", "city")
_ENC_WEIGHTS = {"raw": 40, "url_component": 15, "form": 8, "double_url": 5, "json_escape": 15,
                "html_entity": 6, "fullwidth": 11}


class _Row(dict[str, Any]):
    """A row's cells, by contract column name (Python values: datetime, date, bool, int, str)."""


@dataclass
class _Tenant:
    tenant_id: str
    index: int
    gens: dict[str, _Gen]
    rng: random.Random
    subjects: list[Subject] = field(default_factory=list)
    devices: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # uid -> (anon, ip, ua)


def _enc(rng: random.Random) -> str:
    return rng.choices(list(_ENC_WEIGHTS), weights=list(_ENC_WEIGHTS.values()))[0]


def _phone_variant(gen: _Gen, phone: str) -> str:
    """The subject's own number in another common format (as typed into a chat, say)."""
    import phonenumbers

    try:
        num = phonenumbers.parse(phone, gen.country)
    except phonenumbers.NumberParseException:
        return phone
    if not phonenumbers.is_valid_number(num):
        return phone
    fmt = gen.rng.choice((phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164,
                          phonenumbers.PhoneNumberFormat.NATIONAL))
    return str(phonenumbers.format_number(num, fmt))


def _subject_value(gen: _Gen, subject: Subject, kind: str) -> tuple[str, str, str]:
    """(token, value, form) for one of a known subject's own values."""
    rng = gen.rng
    if kind == "name":
        return subject.full_name, subject.full_name, "profile"
    if kind == "phone" and subject.phone:
        value = _phone_variant(gen, subject.phone) if rng.random() < 0.4 else subject.phone
        return value, value, "profile" if value == subject.phone else "reformatted"
    email = subject.email
    if rng.random() < 0.15 and email.count("@") == 1:
        local, dom = email.split("@")
        form = rng.choice(EMAIL_OBFUSCATIONS)
        token = {"fullwidth_at": f"{local}＠{dom}", "paren_at": f"{local}(at){dom}",
                 "bracket_at": f"{local} [at] {dom.replace('.', ' [dot] ')}",
                 "word_at": f"{local} at {dom.replace('.', ' dot ')}"}[form]
        return token, email, form
    return email, email, "profile"


def _text_for(gen: _Gen, token: str, kind: str, encoding: str) -> tuple[str, Any]:
    """(free text to put in a JSON note, or a value for a JSON field) for ``token`` under ``encoding``."""
    rng = gen.rng
    enc = encode_token(token, encoding, rng)
    if encoding == "html_entity":
        before, _, after = gen.template(kind).partition("{x}")
        return "message_html", f"<p>{html.escape(before)}{enc}{html.escape(after)}</p>"
    if encoding in ("url_component", "form", "double_url"):
        return "referrer", gen.url(rng.choice(_PARAMS[kind]), enc, path_ok=encoding != "form")
    return rng.choice(("note", "message", "comment")), gen.template(kind).format(x=enc)


def _one_line(text: str) -> str:
    """Faker's en_GB addresses may span lines; exports write them as one (CSV readers need that)."""
    return re.sub(r"\s*\n\s*", ", ", text)


def _user_id(tenant: _Tenant) -> str:
    rng = tenant.rng
    if tenant.index % 2 == 0:
        return str(uuid4_from(rng))
    return f"usr_{ulid_from(rng, rng.uniform(_EPOCH_LO - 86400 * 700, _EPOCH_LO + 86400 * 600))}"


def _profiles(tenant: _Tenant, n: int, weights: Sequence[float]) -> list[tuple[_Row, list[Plant]]]:
    rng = tenant.rng
    locales = list(tenant.gens)
    out: list[tuple[_Row, list[Plant]]] = []
    for _ in range(n):
        locale = rng.choices(locales, weights=weights)[0]
        gen = tenant.gens[locale]
        fake = gen.fake
        uid = _user_id(tenant)
        email = gen._ascii_email() if rng.random() < 0.85 else gen.email(rng.choice(("plus", "upper")))[0]
        full_name = str(fake.name())
        phone = str(fake.phone_number()) if rng.random() < 0.9 else None
        subject = Subject(tenant.tenant_id, uid, locale, email, full_name, phone)
        tenant.subjects.append(subject)
        tenant.devices[uid] = [
            (str(uuid4_from(rng)), str(fake.ipv6() if rng.random() < 0.2 else fake.ipv4_public()),
             str(fake.user_agent()))
            for _ in range(rng.randint(1, 3))]
        birth = date(1940, 1, 1) + timedelta(days=rng.randint(0, 365 * 67))
        signup = datetime.fromtimestamp(rng.uniform(_EPOCH_LO - 86400 * 700, _EPOCH_LO + 86400 * 600), UTC)
        row = _Row(tenant_id=tenant.tenant_id, user_id=uid, email=email, full_name=full_name, phone=phone,
                   street_address=_one_line(str(fake.street_address())) if rng.random() < 0.95 else None,
                   city=str(fake.city()), postal_code=str(fake.postcode()), country=gen.country,
                   birth_date=birth if rng.random() < 0.85 else None, signup_ts=signup.replace(microsecond=0),
                   marketing_opt_in=rng.random() < 0.4 if rng.random() < 0.9 else None)
        plants: list[Plant] = []
        attrs: dict[str, Any] = {"crm_id": str(uuid4_from(rng)),
                                 "tier": rng.choice(("gold", "silver", "basic")),
                                 "last_order": gen.negative_token("order_number"),
                                 "app_version": gen.negative_token("semver")}
        if rng.random() < 0.3:
            kind = rng.choice(("name", "email", "phone")) if phone else rng.choice(("name", "email"))
            token, value, form = _subject_value(gen, subject, kind)
            encoding = rng.choices(("raw", "json_escape", "fullwidth", "html_entity"),
                                   weights=(6, 2, 1, 1))[0]
            key, text = _text_for(gen, token, kind, "raw" if encoding == "json_escape" else encoding)
            attrs["signature" if kind == "name" else key] = text
            plants.append(Plant("profiles", tenant.tenant_id, "", "attributes_json", uid, kind, value,
                                encoding, form, uid))
            row["attributes_json"] = json_escaped(attrs, rng) if encoding == "json_escape" else json.dumps(
                attrs, ensure_ascii=False)
        else:
            row["attributes_json"] = json.dumps(attrs, ensure_ascii=False) if rng.random() < 0.9 else None
        for col, kind in (("email", "email"), ("full_name", "name"), ("phone", "phone"),
                          ("street_address", "street_address"), ("city", "city")):
            if row[col]:
                plants.append(Plant("profiles", tenant.tenant_id, "", col, uid, kind, str(row[col]), "raw",
                                    "column", uid))
        out.append((row, plants))
    return out


def _properties(gen: _Gen, event_name: str, when: datetime) -> dict[str, Any]:
    rng = gen.rng
    cur = CURRENCY[gen.country]
    client = when.timestamp() - rng.uniform(0, 5)  # the client's clock, a little behind
    ts_key, ts = rng.choice((("ts", int(client)), ("client_ts_ms", int(client * 1000))))
    if event_name == "page_view":
        props: dict[str, Any] = {"title": str(gen.fake.sentence(nb_words=4)),
                                 "scroll_depth": rng.choice((25, 50, 75, 100))}
    elif event_name == "search":
        props = {"query": " ".join(gen.fake.words(rng.randint(1, 3))), "results": rng.randint(0, 400)}
    elif event_name == "add_to_cart":
        props = {"sku": gen.negative_token("sku"), "qty": rng.randint(1, 5),
                 "price": round(rng.uniform(2, 400), 2), "currency": cur}
    elif event_name == "checkout":
        props = {"cart_id": uuid4_from(rng).hex, "items": [
            {"sku": gen.negative_token("sku"), "qty": rng.randint(1, 3), "price": gen.negative_token("price")}
            for _ in range(rng.randint(1, 3))], "coupon": rng.choice((None, "WELCOME10", "BF2026"))}
    elif event_name == "purchase":
        order: Any = gen.negative_token("order_number")
        if order.isdigit() and rng.random() < 0.5:
            order = int(order)
        props = {"order_id": order, "total": round(rng.uniform(5, 2500), 2), "currency": cur,
                 "payment_method": rng.choice(("card", "paypal", "pix", "sepa", "konbini", "upi"))}
    elif event_name == "login":
        props = {"method": rng.choice(("password", "sso", "magic_link", "passkey")),
                 "mfa": rng.random() < 0.5}
    elif event_name == "app_open":
        props = {"app_version": gen.negative_token("semver"), "build": rng.randint(100, 99999),
                 "push_token": gen.negative_token("base64")}
    else:
        props = {"ticket": f"TCK-{rng.randint(10000, 999999)}", "text": gen.sentence()}
    props[ts_key] = ts
    return props


def _page_url(gen: _Gen, tenant_id: str) -> str:
    rng = gen.rng
    host = f"{rng.choice(('www', 'shop', 'm'))}.{tenant_id.replace('.', '-')}.example"
    path = rng.choice((
        "/", "/cart", "/checkout/payment", f"/{gen.locale.replace('_', '-').lower()}/products/"
        f"{quote(str(gen.fake.word()))}-{rng.randint(10000, 99999)}",
        f"/search?q={quote_plus(str(gen.fake.word()))}",
        f"/account/orders/{gen.negative_token('order_number').lstrip('#')}",
        f"/blog/{rng.randint(2021, 2026)}/{rng.randint(1, 12):02d}/{quote(str(gen.fake.word()))}"))
    params = gen.filler_params()
    if rng.random() < 0.15:
        params.append((rng.choice(("gclid", "fbclid")), _b64url(rng.randbytes(rng.randint(18, 40)))))
    if not params:
        return f"https://{host}{path}"
    return f"https://{host}{path}{'&' if '?' in path else '?'}{'&'.join(f'{k}={v}' for k, v in params)}"


def _unrelated(gen: _Gen) -> tuple[str, str, str, str]:
    """(kind, token, value, form) of PII that belongs to nobody in the tenant."""
    kind = gen.rng.choice(("email", "phone", "ip", "card", "iban"))
    form = gen.rng.choice(FORMS[kind])
    token, values, used = gen.make(kind, form)
    return kind, token, values[0], used


def _events(tenant: _Tenant, n: int, start: datetime, days: int) -> list[tuple[_Row, list[Plant]]]:
    rng = tenant.rng
    out: list[tuple[_Row, list[Plant]]] = []
    span = days * 86400
    for _ in range(n):
        owner = rng.choice(tenant.subjects)
        gen = tenant.gens[owner.locale]
        anon, ip, ua = rng.choice(tenant.devices[owner.user_id])
        logged_in = rng.random() < 0.75
        event_name = rng.choice(EVENT_NAMES)
        ts = start + timedelta(seconds=rng.uniform(0, span))
        event_id = uuid4_from(rng).hex if tenant.index % 2 else ulid_from(rng, ts.timestamp())
        row = _Row(tenant_id=tenant.tenant_id, user_id=owner.user_id if logged_in else None,
                   anonymous_id=anon, event_id=event_id, event_name=event_name, event_ts=ts,
                   session_id=f"{rng.getrandbits(64):016x}",
                   ip=ip, user_agent=ua, page_url=_page_url(gen, tenant.tenant_id))
        props = _properties(gen, event_name, ts)
        plants: list[Plant] = []
        encoding = "raw"
        if rng.random() < 0.10:
            encoding = _enc(rng)
            if rng.random() < 0.6:
                subject = rng.choice(tenant.subjects)  # any subject of the tenant, not only the row's own
                sgen = tenant.gens[subject.locale]
                kind = rng.choice(("name", "email", "phone") if subject.phone else ("name", "email"))
                token, value, form = _subject_value(sgen, subject, kind)
                sid: str | None = subject.user_id
            else:
                sgen = gen
                kind, token, value, form = _unrelated(gen)
                sid = None
            column = "properties_json"
            if encoding in ("url_component", "form", "double_url") and rng.random() < 0.6:
                column = "page_url"
                enc = encode_token(token, encoding, rng)
                sep = "&" if "?" in row["page_url"] else "?"
                row["page_url"] = f"{row['page_url']}{sep}{rng.choice(_PARAMS[kind])}={enc}"
            else:
                key, text = _text_for(sgen, token, kind, "raw" if encoding == "json_escape" else encoding)
                props[key] = text
            plants.append(Plant("events", tenant.tenant_id, "", column, event_id, kind, value, encoding, form,
                                sid))
        row["properties_json"] = json_escaped(props, rng) if encoding == "json_escape" else json.dumps(
            props, ensure_ascii=False)
        out.append((row, plants))
    return out


def _server_logs(tenant: _Tenant, n: int, start: datetime, days: int) -> list[tuple[_Row, list[Plant]]]:
    rng = tenant.rng
    out: list[tuple[_Row, list[Plant]]] = []
    span = days * 86400
    for _ in range(n):
        owner = rng.choice(tenant.subjects)
        gen = tenant.gens[owner.locale]
        _, ip, ua = rng.choice(tenant.devices[owner.user_id])
        scheme = tenant.index % 3
        request_id = (str(uuid4_from(rng)) if scheme == 0 else ulid_from(rng) if scheme == 1
                      else f"{rng.getrandbits(128):032x}")
        path = rng.choice(_API_PATHS).format(
            n=rng.randint(1, 40), h=f"{rng.getrandbits(32):08x}",
            order=gen.negative_token("order_number").lstrip("#"),
            q=quote_plus(str(gen.fake.word())))
        plants: list[Plant] = []
        method = rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE"))
        if rng.random() < 0.10:
            if rng.random() < 0.7:
                subject = rng.choice(tenant.subjects)
                kind = "phone" if subject.phone and rng.random() < 0.35 else "email"
                token = value = subject.phone if kind == "phone" and subject.phone else subject.email
                sid: str | None = subject.user_id
                form = "profile"
            else:
                kind = rng.choice(("email", "phone"))
                forms = ("faker", "free", "plus") if kind == "email" else ("faker", "e164", "intl_plus")
                form = rng.choice(forms)
                token, values, form = gen.make(kind, form)
                value, sid = values[0], None
            encoding = rng.choice(("url_component", "url_component", "form", "double_url", "raw")) \
                if kind == "email" else rng.choice(("url_component", "form"))
            enc = encode_token(token, encoding, rng) if encoding != "raw" else token
            if kind == "email" and rng.random() < 0.4 and encoding != "form":
                path = f"/api/v1/users/{enc}/{rng.choice(('preferences', 'orders', 'consents'))}"
            elif kind == "email":
                path = rng.choice((f"/api/v1/users/lookup?email={enc}",
                                   f"/unsubscribe?e={enc}&t={_b64url(rng.randbytes(18))}"))
            else:
                path = f"/api/v1/verify?phone={enc}&channel={rng.choice(('sms', 'whatsapp', 'voice'))}"
            method = "POST" if kind == "phone" else "GET"
            plants.append(Plant("server_logs", tenant.tenant_id, "", "path", request_id, kind, value,
                                encoding, form, sid))
        ts = start + timedelta(seconds=rng.uniform(0, span))
        row = _Row(tenant_id=tenant.tenant_id, user_id=owner.user_id if rng.random() < 0.65 else "",
                   request_ts=ts, ip=ip, method=method, path=path,
                   status=rng.choice((200, 200, 200, 201, 204, 301, 304, 400, 401, 404, 429, 500)),
                   bytes_sent=rng.randint(0, 250_000), user_agent=ua, request_id=request_id)
        out.append((row, plants))
    return out


def _ts_text(value: datetime, style: int) -> str:
    if style == 0:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == 1:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value.astimezone(timezone(timedelta(hours=1))).isoformat()


_CONTRACTS: dict[str, Any] = {}


def _write(rows: list[_Row], dataset: str, fmt: str, path: Path, rng: random.Random) -> Path:
    import pyarrow as pa

    from pseudozone import contracts, zones
    from pseudozone.landing import ARROW_TYPES

    if dataset not in _CONTRACTS:
        _CONTRACTS[dataset] = contracts.load(dataset)
    contract = _CONTRACTS[dataset]
    if fmt == "parquet":
        schema = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in contract.columns])
        table = pa.table({c.name: pa.array([r.get(c.name) for r in rows], ARROW_TYPES[c.type])
                          for c in contract.columns}, schema=schema)
        return zones.write_parquet(table, path.with_suffix(".parquet"))
    types = {c.name: c.type for c in contract.columns}
    style = rng.randrange(3)

    def text(name: str, value: Any) -> Any:
        if value is None:
            return None
        if types[name] == "timestamp":
            return _ts_text(value, style if fmt == "jsonl" else rng.randrange(3))
        if types[name] == "date":
            return value.isoformat()
        if fmt == "csv" and types[name] == "bool":
            return rng.choice(("true", "True", "TRUE")) if value else rng.choice(("false", "False"))
        return value

    if fmt == "jsonl":
        lines = [json.dumps({k: text(k, v) for k, v in r.items()}, ensure_ascii=False) for r in rows]
        return zones.write_bytes(("\n".join(lines) + "\n").encode(), path.with_suffix(".jsonl"))
    import csv
    import io

    buf = io.StringIO()
    names = list(types)
    rng.shuffle(names)  # column order is the exporter's, not the contract's
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for r in rows:
        writer.writerow(["" if (v := text(n, r.get(n))) is None else v for n in names])
    return zones.write_bytes(buf.getvalue().encode(), path.with_suffix(".csv"))


def _chunks(items: list[Any], parts: int) -> Iterator[list[Any]]:
    size, extra = divmod(len(items), parts)
    i = 0
    for p in range(parts):
        n = size + (1 if p < extra else 0)
        yield items[i:i + n]
        i += n


def landing_dataset(root: Path, *, seed: int = 0, tenants: Mapping[str, Sequence[str]] | None = None,
                    profiles_per_tenant: int = 60, events_per_tenant: int = 600, logs_per_tenant: int = 300,
                    batches: int = 3, start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
                    days: int = 7) -> PlantedTruth:
    """Write landing batches under ``root/landing`` (``root`` is a data root, as ``Settings.root``).

    ``tenants`` maps tenant ids to their subjects' locales (the first is the most common).
    Each dataset of each tenant is split into ``batches`` files, as Parquet, CSV and JSON lines.
    """
    tenants = dict(tenants if tenants is not None else DEFAULT_TENANTS)
    if batches < 1 or profiles_per_tenant < 1:
        raise ValueError("batches and profiles_per_tenant must be >= 1")
    truth = PlantedTruth(rows={"profiles": 0, "events": 0, "server_logs": 0})
    landing = root / "landing"
    formats = ("parquet", "csv", "jsonl")
    for t_index, (tenant_id, locales) in enumerate(tenants.items()):
        unknown = [loc for loc in locales if loc not in COUNTRY]
        if unknown or not locales:
            raise ValueError(f"tenant {tenant_id!r}: locales must be some of {LOCALES}")
        gens = {loc: _Gen(loc, seed, salt=f"landing-{tenant_id}") for loc in locales}
        tenant = _Tenant(tenant_id, t_index, gens, random.Random(f"pseudozone-landing:{seed}:{tenant_id}"))
        weights = [2.0] + [1.0] * (len(locales) - 1)
        datasets = (("profiles", _profiles(tenant, profiles_per_tenant, weights)),
                    ("events", _events(tenant, events_per_tenant, start, days)),
                    ("server_logs", _server_logs(tenant, logs_per_tenant, start, days)))
        truth.subjects.extend(tenant.subjects)
        for d_index, (dataset, rows) in enumerate(datasets):
            for b, chunk in enumerate(_chunks(rows, batches)):
                if not chunk:
                    continue
                fmt = formats[(b + t_index + d_index) % len(formats)]
                stem = f"{dataset}_{start:%Y%m%d}_{b:04d}"
                target = landing / dataset / f"tenant={tenant_id}" / stem
                path = _write([r for r, _ in chunk], dataset, fmt, target, tenant.rng)
                rel = str(path.relative_to(landing))
                truth.files.append(path)
                truth.rows[dataset] += len(chunk)
                for _, plants in chunk:
                    for p in plants:
                        truth.plants.append(Plant(p.dataset, p.tenant_id, rel, p.column, p.row_key, p.kind,
                                                  p.value, p.encoding, p.form, p.subject))
                        truth.values.add(p.value)
    return truth


# ---------------------------------------------------------------------------------------------------
# command line

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pseudozone.corpus",
                                     description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="(re)write the fixed detection-corpus sample as JSON lines")
    s.add_argument("path", type=Path)
    s.add_argument("--seed", type=int, default=SAMPLE_SEED)
    s.add_argument("--per-locale", type=int, default=SAMPLE_PER_LOCALE)
    ld = sub.add_parser("landing", help="write a landing dataset with planted PII under a data root")
    ld.add_argument("root", type=Path)
    ld.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "sample":
        n = write_sample(args.path, seed=args.seed, per_locale=args.per_locale)
        print(f"wrote {n} samples to {args.path}")
    else:
        truth = landing_dataset(args.root, seed=args.seed)
        print(json.dumps({"files": len(truth.files), "rows": truth.rows, "values": len(truth.values)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
