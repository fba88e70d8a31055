"""Seeded synthetic landing data: profiles, events and server logs.

Everything is fake and generated (names from small lists, emails at
example.* domains, phone numbers from reserved drama ranges where countries
have them, IPs from documentation ranges).  It is messy on purpose: upper-case
and plus-addressed emails, international phone formats, IPv6, non-ASCII
names, PII planted inside free text (JSON properties, URLs, query strings), and the
numbers a regex takes for PII: uuid4 (hex and dashed) and ULID ids, 16-hex sessions,
order numbers, epoch seconds and milliseconds, SKUs and prices.

Vectorized with NumPy and Arrow compute: 1M events take about 8 s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pseudozone import zones
from pseudozone.config import Settings

FIRST = ["Jane", "José", "Zoë", "Łukasz", "Mårten", "Siobhán", "Nguyễn", "Ahmed", "Olga",
         "Yūki", "François", "Ayşe", "Björn", "Chloé", "Dmitrij", "Inés", "Kwame", "Priya"]
LAST = ["Doe", "Müller", "O'Brien", "García-López", "Østergaard", "Nowak", "Kowalczyk",
        "Smith", "Dubois", "Rossi", "Yılmaz", "Tanaka", "van der Berg", "Ólafsdóttir", "Ng"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.de"]
CITIES = [("Berlin", "DE", "10115"), ("München", "DE", "80331"), ("Paris", "FR", "75002"),
          ("London", "GB", "SW1A 1AA"), ("New York", "US", "10001"), ("Kraków", "PL", "31-042"),
          ("São Paulo", "BR", "01310-100"), ("Tōkyō", "JP", "100-0001")]
STREETS = ["Hauptstraße", "Rue de Rivoli", "Baker Street", "Main St", "ul. Floriańska",
           "Avenida Paulista", "Calle Mayor"]
EVENT_NAMES = ["page_view", "add_to_cart", "checkout", "purchase", "login", "search", "logout"]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "okhttp/4.12.0",
    "curl/8.5.0",
]
PAGES = ["/", "/pricing", "/product/42", "/product/1337?ref=newsletter", "/cart", "/search?q=shoes",
         "/account/settings", "/blog/2026/11/privacy-by-design"]
PROPERTIES = ['{"plan": "pro", "seats": 12}', '{"plan": "free"}', '{"items": 3, "amount": 49.99}',
              '{"query": "red shoes", "results": 17}', '{}', '{"campaign": "winter-2026"}']
API_PATHS = ["/api/v1/orders", "/api/v1/cart/items", "/static/app.js", "/healthz", "/api/v1/search?q=boots"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]


def _choice(rng: np.random.Generator, values: list[str], n: int) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(rng.integers(0, len(values), n)))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_CROCKFORD = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", np.uint8)


def _ascii(codes: np.ndarray) -> pa.Array:
    """Rows of an (n, width) uint8 matrix of ASCII codes as strings."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return pa.array(codes.view(f"S{codes.shape[1]}").ravel()).cast(pa.string())


def _hex_of(numbers: np.ndarray, width: int) -> pa.Array:
    """``numbers`` (uint64) mixed (splitmix64) and written as ``width`` hex digits (at most 16)."""
    with np.errstate(over="ignore"):
        z = numbers.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    nibbles = (z[:, None] >> (np.uint64(4) * np.arange(width, dtype=np.uint64)[::-1])) & np.uint64(15)
    return _ascii(_HEX_DIGITS[nibbles.astype(np.int64)])


def _uuid4(rng: np.random.Generator, n: int, *, dashes: bool) -> pa.Array:
    codes = _HEX_DIGITS[rng.integers(0, 16, (n, 32))]
    codes[:, 12] = ord("4")
    codes[:, 16] = _HEX_DIGITS[rng.integers(8, 12, n)]
    if dashes:
        codes = np.insert(codes, [8, 12, 16, 20], ord("-"), axis=1)
    return _ascii(codes)


def _ulid(rng: np.random.Generator, n: int) -> pa.Array:
    codes = _CROCKFORD[rng.integers(0, 32, (n, 26))]
    codes[:, 0] = _CROCKFORD[rng.integers(0, 8, n)]
    return _ascii(codes)


