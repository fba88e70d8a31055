from __future__ import annotations

import pytest

from pseudozone import contracts
from pseudozone.errors import ContractError

VALID = """
dataset: things
partition_date_from: ts
columns:
  tenant_id: {class: keep, type: string, nullable: false}
  user_id: {class: identifier, type: string, subject: true}
  ts: {class: keep, type: timestamp, nullable: false}
  email: {class: pii, type: string}
"""


def test_shipped_contracts_load_and_classify_every_input_column() -> None:
    expected = {
        "profiles": {"tenant_id", "user_id", "email", "full_name", "phone", "street_address", "city",
                     "postal_code", "country", "birth_date", "signup_ts", "marketing_opt_in",
                     "attributes_json"},
        "events": {"tenant_id", "user_id", "anonymous_id", "event_id", "event_name", "event_ts",
                   "session_id", "ip", "user_agent", "page_url", "properties_json"},
        "server_logs": {"tenant_id", "user_id", "request_ts", "ip", "method", "path", "status",
                        "bytes_sent", "user_agent", "request_id"},
    }
    for dataset, columns in expected.items():
        contract = contracts.load(dataset)
        assert set(contract.names) == columns
        assert "user_id" not in contract.event_columns
        assert contract.event_columns[0] == "subject_id"


def test_event_columns_exclude_pii_and_rename_quasi_identifiers() -> None:
    profiles = contracts.load("profiles")
    assert set(profiles.event_columns).isdisjoint({"email", "full_name", "phone", "street_address", "city"})
    assert {"postal_prefix", "birth_year"} <= set(profiles.event_columns)
    assert "ip_prefix" in contracts.load("events").event_columns


def test_a_valid_contract_parses() -> None:
    contract = contracts.parse_contract(VALID, "things.yaml")
    assert contract.subject.name == "user_id"
    assert contract.has_pii


@pytest.mark.parametrize(("mutation", "message"), [
    (("class: pii", "class: secret"), "has class 'secret'"),
    (("type: timestamp", "type: datetime"), "has type 'datetime'"),
    (("subject: true", "subject: false"), "exactly one identifier"),
    (("tenant_id:", "tenant:"), "needs a 'tenant_id' column"),
    (("ts: {class: keep, type: timestamp, nullable: false}", "ts: {class: keep, type: timestamp}"),
     "must be nullable: false"),
    (("email: {class: pii, type: string}", "email: {class: quasi, type: string}"), "needs generalize"),
    (("email: {class: pii, type: string}", "email: {class: pii, type: int64}"), "must have type string"),
])
def test_given_invalid_contract_then_error_names_the_problem(mutation: tuple[str, str], message: str) -> None:
    text = VALID.replace(*mutation)
    with pytest.raises(ContractError, match=message):
        contracts.parse_contract(text, "things.yaml")


def test_a_user_can_add_a_dataset_by_adding_a_contract(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "things.yaml").write_text(VALID)
    monkeypatch.setenv(contracts.CONTRACTS_DIR_ENV, str(tmp_path))
    assert contracts.load("things").dataset == "things"
    with pytest.raises(ContractError, match="no contract"):
        contracts.load("nothing")
