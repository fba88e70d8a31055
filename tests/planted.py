"""Recognisable fake PII planted in test batches, and helpers to hunt for it.

Every value is synthetic: example.* domains, UK/US drama phone ranges, test card
numbers, the IBAN from the ISO 13616 examples, documentation IP ranges.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TENANT = "acme"
USER = "usr_planted_0001"
NAME = "Zelda Plantedpii-Ørsted"
EMAIL = "Zelda.Plantedpii+promo@Example.ORG"
PHONE = "+44 20 7946 0999"
STREET = "Plantedweg 77b"
CITY = "Plantedstadt"
CARD = "4539 1488 0343 6467"
IBAN = "GB82 WEST 1234 5698 7654 32"
IPV4 = "198.51.100.77"
IPV6 = "2001:db8:beef:7::77"
US_PHONE = "(555) 010-4477"

# what must never appear in the event zone, logs, XCom or the metadata DB
NEEDLES = [USER, NAME, "Plantedpii", EMAIL.lower(), "zelda.plantedpii", PHONE, "7946 0999", "79460999",
           STREET, CITY, CARD, CARD.replace(" ", ""), IBAN, IBAN.replace(" ", ""), IPV4, IPV6,
           US_PHONE, "010-4477"]

TS = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def link_id(value: str, column: str = "event_id", dataset: str = "events", tenant: str = TENANT) -> str:
    """The event zone's keyed pseudonym of a linkable id (``event_id``...) under the test key."""
    from pseudozone import contracts
    from pseudozone.keys import KeyRing
    from tests.conftest import TEST_MASTER_KEY

    purpose = contracts.load(dataset).column(column).link_purpose
    return KeyRing(TEST_MASTER_KEY, pseudonym_version=1).pseudonymize(tenant, purpose, [value])[0]


def profiles() -> pa.Table:
    return pa.table({
        "tenant_id": [TENANT], "user_id": [USER], "email": [EMAIL], "full_name": [NAME],
        "phone": [PHONE], "street_address": [STREET], "city": [CITY], "postal_code": ["10115"],
        "country": ["DE"], "birth_date": pa.array([datetime(1990, 5, 17).date()], pa.date32()),
        "signup_ts": pa.array([TS], pa.timestamp("us", tz="UTC")), "marketing_opt_in": [True],
        "attributes_json": [f'{{"signature": "{NAME}", "street": "{STREET}", "city": "{CITY}"}}'],
    })


FREE_TEXT_FORMS = {
    "email": f'{{"message": "write to {EMAIL}"}}',
    "email_urlencoded": "https://shop.example.com/c?email=zelda.plantedpii%40example.org&x=1",
    "phone_intl": f'{{"message": "call {PHONE}"}}',
    "phone_us": f'{{"message": "or {US_PHONE}"}}',
    "phone_urlencoded": "/verify?phone=%2B442079460999",
    "card": f'{{"payment": "{CARD}"}}',
    "card_plain": f'{{"payment": "{CARD.replace(" ", "")}"}}',
    "iban": f'{{"iban": "{IBAN}"}}',
    "ipv4": f'{{"client_ip": "{IPV4}"}}',
    "ipv6": f'{{"client_ip": "{IPV6}"}}',
}


def events(ids: str = "evt_planted") -> pa.Table:
    """The planted events; ``ids`` names another delivery of them (a row whose event id the
    zone holds is a re-delivery, dropped at ingest)."""
    n = len(FREE_TEXT_FORMS)
    texts = list(FREE_TEXT_FORMS.values())
    return pa.table({
        "tenant_id": [TENANT] * n, "user_id": [USER] * n,
        "anonymous_id": ["anon-planted-1"] * n,
        "event_id": [f"{ids}_{i}" for i in range(n)], "event_name": ["page_view"] * n,
        "event_ts": pa.array([TS] * n, pa.timestamp("us", tz="UTC")), "session_id": ["s_planted"] * n,
        "ip": [IPV4, IPV6] * (n // 2),
        "user_agent": [f"Mozilla/5.0 PlantedBrowser contact {EMAIL}"] * n,
        "page_url": texts, "properties_json": texts,
    })


def server_logs() -> pa.Table:
    n = len(FREE_TEXT_FORMS)
    return pa.table({
        "tenant_id": [TENANT] * n, "user_id": [USER] * (n - 1) + [""],
        "request_ts": pa.array([TS] * n, pa.timestamp("us", tz="UTC")), "ip": [IPV6, IPV4] * (n // 2),
        "method": ["GET"] * n, "path": list(FREE_TEXT_FORMS.values()), "status": [200] * n,
        "bytes_sent": [512] * n, "user_agent": ["curl/8.5.0"] * n,
        "request_id": [f"req_planted_{i}" for i in range(n)],
    })


def plant(landing: Path) -> None:
    for dataset, table in (("profiles", profiles()), ("events", events()), ("server_logs", server_logs())):
        target = landing / dataset / f"tenant={TENANT}" / "planted-0000.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)


def string_cells(root: Path) -> Iterator[tuple[Path, str, str]]:
    """(file, column, value) for every non-null string cell of every Parquet file under root."""
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            col = table[name]
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                for value in col.to_pylist():
                    if value is not None:
                        yield path, name, value


def find_needles(text: str, needles: list[str] | None = None) -> list[str]:
    low = text.lower()
    return [n for n in (needles or NEEDLES) if n.lower() in low]
