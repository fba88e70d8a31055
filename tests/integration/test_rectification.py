"""A rectification sticks: later deliveries of the old values are corrected at ingest.

The tenant's system still holds the subject's old profile and re-delivers it; the newest
rectification wins over it.  A value the tenant changed since is a newer update: it wins, and
the rectification stops correcting that field (docs/adr/0012-rectification.md).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import ingest, rectifications, state
from pseudozone.config import Settings
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.rights import process, requests
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)
NEW_EMAIL = "zelda.rectified@example.net"


@pytest.fixture
def rlake(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


def _rectify(settings: Settings, run: str, **fields: str) -> None:
    status = requests.submit(settings, {"type": "rectify", "tenant_id": planted.TENANT,
                                        "user_id": planted.USER, "fields": fields}, source="test", keyring=KR)
    assert status.state == "accepted", status.reason
    process.process_all(settings, run, keyring=KR)
    assert requests.get_status(settings, status.request_id).state == "completed"


def _deliver(settings: Settings, name: str, **changes: object) -> ingest.BatchResult:
    """The planted profile delivered again by the tenant (a new file), with ``changes``."""
    table = planted.profiles()
    for column, value in changes.items():
        table = table.set_column(table.column_names.index(column), column,
                                 pa.array([value], table.schema.field(column).type))
    target = settings.landing / "profiles" / f"tenant={planted.TENANT}" / f"{name}.parquet"
    pq.write_table(table, target)
    [result] = ingest.ingest_pending(settings, keyring=KR)
    assert result.status == "done", result.reason
    return result


def _pii_values(settings: Settings, column: str) -> list[str]:
    pii = pa.concat_tables([pq.read_table(p) for p in settings.pii_zone.rglob("*acme*.parquet")])
    mine = pii.filter(pc.equal(pii["subject_id"], SUBJECT))
    with state.connect(settings) as conn:
        dek = Vault(KR, conn).data_keys(planted.TENANT, [SUBJECT], create=False)[SUBJECT]
    ad = pii_associated_data(planted.TENANT, SUBJECT, column)
    return sorted(decrypt_value(AESGCM(dek), v, ad) for v in mine[column].to_pylist() if v is not None)


def _event_values(settings: Settings, column: str) -> list[object]:
    prof = pa.concat_tables([pq.read_table(p) for p in (settings.event_zone / "profiles").rglob("*.parquet")])
    return sorted(prof.filter(pc.equal(prof["subject_id"], SUBJECT))[column].to_pylist())


def _entries(settings: Settings) -> int:
    with state.connect(settings) as conn:
        return rectifications.count(conn, planted.TENANT, SUBJECT)


def test_a_redelivered_old_profile_does_not_undo_a_rectification(rlake: Settings) -> None:
    _rectify(rlake, "run-1", email=NEW_EMAIL, postal_code="75002", birth_date="1991-02-03")
    assert _pii_values(rlake, "email") == [NEW_EMAIL]
    assert _entries(rlake) == 3

    # the old profile again, written otherwise (case, spaces): still the old value
    result = _deliver(rlake, "resend-0001", email=f"  {planted.EMAIL.upper()} ")
    assert result.values_rectified == 3 and result.rectifications_retired == 0
    assert _pii_values(rlake, "email") == [NEW_EMAIL, NEW_EMAIL]
    assert _pii_values(rlake, "phone") == [planted.PHONE, planted.PHONE]  # not rectified: as delivered
    assert _event_values(rlake, "postal_prefix") == ["75", "75"]
    assert _event_values(rlake, "birth_year") == [1991, 1991]
    assert _entries(rlake) == 3


def test_a_value_changed_since_is_a_newer_update_and_wins(rlake: Settings) -> None:
    _rectify(rlake, "run-1", email=NEW_EMAIL, postal_code="75002")
    newer = "zelda.moved@example.org"
    result = _deliver(rlake, "update-0001", email=newer)
    # the email is the tenant's newer one; the postal code, still the old one, is corrected
    assert result.values_rectified == 1 and result.rectifications_retired == 1
    assert _pii_values(rlake, "email") == sorted([NEW_EMAIL, newer])
    assert _event_values(rlake, "postal_prefix") == ["75", "75"]
    assert _entries(rlake) == 1
    # from now on the tenant's data governs the email: its old value is no longer corrected
    _deliver(rlake, "resend-0002")
    assert _pii_values(rlake, "email") == sorted([NEW_EMAIL, newer, planted.EMAIL])


def test_the_newest_of_several_rectifications_wins_over_every_older_value(rlake: Settings) -> None:
    _rectify(rlake, "run-1", email="zelda.first@example.net")
    _rectify(rlake, "run-2", email=NEW_EMAIL)
    _deliver(rlake, "resend-0001")                                # the original value
    _deliver(rlake, "resend-0002", email="zelda.first@example.net")  # the first rectification's
    assert _pii_values(rlake, "email") == [NEW_EMAIL] * 3
    assert _entries(rlake) == 1


def test_a_null_is_kept_as_delivered_and_retires_nothing(rlake: Settings) -> None:
    _rectify(rlake, "run-1", email=NEW_EMAIL)
    result = _deliver(rlake, "resend-0001", email=None)
    assert result.values_rectified == 0 and result.rectifications_retired == 0
    assert _pii_values(rlake, "email") == [NEW_EMAIL]
    assert _entries(rlake) == 1


def test_the_register_holds_no_value_in_clear_and_an_erasure_deletes_it(rlake: Settings) -> None:
    _rectify(rlake, "run-1", email=NEW_EMAIL, postal_code="75002")
    raw = rlake.state_db.read_bytes()
    for needle in (NEW_EMAIL, planted.EMAIL, "75002", "10115"):
        assert needle.encode() not in raw
    with state.connect(rlake) as conn:
        rows = conn.execute("SELECT superseded FROM rectifications").fetchall()
    assert rows and all(len(f) == 32 for r in rows for f in json.loads(r[0]))

    status = requests.submit(rlake, {"type": "erase", "tenant_id": planted.TENANT, "user_id": planted.USER},
                             source="test", keyring=KR)
    process.process_all(rlake, "run-2", keyring=KR)
    assert requests.get_status(rlake, status.request_id).state == "completed"
    assert _entries(rlake) == 0
    # and an erased subject's later delivery is dropped as before, not corrected
    table = planted.profiles()
    target = rlake.landing / "profiles" / f"tenant={planted.TENANT}" / "after-erase-0001.parquet"
    pq.write_table(table, target)
    [result] = ingest.ingest_pending(rlake, keyring=KR)
    assert result.rows_dropped_erased == 1 and result.values_rectified == 0


def test_a_rectification_of_a_subject_in_no_batch_yet_changes_nothing_at_ingest(rlake: Settings) -> None:
    status = requests.submit(rlake, {"type": "rectify", "tenant_id": planted.TENANT, "user_id": "usr_nobody",
                                     "fields": {"email": NEW_EMAIL}}, source="test", keyring=KR)
    process.process_all(rlake, "run-1", keyring=KR)
    assert requests.get_status(rlake, status.request_id).outcome["result"] == "no_data_found"
    with state.connect(rlake) as conn:
        assert rectifications.count(conn, planted.TENANT) == 0