def _ids(rng: np.random.Generator, n: int) -> pa.Array:
    """The id forms real platforms use: uuid4 hex, dashed uuid4 and ULID, mixed."""
    kind = rng.integers(0, 4, n)
    hex_ids, dashed, ulids = _uuid4(rng, n, dashes=False), _uuid4(rng, n, dashes=True), _ulid(rng, n)
    return pc.if_else(pa.array(kind < 2), hex_ids, pc.if_else(pa.array(kind == 2), dashed, ulids))


def _props(rng: np.random.Generator, n: int, start: datetime) -> pa.Array:
    """Event properties with the numbers that look like PII to a regex: order numbers (as JSON
    numbers and strings), epoch seconds and milliseconds, SKUs, prices, quantities, hex tokens."""
    epoch = int(start.timestamp()) + rng.integers(0, 7 * 86_400, n)
    cents = rng.integers(99, 250_000, n)
    price = _join(_num(cents // 100), ".", pc.utf8_lpad(_num(cents % 100), 2, "0"))
    order = _num(rng.integers(10**9, 10**12, n))
    numeric = _join('{"order_id": ', order, ', "sku": "SKU-', _num(rng.integers(10_000, 99_999, n)),
                    '-XL", "qty": ', _num(rng.integers(1, 9, n)), ', "amount": ', price,
                    ', "ts": ', _num(epoch), ', "ts_ms": ', _num(epoch * 1000 + rng.integers(0, 1000, n)),
                    "}")
    quoted = _join('{"order": "#', order, '", "cart_token": "', _hex_of(rng.integers(0, 2**62, n), 16),
                   '", "total": "', price, ' EUR", "placed_at": ', _num(epoch), "}")
    return pc.if_else(pa.array(rng.random(n) < 0.5), numeric, quoted)


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _num(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _phones(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for i, kind in enumerate(rng.integers(0, 6, n)):
        d = f"{(i * 7919 + 1234567) % 10_000_000:07d}"
        out.append([
            f"+44 20 7946 {d[:4]}",          # UK drama range
            f"+1 (555) 01{d[:2]}-{d[2:6]}",  # US 555-01xx
            f"+49 30 {d}",
            f"0{d[:3]} {d[3:]}",
            f"+33 6 {d[:2]} {d[2:4]} {d[4:6]} 0{d[6]}",
            f"00 81 3-{d[:4]}-{d[4:]}",
        ][int(kind)])
    return out


@dataclass
class Users:
    tenant: str
    user_id: pa.Array
    email: pa.Array
    email_urlenc: pa.Array
    phone: pa.Array
    full_name: pa.Array
    ip: pa.Array

    def __len__(self) -> int:
        return len(self.user_id)


def _users(rng: np.random.Generator, tenant: str, n: int, offset: int) -> Users:
    ids = [f"usr_{offset + i:07d}" for i in range(n)]
    first = rng.integers(0, len(FIRST), n)
    last = rng.integers(0, len(LAST), n)
    names = [f"{FIRST[a]} {LAST[b]}" for a, b in zip(first, last, strict=True)]
    style = rng.integers(0, 4, n)
    emails = []
    for i, (a, b, s) in enumerate(zip(first, last, style, strict=True)):
        local = f"{FIRST[a]}.{LAST[b]}".lower().replace(" ", "").replace("'", "")
        local = local.encode("ascii", "ignore").decode() or "user"
        local = f"{local}{offset + i}"
        dom = DOMAINS[(offset + i) % len(DOMAINS)]
        emails.append([f"{local}@{dom}", f"{local}+news@{dom}", f"{local.upper()}@{dom.upper()}",
                       f"{local}@{dom}"][int(s)])
    ips = []
    for i, v6 in enumerate(rng.random(n) < 0.2):
        k = offset + i
        ips.append(f"2001:db8:{k % 65536:x}::{k % 251 + 1:x}" if v6 else
                   f"{[192, 198, 203][k % 3]}.{[0, 51, 0][k % 3]}.{[2, 100, 113][k % 3]}.{k % 254 + 1}")
    return Users(tenant=tenant, user_id=pa.array(ids), email=pa.array(emails),
                 email_urlenc=pa.array([e.replace("@", "%40").replace("+", "%2B") for e in emails]),
                 phone=pa.array(_phones(rng, n)), full_name=pa.array(names), ip=pa.array(ips))


def _ts(rng: np.random.Generator, n: int, start: datetime, days: int) -> pa.Array:
    base = np.datetime64(start.replace(tzinfo=None), "us")
    offsets = rng.integers(0, days * 86_400_000_000, n).astype("timedelta64[us]")
    return pa.array(base + offsets, pa.timestamp("us", tz="UTC"))


def profiles_table(rng: np.random.Generator, users: Users, start: datetime) -> pa.Table:
    n = len(users)
    city_idx = rng.integers(0, len(CITIES), n)
    birth = np.datetime64("1950-01-01") + rng.integers(0, 365 * 55, n).astype("timedelta64[D]")
    street = [f"{STREETS[i % len(STREETS)]} {i % 180 + 1}" for i in range(n)]
    plant = rng.random(n)
    base_attr = _choice(rng, ['{"tier": "gold"}', '{"tier": "silver", "newsletter": true}', "{}"], n)
    attr = pc.if_else(
        pa.array(plant < 0.05),
        _join('{"note": "prefers contact via ', users.email, '"}'),
        pc.if_else(pa.array(plant < 0.10), _join('{"note": "call ', users.phone, ' after 6pm"}'),
                   pc.if_else(pa.array(plant < 0.13),
                              _join('{"signature": "Regards, ', users.full_name, '"}'), base_attr)))
    return pa.table({
        "tenant_id": pa.array([users.tenant] * n),
        "user_id": users.user_id,
        "email": users.email,
        "full_name": users.full_name,
        "phone": users.phone,
        "street_address": pa.array(street),
        "city": pc.take(pa.array([c[0] for c in CITIES]), pa.array(city_idx)),
        "postal_code": pc.take(pa.array([c[2] for c in CITIES]), pa.array(city_idx)),
        "country": pc.take(pa.array([c[1] for c in CITIES]), pa.array(city_idx)),
        "birth_date": pa.array(birth, pa.date32()),
        "signup_ts": _ts(rng, n, start, 3),
        "marketing_opt_in": pa.array(rng.random(n) < 0.4),
        "attributes_json": attr,
    })


def events_table(rng: np.random.Generator, users: Users, n: int, first_id: int, start: datetime,
                 days: int) -> pa.Table:
    who = rng.integers(0, len(users), n)
    who_arr = pa.array(who)
    device = rng.integers(0, 3, n)
    anonymous = _join("anon-", users.tenant, "-", _num(who * 3 + device))
    logged_in = pa.array(rng.random(n) < 0.85)
    plant = rng.random(n)
    email = pc.take(users.email, who_arr)
    base_url = _join("https://shop.example.com", _choice(rng, PAGES, n))
    base_url = pc.if_else(pa.array(rng.random(n) < 0.2),
                          _join("https://shop.example.com/orders/", _num(rng.integers(10**9, 10**12, n)),
                                "?ts=", _num(int(start.timestamp()) + rng.integers(0, 7 * 86_400, n))),
                          base_url)
    page_url = pc.if_else(pa.array(plant < 0.01),
                          _join("https://shop.example.com/checkout?email=",
                                pc.take(users.email_urlenc, who_arr), "&step=2"), base_url)
    props = pc.if_else(pa.array(rng.random(n) < 0.6), _props(rng, n, start), _choice(rng, PROPERTIES, n))
    props = pc.if_else(pa.array(plant > 0.995), _join('{"message": "reach me at ', email, '"}'), props)
    props = pc.if_else(pa.array((plant > 0.99) & (plant <= 0.995)),
                       _join('{"message": "my number is ', pc.take(users.phone, who_arr), '"}'), props)
    props = pc.if_else(pa.array((plant > 0.985) & (plant <= 0.99)),
                       pa.array(['{"payment": "card 4111 1111 1111 1111 exp 12/29"}'] * n), props)
    props = pc.if_else(pa.array((plant > 0.98) & (plant <= 0.985)),
                       pa.array(['{"iban": "DE89 3704 0044 0532 0130 00"}'] * n), props)
    props = pc.if_else(pa.array((plant > 0.975) & (plant <= 0.98)),
                       _join('{"client_ip": "', pc.take(users.ip, who_arr), '"}'), props)
    return pa.table({
        "tenant_id": pa.array([users.tenant] * n),
        "user_id": pc.if_else(logged_in, pc.take(users.user_id, who_arr), pa.scalar(None, pa.string())),
        "anonymous_id": anonymous,
        "event_id": _ids(rng, n),
        "event_name": _choice(rng, EVENT_NAMES, n),
        "event_ts": _ts(rng, n, start, days),
        "session_id": _hex_of(who * 31 + rng.integers(0, 30, n), 16),
        "ip": pc.take(users.ip, who_arr),
        "user_agent": _choice(rng, USER_AGENTS, n),
        "page_url": page_url,
        "properties_json": props,
    })


def server_logs_table(rng: np.random.Generator, users: Users, n: int, first_id: int,
                      start: datetime, days: int) -> pa.Table:
    who = pa.array(rng.integers(0, len(users), n))
    plant = rng.random(n)
    path = _choice(rng, API_PATHS, n)
    path = pc.if_else(pa.array(plant < 0.02),
                      _join("/api/v1/users/lookup?email=", pc.take(users.email_urlenc, who)), path)
    path = pc.if_else(pa.array((plant >= 0.02) & (plant < 0.03)),
                      _join("/api/v1/verify?phone=",
                            pc.replace_substring(pc.replace_substring(pc.take(users.phone, who), "+", "%2B"),
                                                 " ", "%20")), path)
    return pa.table({
        "tenant_id": pa.array([users.tenant] * n),
        "user_id": pc.if_else(pa.array(rng.random(n) < 0.7), pc.take(users.user_id, who),
                              pa.scalar("", pa.string())),
        "request_ts": _ts(rng, n, start, days),
        "ip": pc.take(users.ip, who),
        "method": _choice(rng, ["GET", "GET", "GET", "POST", "PUT", "DELETE"], n),
        "path": path,
        "status": pa.array(rng.choice([200, 200, 200, 201, 204, 301, 404, 500], n)),
        "bytes_sent": pa.array(rng.integers(0, 250_000, n)),
        "user_agent": _choice(rng, USER_AGENTS, n),
        "request_id": _ids(rng, n),
    })


def write_landing(table: pa.Table, path: Path, fmt: str) -> Path:
    path = path.with_suffix({"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}[fmt])
    if fmt == "parquet":
        return zones.write_parquet(table, path)
    if fmt == "csv":
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        return zones.write_bytes(sink.getvalue().to_pybytes(), path)
    lines = []
    for row in table.to_pylist():
        lines.append(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                 for k, v in row.items()}, ensure_ascii=False))
    return zones.write_bytes(("\n".join(lines) + "\n").encode(), path)


def generate(settings: Settings, *, events: int = 100_000, tenants: int = 3, seed: int = 7,
             batch_rows: int = 1_000_000, fmt: str = "parquet", days: int = 7,
             start: datetime = datetime(2026, 11, 1, tzinfo=UTC)) -> dict[str, int]:
    """Write landing batches for ``tenants`` tenants; returns row counts per dataset."""
    if not 1 <= tenants <= len(TENANTS):
        raise ValueError(f"tenants must be between 1 and {len(TENANTS)}")
    if events < 0 or batch_rows < 1:
        raise ValueError("events must be >= 0 and batch_rows >= 1")
    rng = np.random.default_rng(seed)
    counts = {"profiles": 0, "events": 0, "server_logs": 0}
    per_tenant = [events // tenants + (1 if t < events % tenants else 0) for t in range(tenants)]
    offset = 0
    for t, n_events in enumerate(per_tenant):
        tenant = TENANTS[t]
        n_users = max(20, n_events // 50)
        users = _users(rng, tenant, n_users, offset)
        offset += n_users
        root = settings.landing
        prof = profiles_table(rng, users, start)
        write_landing(prof, root / "profiles" / f"tenant={tenant}" / "profiles-0000", fmt)
        counts["profiles"] += prof.num_rows
        for name, total, build in (("events", n_events, events_table),
                                   ("server_logs", n_events // 4, server_logs_table)):
            for b, first in enumerate(range(0, total, batch_rows)):
                n = min(batch_rows, total - first)
                table = build(rng, users, n, offset * 1000 + first, start, days)
                write_landing(table, root / name / f"tenant={tenant}" / f"{name}-{b:04d}", fmt)
                counts[name] += n
    return counts
