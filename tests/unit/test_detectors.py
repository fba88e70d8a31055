"""The confirming detectors, the reader-like decoding, and JSON/URL-preserving replacement."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from pseudozone.pii import detectors, scan
from pseudozone.pii.normalize import normalize
from pseudozone.validation import detect


def _found(text: str, regions: tuple[str, ...] = detectors.DEFAULT_REGIONS) -> list[tuple[str, str]]:
    doc = normalize(text)
    return [(kind, text[slice(*doc.source_span(s, e))]) for kind, s, e in detectors.find_all(doc.text,
                                                                                           regions=regions)]


POSITIVES = {
    # emails: plus-addressing, Unicode, obfuscations
    "email_plus": ("write to jane.doe+news@example.com today", "email", "jane.doe+news@example.com"),
    "email_unicode": ("josé.müller@exämple.de", "email", "josé.müller@exämple.de"),
    "email_cjk": ("联系 用户@例子.中国 谢谢", "email", "用户@例子.中国"),
    "email_fullwidth_at": ("mail: jane＠example.com", "email", "jane＠example.com"),
    "email_paren_at": ("jane(at)example(dot)com", "email", "jane(at)example(dot)com"),
    "email_bracket_at": ("jane [at] example [dot] org", "email", "jane [at] example [dot] org"),
    "email_words": ("reach me: jane at example dot co dot uk", "email", "jane at example dot co dot uk"),
    # phones: national formats of several countries, extensions, trunk prefix
    "phone_br": ("ligue 84 1246-4390", "phone", "84 1246-4390"),
    "phone_us_ext": ("555-123-4567x89", "phone", "555-123-4567x89"),
    "phone_us_ext_words": ("call (555) 123-4567 ext. 89", "phone", "(555) 123-4567 ext. 89"),
    "card_after_a_number": ("order 2024 4111 1111 1111 1111 ok", "card", "4111 1111 1111 1111"),
    "iban_after_a_uuid": ("fa0e31b8-fcd8-4389-ba42-0f2caadd6734 pay to IT60X0542811101000000123456", "iban",
                          "IT60X0542811101000000123456"),
    "card_maestro_12_after_word": ("Kartennummer: 566922279666", "card", "566922279666"),
    "card_maestro_12_json_key": ('{"card": "676274494621"}', "card", "676274494621"),
    "phone_hash_ext_formatted": ("(555) 123-4567 #89", "phone", "(555) 123-4567 #89"),
    "phone_hash_ext_after_word": ("tel 5551234567 #89", "phone", "5551234567 #89"),
    "phone_de_trunk": ("Tel +49 (0) 9168 820619", "phone", "+49 (0) 9168 820619"),
    "phone_de_parens": ("(06361) 285952", "phone", "(06361) 285952"),
    "phone_de_slash": ("030/1234567", "phone", "030/1234567"),
    "phone_fr": ("au 01 23 45 67 89", "phone", "01 23 45 67 89"),
    "phone_fr_bare": ("rappel 0232781286", "phone", "0232781286"),
    "phone_jp": ("電話 090-1234-5678", "phone", "090-1234-5678"),
    "phone_ru": ("звоните 8 (495) 123-45-67", "phone", "8 (495) 123-45-67"),
    "phone_cn_mobile": ("手机13812345678", "phone", "13812345678"),
    "phone_00": ("0049 170 1234567", "phone", "0049 170 1234567"),
    "phone_dots": ("206.269.0743x9150", "phone", "206.269.0743x9150"),
    "phone_context_bare": ('{"phone": 5551234567}', "phone", "5551234567"),
    "phone_en_dash": ("call 030–1234–5678 today", "phone", "030–1234–5678"),
    "phone_middle_dot": ("tel 030·1234·5678", "phone", "030·1234·5678"),
    "phone_arabic_indic": ("اتصل +٤٩ ٣٠ ١٢٣٤٥٦٧٨", "phone", "+٤٩ ٣٠ ١٢٣٤٥٦٧٨"),
    "phone_comma_list_intl": ("+49 30 12345678,+33 1 42 68 53 00", "phone", "+33 1 42 68 53 00"),
    "phone_comma_list_national": ("phones: 030 1234567,030 7654321", "phone", "030 7654321"),
    "phone_csv_field": ('42,"Mario Rossi",+39 3974364888,2024-01-01', "phone", "+39 3974364888"),
    "phone_csv_national": ('42,"Mario Rossi",0543367289,2024-01-01', "phone", "0543367289"),
    "phone_csv_parens": ('42,"Mario Rossi",(0459)-967936,2024-01-01', "phone", "(0459)-967936"),
    "phone_csv_dashed": ('42,"Mario Rossi",806-222-1405,2024-01-01', "phone", "806-222-1405"),
    "phone_csv_then_quantity": ("Smith,030 1234567,12,x", "phone", "030 1234567"),
    "phone_code_in_parens": ("Tel. (+30) 694 994 0700", "phone", "(+30) 694 994 0700"),
    "phone_plus_then_parens": ("tel +(370) 612 34567", "phone", "+(370) 612 34567"),
    # IPs
    "ipv4": ("from 203.0.113.45 at noon", "ip", "203.0.113.45"),
    "ipv4_port": ("peer 203.0.113.45:8443", "ip", "203.0.113.45"),
    "ipv6_compressed": ("v6 2001:db8:85a3::8a2e:370:7334 ok", "ip", "2001:db8:85a3::8a2e:370:7334"),
    "ipv6_full": ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    "ipv6_mapped": ("client ::ffff:192.0.2.128 seen", "ip", "::ffff:192.0.2.128"),
    "ipv6_zone": ("link fe80::1ff:fe23:4567:890a%eth0 up", "ip", "fe80::1ff:fe23:4567:890a%eth0"),
    "ipv6_bracket_port": ("http://[2001:db8::1]:8080/x", "ip", "2001:db8::1"),
    # cards: Luhn + issuer prefix and length, any grouping
    "card_visa_spaces": ("card 4539 1488 0343 6467", "card", "4539 1488 0343 6467"),
    "card_visa_dots": ("card 4539.1488.0343.6467", "card", "4539.1488.0343.6467"),
    "card_amex": ("amex 3782-822463-10005", "card", "3782-822463-10005"),
    "card_mc_plain": ("5555555555554444", "card", "5555555555554444"),
    "card_double_spaces": ("card 4539  1488  0343  6467 ok", "card", "4539  1488  0343  6467"),
    "card_mixed_separators": ("card 4539-1488 0343.6467 ok", "card", "4539-1488 0343.6467"),
    "card_spaced_dashes": ("amex 3782 - 822463 - 10005", "card", "3782 - 822463 - 10005"),
    "card_csv_field": ("John Smith,4111 1111 1111 1111,12/27", "card", "4111 1111 1111 1111"),
    "card_csv_bare": ("7,4569678846864195,ok", "card", "4569678846864195"),
    "card_unionpay_81": ("card 8124483129160562 ok", "card", "8124483129160562"),
    # IBANs: mod-97 and the country's length
    "iban_gb_grouped": ("GB82 WEST 1234 5698 7654 32 is mine", "iban", "GB82 WEST 1234 5698 7654 32"),
    "iban_de_plain": ("iban=DE89370400440532013000", "iban", "DE89370400440532013000"),
    "iban_fr": ("FR14 2004 1010 0505 0001 3M02 606", "iban", "FR14 2004 1010 0505 0001 3M02 606"),
    "iban_dots": ("iban DE89.3704.0044.0532.0130.00 ok", "iban", "DE89.3704.0044.0532.0130.00"),
    # emails glued to a log key's '_'
    "email_underscore": ("user_zelda.fitz@example.org_2024", "email", "user_zelda.fitz@example.org"),
    "email_leading_underscore": ("from _anna@example.it", "email", "_anna@example.it"),
    # a name ending like a standard number's name is no such name (Jean, Sean, Korean)
    "phone_after_jean": ("Appelez Jean 06 12 34 56 78", "phone", "06 12 34 56 78"),
    "card_after_sean": ("Sean: 5555 5555 5555 4444", "card", "5555 5555 5555 4444"),
    "iban_glued_bic": ("IT60X0542811101000000123456BIC", "iban", "IT60X0542811101000000123456"),
}

ENCODED = {
    "url_component": ("/c?email=zelda.plantedpii%40example.org&x=1", "email",
                      "zelda.plantedpii%40example.org"),
    "url_double": ("/c?e=zelda%2540example.org", "email", "zelda%2540example.org"),
    "url_phone_plus": ("/verify?phone=%2B442079460999", "phone", "%2B442079460999"),
    "url_phone_parens": ("/c?p=%2806361%29%20285952", "phone", "%2806361%29%20285952"),
    "form_plus_space": ("/c?a=1&t=030+1234567", "phone", "030+1234567"),
    "json_escape": ('{"m": "a\\u0040example.com"}', "email", "a\\u0040example.com"),
    "html_entity": ("jane&#64;example.com", "email", "jane&#64;example.com"),
    "html_named": ("jane&commat;example.com", "email", "jane&commat;example.com"),
    "fullwidth_digits": ("ＴＥＬ ０３０ １２３４５６７", "phone", "０３０ １２３４５６７"),
    # chains: an entity escaped twice, a percent-encoded entity, a numeric entity without ';'
    "html_twice": ("jane&amp;#64;example.com", "email", "jane&amp;#64;example.com"),
    "url_of_entity": ("/c?m=jane%26%2364%3Bexample.com", "email", "jane%26%2364%3Bexample.com"),
    "entity_no_semicolon": ("jane&#64example.com", "email", "jane&#64example.com"),
    "json_of_percent": ('{"u": "/c?m=jane\\u002540example.com"}', "email", "jane\\u002540example.com"),
    # NFKC by character cluster: a decomposed accent stays with its letter
    "decomposed_accent": ("mail jose\u0301@example.com", "email", "jose\u0301@example.com"),
    "bidi_control": ("mail anna\u202e@example.de", "email", "anna\u202e@example.de"),
    "fullwidth_iban": ("ＩＴ６０Ｘ０５４２８１１１０１００００００１２３４５６", "iban",
                       "ＩＴ６０Ｘ０５４２８１１１０１００００００１２３４５６"),
}

NEGATIVES = [
    "550e8400-e29b-41d4-a716-446655440000",            # uuid4
    "550e8400e29b41d4a716446655440000",                # uuid4 hex
    "ab12cdef34567890ab12cdef34567890",                # 32 hex starting like an IBAN
    "01HF3Q5ZK8X4T9W2N7M6B5V4C3",                      # ULID
    "2QWe4RTyUiOp7aSdFgHjKlZxCvB",                     # KSUID-like
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",        # SHA-1
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # SHA-256
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc_DEF-123",  # JWT shape
    '{"order_id": 48219374651, "ts": 1712345678, "ts_ms": 1712345678123, "price": 19.99}',
    "ORD-2024-000123 #100234567 SKU-48213-XL AB-1234-567",
    "2024-03-05T12:34:56Z 2024-03-05 05.03.2024 12/31/2024 12:34:56",
    "total € 1.299,00 or $1,299.00 or ¥12,800",
    "v2.0.0-rc.1 1.24.3 10.4.12 Chrome/120.0.6099.109 Safari/537.36",
    "1Z999AA10123456784 9400111899223856925046 123456789012",
    "ISBN 978-3-16-148410-0 and 0-306-40615-2",
    "look at shop.example.com for icon@2x.png",
    "std::vector<int> at 10:30",
    "MAC 00:1a:2b:3c:4d:5e",
    "https://shop.example.com/orders/15163226939?ts=1793973303",  # an order id shaped like a CN mobile
    "https://shop.example.com/orders/[phone]?ts=1793973303",      # our own token is no phone context
    "1,234,567 units, 5,12345678 ratio, 48,0588443 lat, 123 456 789,05 EUR",  # commas in numbers
    "2020–2024 · 12·5 · pages 120–135",                # en-dashes and middle dots between numbers
    "build 2024-01-15 1234 5678 9012",                 # a date then groups: Luhn fails, no card
    "Firefox/128.0.2.1 Python 3.11.4.1 build 1.2.3.4",  # four-part versions
    "13.28.201.6570 build 2023.10.23.5758",            # dotted builds
    "std::vector<int> v; a::b::c(); dead::beef",       # scope operators
    "routes 10.0.0.0/8 192.168.0.0/16 ff00::/8 2001:db8::/32",  # networks
    "Ref: RF18 5390 0754 7034, order 2024-000123-45, Invoice No. 2024/00123/45",
    "ISSN 0317-8471 DOI 10.1000/182 EAN 5901234123457",
    "budget: 125 000 000",
    "git@github.com:acme/repo.git",
    "setup_1.2.3.4.exe libfoo_2.10.3.1.so",            # file versions glued to '_'
    "order 676274494621, ts 4915112345678",            # 12 and 13 bare digits, Luhn-valid: no card word
    '{"order_id": 4512345678908, "ref": 501234567896}',  # 13- and 12-digit order ids passing Luhn
    "771585314 1607285508088 #656396",                 # an epoch, then an order after '#'
    '{"note": "1647007749 #712779 3198763819"}',       # '#' after a bare number is no extension
]


@pytest.mark.parametrize("case", sorted(POSITIVES))
def test_given_a_pii_form_then_its_detector_confirms_it(case: str) -> None:
    text, kind, span = POSITIVES[case]
    assert (kind, span) in _found(text)


@pytest.mark.parametrize("case", sorted(ENCODED))
def test_given_an_encoded_form_then_it_is_found_and_mapped_back_to_the_original_characters(case: str) -> None:
    text, kind, span = ENCODED[case]
    assert (kind, span) in _found(text)


@pytest.mark.parametrize("text", NEGATIVES)
def test_given_a_hard_negative_then_nothing_is_found(text: str) -> None:
    assert _found(text) == []


def test_given_a_luhn_valid_number_without_an_issuer_prefix_then_it_is_not_a_card() -> None:
    assert not detectors.card_issuer_fits("1234567812345670")
    assert _found("id 1234567812345670") == []


def test_given_a_bad_iban_checksum_then_it_is_not_an_iban() -> None:
    assert _found("GB83 WEST 1234 5698 7654 32") == []


def test_given_a_region_without_trunk_prefix_then_its_grouped_eight_digit_numbers_are_phones() -> None:
    # Danish and Norwegian numbers have 8 digits and no trunk 0; under the default regions the
    # same shape stays a number (a count, an amount)
    for text, phone in (("Ring mig på 58 28 60 37", "58 28 60 37"), ("Tel: 94 63 57 29", "94 63 57 29")):
        assert ("phone", phone) in _found(text, regions=("DK", "NO"))
        assert _found(text) == []


def test_a_network_or_a_version_is_no_address_but_a_host_is() -> None:
    assert _found("peer 203.0.113.45/32 and 10.1.2.3/8") == [("ip", "203.0.113.45"), ("ip", "10.1.2.3")]
    assert _found("GET /api/ip/203.0.113.45") == [("ip", "203.0.113.45")]
    assert _found("fe80::1 ::1 2001:db8::1 2a00::1") == [
        ("ip", "fe80::1"), ("ip", "::1"), ("ip", "2001:db8::1"), ("ip", "2a00::1")]
    assert _found("/Admin/Block/203.0.113.9") == [("ip", "203.0.113.9")]
    assert _found("login jane@example.com:hunter2") == [("email", "jane@example.com")]


def test_given_a_bare_digit_run_then_it_is_a_phone_only_with_context_or_a_known_shape() -> None:
    assert _found("order 5551234567 shipped") == []
    assert _found("order 5551234567 shipped", regions=("US",)) == []
    assert _found("tel: 5551234567", regions=("US",)) == [("phone", "5551234567")]
    assert _found("13812345678", regions=("DE",)) == []  # a Chinese mobile only where CN applies


def test_given_regions_then_national_formats_follow_them() -> None:
    # a German national number is read under DE; where only the US applies it is too short
    assert _found("030 12345", regions=("DE",)) == [("phone", "030 12345")]
    assert _found("030 12345", regions=("US",)) == []


def test_normalize_maps_every_decoded_character_to_its_source() -> None:
    doc = normalize("a%2540b&#46;c\\u00e9")
    assert doc.text == "a@b.cé"
    assert doc.source_span(1, 2) == (1, 6)    # '@' came from %2540
    assert doc.source_span(3, 4) == (7, 12)   # '.' came from &#46;
    assert doc.source_span(5, 6) == (13, 19)  # 'é' came from \u00e9


def test_given_json_then_scrubbed_json_still_parses_and_numbers_become_strings() -> None:
    texts = ['{"phone": 5551234567, "order": 48219374651, "note": "mail a@b.example.com", "ts": 1712345678}',
             '{"ip": "203.0.113.45", "card": 4539148803436467, "list": [1, 2, 3]}',
             '["+49 30 1234567", {"e": "x\\u0040example.org"}]']
    out = scan.scrub(pa.array(texts)).to_pylist()
    parsed = [json.loads(o) for o in out]
    assert parsed[0] == {"phone": "[phone]", "order": 48219374651, "note": "mail [email]", "ts": 1712345678}
    assert parsed[1] == {"ip": "[ip]", "card": "[card]", "list": [1, 2, 3]}
    assert parsed[2] == ["[phone]", {"e": "[email]"}]


def test_given_urls_then_scrubbed_urls_still_parse() -> None:
    urls = ["https://shop.example.com/c?email=jane%40example.com&ref=abc",
            "http://[2001:db8::1]:8080/path?x=1", "http://203.0.113.45/login?next=%2Fhome",
            "/verify?phone=%2B442079460999&ok=1"]
    out = scan.scrub(pa.array(urls)).to_pylist()
    for before, after in zip(urls, out, strict=True):
        assert after != before
        parts = urlsplit(after)
        assert parse_qs(parts.query) is not None
    assert urlsplit(out[1]).hostname == "ip.invalid" and urlsplit(out[1]).port == 8080
    assert parse_qs(urlsplit(out[0]).query) == {"email": ["[email]"], "ref": ["abc"]}


def test_values_that_are_not_pii_stay_byte_identical() -> None:
    texts = pa.array(NEGATIVES)
    assert scan.scrub(texts).to_pylist() == NEGATIVES
    assert not any(detect.any_of(texts).to_pylist())


def test_the_check_names_the_form_without_the_value() -> None:
    values = pa.array(["a@b.example.com", "call +44 20 7946 0958", "id 550e8400e29b41d4a716446655440000",
                       None])
    assert detect.matches(values, "email").to_pylist() == [True, False, False, False]
    assert detect.matches(values, "phone").to_pylist() == [False, True, False, False]
    with pytest.raises(ValueError, match="unknown PII form"):
        detect.matches(values, "ssn")


def test_the_candidate_pass_keeps_what_the_detectors_would_confirm() -> None:
    # a bare number is a phone only after a phone word: the vectorized pass must not drop it first
    texts = ["my new number is 2025550123", "Мой новый номер: 9161234567", "order number 2025550123"]
    assert scan.scrub(pa.array(texts), regions=("US", "RU")).to_pylist() == [
        "my new number is [phone]", "Мой новый номер: [phone]", "order number 2025550123"]


# -- findings of an adversarial pass (synthetic values) -------------------------------------------

_NORDIC = ("DK", "NO")


@pytest.mark.parametrize("text", ["scores 21 34 55 89", "lotto 04 12 33 47", "Hotel 21 34 55 89",
                                  "ring size 52 54 56 58"])
def test_given_four_pairs_without_phone_evidence_then_they_are_not_a_phone(text: str) -> None:
    # four two-digit numbers are scores, draws or sizes, even where 8-digit phones are usual
    assert _found(text, regions=_NORDIC) == []
    assert _found(text, regions=(*detectors.DEFAULT_REGIONS, *_NORDIC)) == []
    assert scan.scrub(pa.array([text]), regions=_NORDIC).to_pylist() == [text]


@pytest.mark.parametrize(("text", "phone"), [
    ("tlf. 21 34 55 89", "21 34 55 89"), ("Tlf: 21 34 55 89", "21 34 55 89"),
    ("mobil 21 34 55 89", "21 34 55 89"), ("Ring mig på 58 28 60 37", "58 28 60 37"),
    ("ring meg på 94 63 57 29", "94 63 57 29"), ("+45 21 34 55 89", "+45 21 34 55 89"),
    ("+47 94 63 57 29", "+47 94 63 57 29"), ("Kontakt 412 34 567", "412 34 567")])
def test_given_four_pairs_with_phone_evidence_then_they_are_a_phone(text: str, phone: str) -> None:
    assert ("phone", phone) in _found(text, regions=_NORDIC)


@pytest.mark.parametrize("text", [
    "+772 625 870,41 €", "Saldo: +1 234 567,89 EUR", "Saldo: +12 345 678,89 EUR", "+49 151 234,56 €",
    "Δ +1 234 567 890,12", "Saldo +12 345 678 EUR", "€ +12 345 678,00",
    # zero-padded ids in delimited fields
    "id,000123456789,ok", "row;0004915112345678;x", "id,0095451651,ok", "row;0060631423997;x",
    "id|008683820511|ok", "7,00311619840,x", "id\t0041305003325\tok"])
def test_given_a_signed_amount_or_a_zero_padded_id_then_it_is_not_a_phone(text: str) -> None:
    assert _found(text) == []
    assert scan.scrub(pa.array([text])).to_pylist() == [text]


@pytest.mark.parametrize(("text", "phone"), [
    ('42,"Mario Rossi",0039 3974364888,2024-01-01', "0039 3974364888"),
    ("7,+34 612 345 678,12,x", "+34 612 345 678"),            # a CSV quantity after the phone
    ("tel +34 612 345 678,12", "+34 612 345 678"),
    ("id,00393974364888,ok", "00393974364888"),               # a whole international number
    ("Tel. 00491511234567", "00491511234567")])
def test_given_a_phone_in_a_delimited_field_then_it_is_still_found(text: str, phone: str) -> None:
    assert ("phone", phone) in _found(text)


@pytest.mark.parametrize(("text", "ip"), [
    ("IP/203.0.113.45", "203.0.113.45"), ("Client/198.51.100.7 connected", "198.51.100.7"),
    ("Host/192.0.2.1", "192.0.2.1"), ("src=Peer/203.0.113.9:443", "203.0.113.9")])
def test_given_a_capitalized_word_and_a_slash_before_an_ipv4_then_it_is_an_address(text: str,
                                                                                    ip: str) -> None:
    assert _found(text) == [("ip", ip)]


@pytest.mark.parametrize("text", ["Chrome/1.2.3.4", "Mozilla/5.0 (X11) Gecko/20100101 Firefox/128.0.2.1",
                                  "Edg/120.0.2210.91 OPR/105.0.4.1", "Version/17.2.1.0 Safari/605.1.15"])
def test_given_a_known_product_before_four_dotted_numbers_then_it_is_a_version(text: str) -> None:
    assert _found(text) == []


@pytest.mark.parametrize(("text", "regions", "phone"), [
    ("612 000 345", ("ES",), "612 000 345"),
    ("llámame al 612 000 345", detectors.DEFAULT_REGIONS, "612 000 345"),
    ("+34 612 000 345", detectors.DEFAULT_REGIONS, "+34 612 000 345"),
    ("tel 0612 000 345", detectors.DEFAULT_REGIONS, "0612 000 345"),
    ("tel 600 000 000", ("ES",), "600 000 000")])
def test_given_a_mobile_with_a_zero_group_then_it_is_still_a_phone(text: str, regions: tuple[str, ...],
                                                                    phone: str) -> None:
    assert ("phone", phone) in _found(text, regions=regions)


@pytest.mark.parametrize("text", ["1 000 000", "250 000 EUR", "budget: 125 000 000", "600 000 000 EUR",
                                  "pop. 612 000 000"])
def test_given_a_round_amount_then_it_is_not_a_phone(text: str) -> None:
    assert _found(text, regions=("ES",)) == []
    assert _found(text) == []


# -- a pass with Faker's numbers of other locales -------------------------------------------------

@pytest.mark.parametrize("text", ["value 0-445-34282-X", "ref 1-105-53295-X done", '{"v": "0-10-600168-X"}'])
def test_given_an_isbn_10_with_an_x_check_digit_then_it_is_not_a_phone(text: str) -> None:
    assert _found(text) == []


@pytest.mark.parametrize(("text", "region"), [
    ("tlf 9857 5311", "DK"), ("Tlf.: 98575311", "DK"), ("ring mig på 98575311", "DK"),
    ("ring meg på 41601108", "NO"), ("tel: 6911 084364", "GR"), ("τηλ. 210 3100772", "GR"),
    ("call me at 5551234567", "US"), ("call us on 2025550123", "US"), ("טלפון: 0541234567", "IL"),
    ("전화 01012345678", "KR"), ("โทร 0812345678", "TH"), ("جوال 0501234567", "SA"),
    ("τηλ. 6949170317", "GR"),
    ("id,name,58/929-0075,2024-01-01", "HU"), ("id,name,0-4392-1805,2024-01-01", "TH")])
def test_given_a_phone_of_another_locale_with_its_evidence_then_the_scrubber_replaces_it(text: str,
                                                                                        region: str) -> None:
    regions = (*detectors.DEFAULT_REGIONS, region)
    assert "[phone]" in scan.scrub(pa.array([text]), regions=regions).to_pylist()[0]


@pytest.mark.parametrize("text", ["call started at 1712345678", "SMS sent at 1712345678", "tel 200 39504",
                                  "Kontakt 9857 5311"])
def test_given_a_number_after_words_that_are_not_phone_evidence_then_it_stays(text: str) -> None:
    assert scan.scrub(pa.array([text]), regions=("US", "DK", "GR")).to_pylist() == [text]
